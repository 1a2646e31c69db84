"""The one phase timer: wall and process CPU time per named phase, plus any hooked cumulative counters (MPC traffic).

Socket protocols time device phases with it; the MPC meter hooks CrypTen's per-party round and byte
counters into it, so every protocol's phases are charged the same way.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable, Iterator, Mapping

Counters = Callable[[], Mapping[str, float]]  # -> cumulative counts so far (rounds, bytes, ...)


class Stopwatch:
    """Named wall-clock phases (perf_counter), and the growth of hooked counters in each; phases do not nest."""

    def __init__(self, counters: Counters | None = None) -> None:
        self.times: dict[str, float] = {}
        self.counts: dict[str, dict[str, float]] = {}
        self.calls: dict[str, int] = {}
        self.cpu: dict[str, float] = {}  # process CPU time per phase (every thread), beside the wall time
        self._counters = counters
        self._active: str | None = None

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Charge the block's time (and counter growth) to `name`; a phase may repeat, never nest."""
        if self._active is not None:
            raise RuntimeError(f"phase {name!r} opened inside phase {self._active!r}; phases do not nest")
        self._active = name
        before = dict(self._counters()) if self._counters else {}
        cpu_start, start = time.process_time(), time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start)
            self.cpu[name] = self.cpu.get(name, 0.0) + time.process_time() - cpu_start
            if self._counters:
                acc = self.counts.setdefault(name, {})
                for key, value in self._counters().items():
                    acc[key] = acc.get(key, 0.0) + value - before.get(key, 0.0)
            self.calls[name] = self.calls.get(name, 0) + 1
            self._active = None

    def add(self, name: str, seconds: float) -> None:
        """Add time measured elsewhere (a wrapped party, the cloud's report) to `name`."""
        self.times[name] = self.times.get(name, 0.0) + seconds

    def reset(self) -> None:
        """Forget every phase (e.g. between runs)."""
        self.times.clear()
        self.counts.clear()
        self.calls.clear()
        self.cpu.clear()
