"""Emulated network link: applies a NetworkProfile to each message on the sending side.

For a message of n bytes the sender waits rtt/2 + 8 n / bandwidth (one way; `time.sleep`, so no
CPU is burnt), then pushes the bytes into the socket. The modelled time and the measured wall
time (wait + socket push) are returned separately so a result never mixes them up.
"""
from __future__ import annotations

import logging
import math
import socket
import time
from dataclasses import asdict, dataclass
from typing import Any, Mapping

from transport.framing import ByteCounter, send_bytes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NetworkProfile:
    """A link as data; modelled time = rounds x RTT + bytes / bandwidth (per direction)."""

    name: str
    bandwidth_bps: float | None  # None: no link (same host, nothing modelled)
    rtt_s: float
    source: str = ""
    assumed: bool = False  # True where the source gives no bandwidth and we chose one

    def transfer_time(self, n_bytes: float) -> float:
        """Serialisation time of `n_bytes` on this link (one direction)."""
        return 0.0 if not self.bandwidth_bps else 8.0 * n_bytes / self.bandwidth_bps

    def time(self, rounds: float, n_bytes: float) -> float:
        """Modelled link time of `rounds` round trips carrying `n_bytes` in total."""
        return rounds * self.rtt_s + self.transfer_time(n_bytes)


def network_profile(cfg: Mapping[str, Any]) -> NetworkProfile:
    """NetworkProfile from a network config mapping (configs/network/*.yaml)."""
    keys = ("name", "bandwidth_bps", "rtt_s", "source", "assumed")
    missing = [k for k in ("name", "rtt_s") if k not in cfg]
    if missing:
        raise ValueError(f"network config lacks {missing}; see configs/network/*.yaml")
    return NetworkProfile(**{k: cfg[k] for k in keys if k in cfg})


LINK_VALUES = ("bandwidth_bps", "rtt_s")  # what a link is; a name is only a label for these values


def _same(a: Any, b: Any) -> bool:
    """Two link values equal (None = no bandwidth limit; 0.04 == 4e-2 == 0.040)."""
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=0.0)


def _value(v: Any) -> str:
    return "null" if v is None else f"{float(v):g}"


def link_label(cfg: Mapping[str, Any], profiles: Mapping[str, Mapping[str, Any]]) -> str:
    """The name a link's numbers are filed under: a profile's name only while its values are that profile's.

    `profiles` are the shipped profiles by name. A profile with changed values is `wan[rtt_s=0.3]`; a name
    that is no shipped profile (one's own link) carries all its values: `mylink[bandwidth_bps=1e+08,rtt_s=0.3]`.
    Idempotent: the label of a labelled link is its label.
    """
    name = str(cfg.get("name"))
    base_name = name.split("[", 1)[0]
    base = profiles.get(base_name)
    keys = [k for k in LINK_VALUES if base is None or not _same(cfg.get(k), base.get(k))]
    if not keys:
        return base_name
    return f"{base_name}[{','.join(f'{k}={_value(cfg.get(k))}' for k in keys)}]"


NO_NETWORK = NetworkProfile(name="none", bandwidth_bps=None, rtt_s=0.0, source="no emulation")


@dataclass(frozen=True)
class LinkSend:
    """What sending one message cost: modelled by the profile vs measured here."""

    n_bytes: int
    modelled_s: float  # rtt/2 + 8 n / bandwidth
    measured_s: float  # wall time: emulated wait + socket send
    delay_s: float  # wall time actually spent waiting for the emulated link


def profile_to_dict(profile: NetworkProfile | None) -> dict[str, Any] | None:
    """A JSON-able form of a profile, to hand it to another process."""
    return None if profile is None else asdict(profile)


def profile_from_dict(data: Mapping[str, Any] | None) -> NetworkProfile:
    """Inverse of profile_to_dict; None means no emulation."""
    return NO_NETWORK if data is None else NetworkProfile(**dict(data))


def sleep_until(deadline: float) -> None:
    """Sleep (not spin) until time.perf_counter() reaches `deadline`."""
    while (left := deadline - time.perf_counter()) > 0:
        time.sleep(left)


class EmulatedLink:
    """One direction of a link shaped by a NetworkProfile (None or "none": send immediately)."""

    def __init__(self, profile: NetworkProfile | None = None) -> None:
        profile = profile or NO_NETWORK
        if profile.rtt_s < 0:
            raise ValueError(f"network {profile.name!r}: rtt_s must be >= 0, got {profile.rtt_s}")
        if profile.bandwidth_bps is not None and profile.bandwidth_bps <= 0:
            raise ValueError(f"network {profile.name!r}: bandwidth_bps must be > 0 or None, "
                             f"got {profile.bandwidth_bps}")
        self.profile = profile

    @property
    def emulated(self) -> bool:
        """Whether sending waits at all."""
        return bool(self.profile.rtt_s) or bool(self.profile.bandwidth_bps)

    def one_way_time(self, n_bytes: int) -> float:
        """Modelled one-way time of an n-byte message: rtt/2 + 8 n / bandwidth."""
        return self.profile.rtt_s / 2.0 + self.profile.transfer_time(n_bytes)

    def send(self, sock: socket.socket, frame: bytes | bytearray, *, deadline: float | None = None,
             on_bytes: ByteCounter | None = None) -> LinkSend:
        """Wait the modelled one-way time, then push `frame` into the socket.

        `deadline` (time.monotonic()) bounds the wait too: a link slower than the call's time left waits
        only until the deadline, then raises TimeoutError, as a real link would time the call out."""
        modelled = self.one_way_time(len(frame))
        start = time.perf_counter()
        if modelled > 0:
            left = math.inf if deadline is None else deadline - time.monotonic()
            if modelled > left:
                time.sleep(max(left, 0.0))
                raise TimeoutError(f"network {self.profile.name!r}: the emulated one-way time {modelled:.3g} s of a "
                                   f"{len(frame)} B message passes the call's deadline ({max(left, 0.0):.3g} s left)")
            sleep_until(start + modelled)
        waited = time.perf_counter() - start
        send_bytes(sock, frame, deadline=deadline, on_bytes=on_bytes)
        return LinkSend(len(frame), modelled, time.perf_counter() - start, waited)
