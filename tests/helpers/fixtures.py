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
    """A test that runs the runner in-process changes this process's threads, scheduler slice, nice value and their
    environment: put them back."""
    import torch  # noqa: PLC0415 - conftest imports this module before set_offline_env(): load after it

    from transport.sched import (  # noqa: PLC0415 - environment first (above)
        KERNEL,
        NICE_ENV_VAR,
        POLICY_ENV_VAR,
        SLICE_ENV_VAR,
        apply_nice,
        apply_slice,
        read_nice,
    )
    from transport.threads import THREAD_ENV_VARS  # noqa: PLC0415 - environment first (above)

    env = {v: os.environ.get(v) for v in (*THREAD_ENV_VARS, SLICE_ENV_VAR, NICE_ENV_VAR, POLICY_ENV_VAR)}
    before, nice = torch.get_num_threads(), read_nice()
    yield
    torch.set_num_threads(before)
    apply_slice(env[SLICE_ENV_VAR] or KERNEL)  # the slice this thread had (the kernel's, unless one was set)
    apply_nice(nice)  # raising it back is always allowed; lowering it needs the privilege the run had
    for var, val in env.items():  # after apply_slice and apply_nice, which export their own values
        if val is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = val
