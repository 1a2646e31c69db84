"""Traffic meter: bytes and messages per direction, counted where they cross the socket.

Alongside the counts it keeps two kinds of link time, never mixed: `link_time_*` is the time the
network profile models for those messages (rtt/2 + 8 n / bandwidth each), `measured_*` is wall
time the runtime measured for them (emulated delay + socket transfer).
"""
from __future__ import annotations

import threading
from dataclasses import asdict, dataclass

UP = "up"
DOWN = "down"
_DIRECTIONS = (UP, DOWN)


@dataclass
class _Direction:
    bytes: int = 0
    messages: int = 0
    link_time: float = 0.0  # modelled by the network profile
    measured: float = 0.0  # wall time measured by the runtime


class TrafficMeter:
    """Thread-safe per-direction counters ("up" = device -> cloud, "down" = cloud -> device)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._dirs = {d: _Direction() for d in _DIRECTIONS}

    def _get(self, direction: str) -> _Direction:
        try:
            return self._dirs[direction]
        except KeyError:
            raise ValueError(f"direction {direction!r} is not one of {_DIRECTIONS}") from None

    def add_bytes(self, direction: str, n_bytes: int) -> None:
        """Count bytes as the socket moves them (partial frames included)."""
        with self._lock:
            self._get(direction).bytes += int(n_bytes)

    def add_message(self, direction: str, link_time: float = 0.0, measured: float = 0.0) -> None:
        """Count one complete message with its modelled and measured link time."""
        with self._lock:
            d = self._get(direction)
            d.messages += 1
            d.link_time += float(link_time)
            d.measured += float(measured)

    def snapshot(self) -> dict[str, float]:
        """Flat totals: bytes_up, bytes_down, messages_up, messages_down, link_time_up, ..."""
        with self._lock:
            out: dict[str, float] = {}
            for name in ("bytes", "messages", "link_time", "measured"):
                for direction in _DIRECTIONS:
                    out[f"{name}_{direction}"] = asdict(self._dirs[direction])[name]
            return out

    def reset(self) -> None:
        """Zero every counter (e.g. after warm-up requests)."""
        with self._lock:
            self._dirs = {d: _Direction() for d in _DIRECTIONS}

    @staticmethod
    def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        """Difference of two snapshots: the traffic of what ran in between."""
        return {k: after[k] - before.get(k, 0) for k in after}

    def __repr__(self) -> str:
        return f"TrafficMeter({self.snapshot()})"
