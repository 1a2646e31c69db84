"""Tiny cloud handlers for tests and smoke runs of the runtime (no model needed).

Use as ``CloudProcess("transport.testing:make_echo_handler")``.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

import torch

from transport.cloud_server import CallCancelled, cancelled


class EchoHandler:
    """Methods that exercise the runtime: echo, arithmetic, failure, delay, child processes."""

    remote_methods = ("echo", "scale_add", "zeros", "fail", "sleep", "pid", "spawn_child", "bad_result")

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale
        self.children: list[subprocess.Popen] = []

    def echo(self, tensors: dict[str, torch.Tensor], **meta: Any) -> tuple[dict, dict]:
        """Return the tensors and meta unchanged (bit-exact round-trip checks)."""
        return dict(tensors), dict(meta)

    def scale_add(self, tensors: dict[str, torch.Tensor], offset: float = 0.0) -> tuple[dict, dict]:
        """x * scale + offset per tensor: proves the handler really computed something."""
        return {k: v * self.scale + offset for k, v in tensors.items()}, {"n": len(tensors)}

    def zeros(self, tensors: dict[str, torch.Tensor], n_bytes: int = 0) -> tuple[dict, dict]:
        """A reply carrying `n_bytes` of uint8 zeros (sized downlink tests)."""
        return {"zeros": torch.zeros(n_bytes, dtype=torch.uint8)}, {}

    def fail(self, tensors: dict[str, torch.Tensor], message: str = "boom") -> tuple[dict, dict]:
        """Raise, to test that handler exceptions become error replies."""
        raise RuntimeError(message)

    def sleep(self, tensors: dict[str, torch.Tensor], seconds: float = 1.0) -> tuple[dict, dict]:
        """Block for `seconds` (timeouts, killing the cloud mid-call); stops early if the client leaves."""
        deadline = time.monotonic() + float(seconds)
        while (left := deadline - time.monotonic()) > 0:
            if cancelled():
                raise CallCancelled(f"client left after {float(seconds) - left:.2f} s of sleep({seconds})")
            time.sleep(min(left, 0.02))
        return {}, {"slept": seconds}

    def pid(self, tensors: dict[str, torch.Tensor]) -> tuple[dict, dict]:
        """The cloud process id."""
        return {}, {"pid": os.getpid()}

    def spawn_child(self, tensors: dict[str, torch.Tensor], seconds: float = 300.0) -> tuple[dict, dict]:
        """Start a sleeping grandchild process: shows the whole process group is cleaned up."""
        child = subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({float(seconds)})"])
        self.children.append(child)
        return {}, {"pid": child.pid}

    def bad_result(self, tensors: dict[str, torch.Tensor]) -> Any:
        """Return something that is not (tensors, meta)."""
        return [1, 2, 3]


def make_echo_handler(scale: float = 1.0) -> EchoHandler:
    """Factory for `CloudProcess`: ``"transport.testing:make_echo_handler"``."""
    return EchoHandler(scale=scale)


def make_broken_handler(message: str = "cannot load checkpoint") -> EchoHandler:
    """A factory that fails, as a handler with a missing checkpoint would."""
    raise FileNotFoundError(message)
