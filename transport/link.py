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
from transport.wire import Frame

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

    def one_way_time(self, n_bytes: float) -> float:
        """Modelled one-way time of an n-byte message: rtt/2 + 8 n / bandwidth (what an emulated send waits)."""
        return self.rtt_s / 2.0 + self.transfer_time(n_bytes)


MAX_RTT_S = 3600.0  # an emulated round trip longer than an hour is a typo, not a link
MIN_BANDWIDTH_BPS, MAX_BANDWIDTH_BPS = 1e3, 1e13  # 1 kbit/s .. 10 Tbit/s: outside, a typo (bits vs bytes, exponent)


def _number(value: Any) -> float | None:
    """The value as a float, or None when it is not a number (bools are not numbers here)."""
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def link_problems(net: Mapping[str, Any], *, plausible: bool = True) -> list[str]:
    """Positive finite bandwidth (or null: no link), finite non-negative RTT: one problem per bad value.

    The one check of a link's values (the runner's config check, the emulated link, the paper readings);
    `plausible` also refuses values far outside any real link (a typo: bits vs bytes, an exponent)."""
    name = net.get("name")
    out = []
    bw = net.get("bandwidth_bps")
    if bw is not None:
        v = _number(bw)
        if v is None or not math.isfinite(v) or v <= 0:
            out.append(f"network.bandwidth_bps={bw!r} (network {name!r}) must be a positive number of bits/s, or null "
                       "for no modelled link; e.g. network.bandwidth_bps=1e8, or pick a profile: network=wired")
        elif plausible and not MIN_BANDWIDTH_BPS <= v <= MAX_BANDWIDTH_BPS:
            out.append(f"network.bandwidth_bps={bw!r} (network {name!r}) is outside {MIN_BANDWIDTH_BPS:g}.."
                       f"{MAX_BANDWIDTH_BPS:g} bits/s (a typo?); e.g. network.bandwidth_bps=1e8")
    rtt = net.get("rtt_s")
    v = _number(rtt)
    if v is None or not math.isfinite(v) or v < 0:
        out.append(f"network.rtt_s={rtt!r} (network {name!r}) must be a finite number of seconds >= 0; "
                   "e.g. network.rtt_s=0.01, or pick a profile: network=wired")
    elif plausible and v > MAX_RTT_S:
        out.append(f"network.rtt_s={rtt!r} (network {name!r}) is above {MAX_RTT_S:g} s (an hour; a typo?); "
                   "e.g. network.rtt_s=0.01")
    return out


def check_link(profile: NetworkProfile) -> NetworkProfile:
    """The profile, or ValueError naming each bad value (link_problems without the plausibility bounds)."""
    problems = link_problems(asdict(profile), plausible=False)
    if problems:
        raise ValueError("; ".join(problems))
    return profile


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
        self.profile = check_link(profile or NO_NETWORK)

    @property
    def emulated(self) -> bool:
        """Whether sending waits at all."""
        return bool(self.profile.rtt_s) or bool(self.profile.bandwidth_bps)

    def one_way_time(self, n_bytes: int) -> float:
        """Modelled one-way time of an n-byte message (NetworkProfile.one_way_time)."""
        return self.profile.one_way_time(n_bytes)

    def send(self, sock: socket.socket, frame: bytes | bytearray | Frame, *, deadline: float | None = None,
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
