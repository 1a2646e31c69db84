import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))  # tests/helpers importable as `helpers`


@pytest.fixture
def restore_threads():
    """A test that runs the runner in-process changes this process's threads and thread environment: put both back."""
    import torch  # noqa: PLC0415

    from transport.threads import THREAD_ENV_VARS  # noqa: PLC0415

    before, env = torch.get_num_threads(), {v: os.environ.get(v) for v in THREAD_ENV_VARS}
    yield
    torch.set_num_threads(before)
    for var, val in env.items():
        if val is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = val
