"""Moving whole wire frames (transport.wire) over a stream socket, counting bytes as they cross it.

The prefix is read and validated first, so an oversized declared length is refused before any
large buffer is allocated; the body is then received into a buffer that grows with the bytes that
actually arrived (at most doubling), so a declared length alone commits no memory. Byte counts
are reported through `on_bytes` per chunk, so a meter sees exactly what crossed the socket,
partial frames included.
"""
from __future__ import annotations

import socket
import time
from typing import Callable

from transport.wire import DEFAULT_MAX_MESSAGE_BYTES, FRAME_PREFIX_BYTES, MAX_HEADER_BYTES, decode_prefix

ByteCounter = Callable[[int], None]
_CHUNK = 1 << 20


class ConnectionClosed(ConnectionError):
    """The peer closed the connection cleanly between frames."""


class TruncatedFrame(ConnectionError):
    """The peer closed the connection part-way through a frame."""


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("deadline passed while waiting for the peer")
    return left


def send_bytes(sock: socket.socket, data: bytes | bytearray, *, deadline: float | None = None,
               on_bytes: ByteCounter | None = None) -> None:
    """Send all of `data`, reporting each chunk the kernel accepted to `on_bytes`."""
    view = memoryview(data)
    while view:
        sock.settimeout(_remaining(deadline))
        n = sock.send(view[:_CHUNK])
        if on_bytes is not None:
            on_bytes(n)
        view = view[n:]


def _recv_into(sock: socket.socket, buf: memoryview, deadline: float | None,
               on_bytes: ByteCounter | None, got_before: int) -> None:
    got = 0
    while got < len(buf):
        sock.settimeout(_remaining(deadline))
        n = sock.recv_into(buf[got:], min(len(buf) - got, _CHUNK))
        if n == 0:
            if got + got_before == 0:
                raise ConnectionClosed("peer closed the connection")
            raise TruncatedFrame(f"peer closed the connection after {got + got_before} B of a frame")
        got += n
        if on_bytes is not None:
            on_bytes(n)


def _recv_growing(sock: socket.socket, n: int, deadline: float | None, on_bytes: ByteCounter | None,
                  got_before: int) -> bytearray:
    """Receive exactly `n` bytes into a buffer that grows only as they arrive (never more than 2x)."""
    buf = bytearray(min(n, _CHUNK))
    got = 0
    while True:
        _recv_into(sock, memoryview(buf)[got:], deadline, on_bytes, got_before + got)
        got = len(buf)
        if got == n:
            return buf
        grown = bytearray(min(n, 2 * got))
        grown[:got] = buf
        buf = grown


def recv_frame(sock: socket.socket, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, *,
               deadline: float | None = None, frame_timeout_s: float | None = None,
               idle_timeout_s: float | None = None, max_header_bytes: int = MAX_HEADER_BYTES,
               on_bytes: ByteCounter | None = None) -> tuple[bytes, bytearray]:
    """Receive one frame and return its (JSON header, safetensors body) bytes.

    The body is returned as the bytearray it was received into, so decoding can view it in place.

    `deadline` (time.monotonic) bounds the whole frame; `idle_timeout_s` bounds the wait for its
    first byte and `frame_timeout_s` the rest of it once that byte arrived (a server waits a while
    for requests, never long for stalled peers).
    Raises ConnectionClosed, TruncatedFrame, TimeoutError, or transport.wire.WireError for a bad prefix.
    """
    prefix = bytearray(FRAME_PREFIX_BYTES)
    view = memoryview(prefix)
    first = deadline
    if idle_timeout_s is not None:
        idle_deadline = time.monotonic() + idle_timeout_s
        first = idle_deadline if deadline is None else min(deadline, idle_deadline)
    _recv_into(sock, view[:1], first, on_bytes, 0)
    if frame_timeout_s is not None:
        frame_deadline = time.monotonic() + frame_timeout_s
        deadline = frame_deadline if deadline is None else min(deadline, frame_deadline)
    _recv_into(sock, view[1:], deadline, on_bytes, 1)
    header_len, body_len = decode_prefix(bytes(prefix), max_bytes, max_header_bytes)
    header = _recv_growing(sock, header_len, deadline, on_bytes, FRAME_PREFIX_BYTES)
    body = _recv_growing(sock, body_len, deadline, on_bytes, FRAME_PREFIX_BYTES + header_len)
    return bytes(header), body
