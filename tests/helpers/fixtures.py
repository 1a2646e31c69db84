"""Fixtures shared by tests/ and benchmarks/ (each conftest imports them), and the offline environment both need."""
from __future__ import annotations

import os
from typing import Iterator

import pytest

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def set_offline_env() -> None:
    """Never reach the hub from a test or benchmark: every model is local or built from a config."""
    for var, value in OFFLINE_ENV.items():
        os.environ.setdefault(var, value)


@pytest.fixture
def restore_threads() -> Iterator[None]:
    """A test that runs the runner in-process changes this process's threads, scheduler slice and their environment:
    put them back."""
    import torch  # noqa: PLC0415 - conftest imports this module before set_offline_env(): load after it

    from transport.sched import KERNEL, SLICE_ENV_VAR, apply_slice  # noqa: PLC0415 - environment first (above)
    from transport.threads import THREAD_ENV_VARS  # noqa: PLC0415 - environment first (above)

    before, env = torch.get_num_threads(), {v: os.environ.get(v) for v in (*THREAD_ENV_VARS, SLICE_ENV_VAR)}
    yield
    torch.set_num_threads(before)
    apply_slice(env[SLICE_ENV_VAR] or KERNEL)  # the slice this thread had (the kernel's, unless one was set)
    for var, val in env.items():  # after apply_slice, which exports its own value
        if val is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = val
