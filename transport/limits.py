"""The cloud server's resource limits as one typed value: what a hostile or broken client can cost it.

Every limit is checked before the resource is committed: a frame's declared sizes before its
bytes are read (and its body is received incrementally, so a declared length commits nothing),
a connection before its thread starts, a session before it is created.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

from transport.wire import DEFAULT_MAX_MESSAGE_BYTES, FRAME_PREFIX_BYTES, MAX_HEADER_BYTES


@dataclass(frozen=True)
class ServerLimits:
    """Limits of one cloud server; the defaults suit a benchmark on one host."""

    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES  # a whole frame (prefix + header + body)
    max_header_bytes: int = 256 << 10  # the JSON header of a frame
    max_connections: int = 64  # served at once; more are answered TooManyConnections and closed
    idle_timeout_s: float = 600.0  # a connection with no request for this long is closed
    frame_timeout_s: float = 120.0  # a frame whose first byte arrived must be complete within this
    handshake_timeout_s: float = 10.0  # TLS handshake and token check of a new connection, all of it
    max_unauthenticated: int = 16  # connections in their handshake at once (apart from max_connections)
    max_sessions_per_connection: int = 8  # open generation sessions one connection may hold
    max_batch_tokens: int = 1 << 18  # batch x sequence of any request tensor, checked before compute (memory
    # grows with it times the hidden size: a legal 1 GiB frame of token ids could otherwise ask for ~50 GiB)
    session_ttl_s: float = 900.0  # a session unused for this long is dropped
    accept_error_pause_s: float = 0.05  # back-off after accept() fails (e.g. out of file descriptors)

    def __post_init__(self) -> None:
        ints = ("max_message_bytes", "max_header_bytes", "max_connections", "max_sessions_per_connection",
                "max_batch_tokens", "max_unauthenticated")
        for name in ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ServerLimits.{name} must be an int >= 1, got {value!r}")
        for f in fields(self):
            if f.name not in ints:
                value = getattr(self, f.name)
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                    raise ValueError(f"ServerLimits.{f.name} must be a number > 0 (seconds), got {value!r}")
        if self.max_header_bytes > MAX_HEADER_BYTES:
            raise ValueError(f"ServerLimits.max_header_bytes={self.max_header_bytes} exceeds the wire format's "
                             f"{MAX_HEADER_BYTES} B")
        if self.max_message_bytes < FRAME_PREFIX_BYTES + 16:
            raise ValueError(f"ServerLimits.max_message_bytes={self.max_message_bytes} cannot hold a frame")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, to hand the limits to the cloud process."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> ServerLimits:
        """Inverse of to_dict; unknown keys are refused by name."""
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown server limits {unknown}; known: {sorted(known)}")
        return cls(**data)
