"""Moving whole wire frames (transport.wire) over a stream socket, counting bytes as they cross it.

Sending is scatter-gather: a `transport.wire.Frame` goes out with `sendmsg` over its parts (the
tensors' own memory), so the kernel's copy into the socket is the only copy (a TLS socket, which
has no sendmsg, gets the parts one after another, still unjoined). Receiving reads the prefix and
validates it first, so an oversized declared length is refused before anything is allocated; the
body is then received in place into one buffer of the declared size, which the decoder views
(`torch.frombuffer`). The buffer is an uninitialised torch allocation: malloc serves a large one
with a fresh mapping whose pages the kernel commits only as bytes arrive (so a declared length
alone still commits no memory). A connection that passes its `ReceiveBuffers` gets a large body
received into a buffer one of its earlier frames used, once nothing views that one any more: its
pages are committed already, so receiving costs the socket's copy and no page faults.
Byte counts are reported through `on_bytes` per chunk, so a meter sees exactly what crossed the
socket, partial frames included.
"""
from __future__ import annotations

import socket
import ssl
import sys
import time
from typing import Callable

import torch

from transport.wire import (
    DEFAULT_MAX_MESSAGE_BYTES,
    FRAME_PREFIX_BYTES,
    MAX_HEADER_BYTES,
    Frame,
    MessageTooLarge,
    decode_prefix,
)

ByteCounter = Callable[[int], None]
_MAX_PARTS = 512  # buffers per sendmsg call, well under the kernel's IOV_MAX (1024)
# Socket buffers asked for on every connection (the kernel doubles the value and caps it at net.core.wmem_max /
# rmem_max). With a unix socket's default (208 KiB) a 25.7 MB message is ~120 hand-offs between sender and receiver,
# each a wake-up; with 4 MiB the sender's and the receiver's copies overlap on two cores. Measured on this idle 2-core
# host by benchmarks/bench_stip_micro.py (which sets its sockets up with this function), two interleaved runs each,
# in warm memcpys per payload byte: unix socket floor 1.71, 1.77 (default buffers 2.21, 1.97), the transport 2.05,
# 2.11 (2.48, 2.35); TCP loopback the transport 3.27, 3.19 (3.60, 3.32), its floor ~3.5 either way.
SOCKET_BUFFER_BYTES = 4 << 20
# Bytes per send/recv call, the meter's granularity: as large as the socket buffer, so a 25.7 MB message is ~7
# calls a side, not ~25 (each call on a socket with a timeout is a poll and a recv). Measured (idle 2-core host,
# unix socketpair, 25.7 MB, warm memcpys per byte, two interleaved runs): 1 MiB 2.77, 2.65; 4 MiB 2.04, 2.34.
_CHUNK = SOCKET_BUFFER_BYTES


class ConnectionClosed(ConnectionError):
    """The peer closed the connection cleanly between frames."""


class TruncatedFrame(ConnectionError):
    """The peer closed the connection part-way through a frame."""


def tune_stream_socket(sock: socket.socket) -> socket.socket:
    """Every connection's options, in one place: TCP_NODELAY (a request is one frame: no Nagle wait for the
    rest of it) and SOCKET_BUFFER_BYTES of send and receive buffer. Returns `sock`."""
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_BYTES)
    return sock


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("deadline passed while waiting for the peer")
    return left


def send_bytes(sock: socket.socket, data: bytes | bytearray | memoryview | Frame, *,
               deadline: float | None = None, on_bytes: ByteCounter | None = None) -> None:
    """Send all of `data` (a Frame: its parts, scatter-gather), reporting each accepted chunk to `on_bytes`."""
    parts = [p.cast("B") for p in (data.parts if isinstance(data, Frame) else (memoryview(data),)) if p.nbytes]
    gather = hasattr(sock, "sendmsg") and not isinstance(sock, ssl.SSLSocket)  # SSLSocket refuses sendmsg
    first = 0
    while first < len(parts):
        sock.settimeout(_remaining(deadline))
        if gather:
            n = sock.sendmsg(_chunk_of(parts, first))
        else:
            n = sock.send(parts[first][:_CHUNK])
        if on_bytes is not None:
            on_bytes(n)
        while n:  # drop what was sent: whole parts, then the head of the next one
            if n >= len(parts[first]):
                n -= len(parts[first])
                first += 1
            else:
                parts[first] = parts[first][n:]
                n = 0


def _chunk_of(parts: list[memoryview], first: int) -> list[memoryview]:
    """At most _CHUNK bytes in at most _MAX_PARTS buffers, from parts[first] on."""
    chunk: list[memoryview] = []
    room = _CHUNK
    for part in parts[first:first + _MAX_PARTS]:
        chunk.append(part[:room])
        room -= len(chunk[-1])
        if not room:
            break
    return chunk


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


