"""A cloud handler that reports the thread settings of the process it runs in (tests/test_threads.py)."""
from __future__ import annotations

import os

import torch

from transport.threads import THREAD_ENV_VARS


class ThreadProbe:
    """`threads` answers with the cloud process's torch counts and thread environment."""

    remote_methods = ("threads",)

    def threads(self, tensors: dict, **meta: object) -> tuple[dict, dict]:
        torch.ones(64, 64) @ torch.ones(64, 64)  # some compute, so the reply's CPU time is real
        return {}, {"intra_op": torch.get_num_threads(), "inter_op": torch.get_num_interop_threads(),
                    "env": {v: os.environ.get(v) for v in THREAD_ENV_VARS}}


def make_probe() -> ThreadProbe:
    return ThreadProbe()
