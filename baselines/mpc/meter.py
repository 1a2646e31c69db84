"""Per-operator-class accounting of compute time, rounds and bytes, read from CrypTen's own counters.

CrypTen counts per party (8 bytes per ring element, one round per collective) only when
`crypten.cfg.communicator.verbose` is on. With the TTP provider, rank 0's requests to the third party
are metered apart (`preprocessing_*`) and subtracted from the online numbers of the phase they fall in.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

from protocols.timing import Stopwatch

CommReader = Callable[[], tuple[float, float]]  # -> (rounds, bytes) so far, this party


@dataclass
class PhaseStats:
    """What one party spent in one operator class (summed over its calls)."""

    seconds: float = 0.0
    rounds: float = 0.0
    bytes: float = 0.0
    preprocessing_rounds: float = 0.0
    preprocessing_bytes: float = 0.0
    calls: int = 0


class Meter(Stopwatch):
    """The phase timer with this party's CrypTen counters hooked in; online traffic excludes preprocessing."""

    def __init__(self, comm: CommReader | None = None) -> None:
        self._comm = comm or (lambda: (0.0, 0.0))
        self._pre_rounds = 0.0  # preprocessing counted so far (TTP requests)
        self._pre_bytes = 0.0
        super().__init__(counters=self._counters_now)

    def _counters_now(self) -> dict[str, float]:
        rounds, n_bytes = self._comm()
        return {"rounds": rounds - self._pre_rounds, "bytes": n_bytes - self._pre_bytes,
                "preprocessing_rounds": self._pre_rounds, "preprocessing_bytes": self._pre_bytes}

    def add_preprocessing(self, rounds: float, n_bytes: float) -> None:
        """Record traffic spent on preprocessing (called by the TTP request hook)."""
        self._pre_rounds += rounds
        self._pre_bytes += n_bytes

    def snapshot(self) -> dict[str, float]:
        """Counters now (time, online + preprocessing traffic), to measure a span across phases."""
        return {"seconds": time.perf_counter(), **self._counters_now()}

    @staticmethod
    def span(start: dict[str, float], end: dict[str, float]) -> dict[str, float]:
        """What was spent between two snapshots."""
        return {k: end[k] - start[k] for k in start}

    @property
    def phases(self) -> dict[str, PhaseStats]:
        """Per phase: seconds, online and preprocessing traffic, calls."""
        return {name: PhaseStats(seconds=self.times[name], calls=self.calls.get(name, 0),
                                 **self.counts.get(name, {})) for name in self.times}

    def as_dict(self) -> dict[str, dict[str, float]]:
        """Plain values (what a party process can hand back)."""
        return {k: asdict(v) for k, v in self.phases.items()}


def crypten_comm_reader(crypten: Any) -> CommReader:
    """Read this party's CrypTen counters."""

    def read() -> tuple[float, float]:
        stats = crypten.communicator.get().get_communication_stats()
        return float(stats["rounds"]), float(stats["bytes"])

    return read


def hook_ttp_requests(crypten: Any, meter: Meter) -> Callable[[], None]:
    """Meter every TTP request of this party as preprocessing; returns a function that unhooks it."""
    from crypten.mpc.provider.ttp_provider import TTPClient  # noqa: PLC0415

    inner = TTPClient._TTPClient__TTPClient  # the singleton's class (name-mangled)
    original = inner.ttp_request
    read = crypten_comm_reader(crypten)

    def metered(self: Any, *args: Any, **kwargs: Any) -> Any:
        r0, b0 = read()
        try:
            return original(self, *args, **kwargs)
        finally:
            r1, b1 = read()
            meter.add_preprocessing(r1 - r0, b1 - b0)

    inner.ttp_request = metered
    return lambda: setattr(inner, "ttp_request", original)


class WeightOpenings:
    """Bytes spent re-opening the secret-shared weights in Beaver products, counted the way CrypTen counts.

    CrypTen multiplies [x] by a shared weight [W] with a fresh triple (a, b, c) every time and opens
    x - a and W - b together (one batched all-reduce, so no round of its own); the W - b half is this cost,
    paid again by every forward although W never changes. Each party logs 2 x 8 bytes per opened element
    (sent + received, as CrypTen's counter does), so merged like the other counters it is the wire bytes.
    """

    def __init__(self) -> None:
        self.bytes = 0.0
        self.elements = 0

    def add(self, n_elements: int, bytes_per_element: int) -> None:
        self.elements += n_elements
        self.bytes += 2.0 * n_elements * bytes_per_element


def hook_weight_openings(crypten: Any, weights: Any, counter: WeightOpenings) -> Callable[[], None]:
    """Count, in `counter`, every Beaver product whose operand is one of `weights` (shared tensors);
    returns the function that unhooks it."""
    from crypten.mpc.primitives import beaver  # noqa: PLC0415

    name = "__beaver_protocol"  # a module-level function: mul/matmul look it up in the module at call time
    original = getattr(beaver, name)
    ids = {id(w._tensor) for w in weights}
    per_element = crypten.communicator.get().BYTES_PER_ELEMENT

    def counted(op: str, x: Any, y: Any, *args: Any, **kwargs: Any) -> Any:
        for operand in (x, y):
            if id(operand) in ids:
                counter.add(operand.nelement(), per_element)
        return original(op, x, y, *args, **kwargs)

    setattr(beaver, name, counted)
    return lambda: setattr(beaver, name, original)