def _buffer(n: int) -> memoryview:
    """A writable n-byte buffer that torch owns, uninitialised: malloc reuses freed pages (no page faults
    per message), and a large declared size is mapped by malloc and committed only as bytes arrive."""
    try:
        # numpy's stubs declare ndarray.__buffer__ only for Python 3.12+; an ndarray is a buffer on 3.11 too
        return memoryview(torch.empty(n, dtype=torch.uint8).numpy())  # type: ignore[arg-type]
    except RuntimeError as exc:  # the allocator refuses the declared size
        raise MessageTooLarge(f"cannot allocate {n} B for a declared frame part ({exc}); lower the sender's "
                              "message size or this side's max_message_bytes") from None


class ReceiveBuffers:
    """One connection's warm receive buffers: a body of at least `min_bytes` goes into a buffer an earlier frame
    of the connection was received into, once no decoded tensor or view refers to it any more (CPython's
    reference count says so: `sys.getrefcount`), so its pages are committed already and receiving it costs
    the socket's copy alone. A buffer still viewed is never reused (the decoded tensors keep their values).

    Holds at most `keep` buffers of at most `max_bytes` each (two: a caller that still holds the last body while
    receiving the next one alternates between them). Not thread-safe: one per connection, whose frames arrive one
    after another. Measured by benchmarks/bench_stip_micro.py (issue 21): GPT-2's full logits, 25.7 MB.
    """

    def __init__(self, keep: int = 2, min_bytes: int = 1 << 20, max_bytes: int = 64 << 20) -> None:
        if keep < 1 or min_bytes < 0 or max_bytes < min_bytes:
            raise ValueError(f"ReceiveBuffers(keep={keep}, min_bytes={min_bytes}, max_bytes={max_bytes}): "
                             "need keep >= 1 and 0 <= min_bytes <= max_bytes")
        self.keep, self.min_bytes, self.max_bytes = keep, min_bytes, max_bytes
        self._arrays: list = []  # numpy uint8 arrays over torch allocations, least recently used first

    def take(self, n: int) -> memoryview:
        """A writable n-byte buffer: a warm idle one where one is large enough, else a fresh one (kept if pooled)."""
        if not self.min_bytes <= n <= self.max_bytes:
            return _buffer(n)
        for i in range(len(self._arrays)):
            if self._arrays[i].nbytes >= n and self._idle(i):
                self._arrays.append(self._arrays.pop(i))
                return memoryview(self._arrays[-1])[:n]
        fresh = _buffer(n)
        idle = [i for i in range(len(self._arrays)) if self._idle(i)]
        if len(self._arrays) >= self.keep:  # drop the least recently used, an idle one where there is one
            del self._arrays[idle[0] if idle else 0]
        self._arrays.append(fresh.obj)
        return fresh

    def _idle(self, i: int) -> bool:
        """Nothing but this pool's list slot refers to buffer i (no view, no decoded tensor)."""
        return _refs_of_slot(self._arrays, i) == _IDLE_REFS


def _refs_of_slot(items: list, i: int) -> int:
    return sys.getrefcount(items[i])


# What an object held only by a list slot counts when read as _refs_of_slot reads it. Measured, not assumed: the
# count includes getrefcount's own argument, which an interpreter that borrows references (CPython >= 3.14) does not
# add; a hard-coded 2 would there take a buffer still viewed once for an idle one.
_IDLE_REFS = _refs_of_slot([object()], 0)


def _recv_exactly(sock: socket.socket, n: int, deadline: float | None, on_bytes: ByteCounter | None,
                  got_before: int, buffers: ReceiveBuffers | None = None) -> memoryview:
    """Receive exactly `n` bytes into one buffer of that size (no regrowth, no copy)."""
    buf = _buffer(n) if buffers is None else buffers.take(n)
    if n:
        _recv_into(sock, buf, deadline, on_bytes, got_before)
    return buf


def recv_frame(sock: socket.socket, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, *,
               deadline: float | None = None, frame_timeout_s: float | None = None,
               idle_timeout_s: float | None = None, max_header_bytes: int = MAX_HEADER_BYTES,
               on_bytes: ByteCounter | None = None,
               buffers: ReceiveBuffers | None = None) -> tuple[bytes, memoryview]:
    """Receive one frame and return its (JSON header, safetensors body) bytes.

    The body is returned as a writable view of the buffer it was received into, so decoding views
    it in place.

    `deadline` (time.monotonic) bounds the whole frame; `idle_timeout_s` bounds the wait for its
    first byte and `frame_timeout_s` the rest of it once that byte arrived (a server waits a while
    for requests, never long for stalled peers). `buffers` (the connection's ReceiveBuffers) lets a large
    body reuse a warm buffer an earlier frame no longer needs.
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
    header = _recv_exactly(sock, header_len, deadline, on_bytes, FRAME_PREFIX_BYTES)
    body = _recv_exactly(sock, body_len, deadline, on_bytes, FRAME_PREFIX_BYTES + header_len, buffers)
    return bytes(header), body
