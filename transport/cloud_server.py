"""The cloud process: a TCP server that runs a handler object on requests in transport.wire frames.

Started by `transport.client.CloudProcess` as ``python -m transport --ready-fd N``. Its
configuration arrives as the first line of stdin (JSON: factory, kwargs, network, host, port, limits
(transport.limits.ServerLimits), sys_path, log_level); it then builds the handler with
``factory(**kwargs)`` ("pkg.module:function"), binds the socket and writes one JSON line to fd N:
``{"ready": true, "port": P, "pid": ..., "accelerator": ...}`` (process_accelerator) or
``{"ready": false, "error": "..."}``. It exits when stdin reaches EOF, i.e. when the parent closes it or dies, so it
never outlives its device.

A request of kind ``m`` calls ``handler.m(tensors, **meta) -> (tensors, meta)`` if ``m`` is in the
handler's allow-list ``remote_methods``; handler calls are serialised by a lock (a call whose client
left before it ran is skipped; one running can poll `cancelled()`) and timed (``cloud_compute``,
returned in the reply meta under RUNTIME_META_KEY). Replies go through the emulated downlink.
Anything wrong - bad frame, unknown method, handler exception, unencodable result - is answered with
an error frame whose meta carries ``error_type`` and a short message (no traceback, no absolute
path: those go to the server's log under the reply's ``error_id``); the server keeps serving.
Resources a client can take are bounded by `transport.limits.ServerLimits` (frame and header size,
connections, idle time, sessions). Only when the stream cannot be trusted any more (bad prefix,
oversized declared length, peer gone mid-frame) is that one connection closed.
"""
from __future__ import annotations

import argparse
import contextvars
import json
import logging
import os
import pkgutil
import re
import secrets
import select
import signal
import socket
import ssl
import sys
import threading
import time
import traceback
from typing import Any, Callable

import torch

from transport import checks
from transport.auth import tokens_match
from transport.framing import ConnectionClosed, ReceiveBuffers, TruncatedFrame, recv_frame, tune_stream_socket
from transport.limits import ServerLimits
from transport.link import EmulatedLink, profile_from_dict
from transport.sched import read_nice, read_slice, request_path, thread_policy
from transport.threads import apply_threads, read_threads
from transport.wire import (
    KIND_ERROR,
    KIND_RESULT,
    Frame,
    MessageTooLarge,
    WireError,
    decode_body,
    encode_frame,
    encode_message,
)

log = logging.getLogger(__name__)

RUNTIME_META_KEY = "_runtime"  # reply meta key holding the server's timings
HELLO = "hello"  # the request that presents the shared token (answered by the server itself)
DESCRIBE = "describe"  # what this server runs: handler class, factory, settings (answered by the server itself)
DEFAULT_FRAME_TIMEOUT_S = ServerLimits.frame_timeout_s  # a started frame must finish within this
_DRAIN_TIMEOUT_S = 1.0
_DRAIN_LIMIT_BYTES = 64 << 20
_WATCH_INTERVAL_S = 0.05
# The largest request body a connection keeps a warm buffer for (transport.framing.ReceiveBuffers, two a connection):
# requests are hidden states (128 tokens of a 4096-wide model: 2 MiB); larger ones are received into fresh memory,
# so many connections cannot make the server hold much.
_POOLED_REQUEST_BYTES = 16 << 20
HELLO_MAX_BYTES = 64 << 10  # a hello carries a token: an unauthenticated peer may send no more than this

# error_type values carried in error replies
BAD_MESSAGE = "BadMessage"
MESSAGE_TOO_LARGE = "MessageTooLarge"
UNKNOWN_METHOD = "UnknownMethod"
HANDLER_ERROR = "HandlerError"
BAD_REPLY = "BadReply"
UNAUTHORIZED = "Unauthorized"
TOO_MANY_CONNECTIONS = "TooManyConnections"
BAD_REQUEST = "BadRequest"  # a request the server refuses before compute (too large a batch, a mask not 0/1)

_CALLER: contextvars.ContextVar[str | None] = contextvars.ContextVar("transport_caller", default=None)
_CANCEL: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar("transport_cancel", default=None)
_ABS_PATH = re.compile(r"""(?:(?<=^)|(?<=[\s'"(\[=:]))(?:/[^\s'"),\]:]+)+""")


def current_caller() -> str | None:
    """An unguessable id of the connection whose request the handler is running (None outside a call).

    Handlers bind per-client state (sessions) to it, so another connection that learns an id
    cannot use it.
    """
    return _CALLER.get()


def cancelled() -> bool:
    """Whether the client of the running call has gone away; long handler loops check it and stop."""
    event = _CANCEL.get()
    return event is not None and event.is_set()


class CallCancelled(RuntimeError):
    """Raised by a handler that stopped because its client left (see `cancelled`)."""


def redact(text: str) -> str:
    """`text` with absolute paths replaced by <path>: error replies must not map the server's disk."""
    return _ABS_PATH.sub("<path>", text)


def load_factory(path: str) -> Callable[..., Any]:
    """Resolve "pkg.module:function" to the callable (pkgutil.resolve_name); errors name the bad part."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"handler factory {path!r} must look like 'pkg.module:function'")
    try:
        obj = pkgutil.resolve_name(path)
    except AttributeError:
        raise ValueError(f"handler factory {path!r}: module {module_name!r} has no {attr!r}") from None
    if not callable(obj):
        raise ValueError(f"handler factory {path!r} is a {type(obj).__name__}, not callable")
    return obj


def remote_methods(handler: Any) -> frozenset[str]:
    """The handler's allow-list (`remote_methods`): the only names a client may call."""
    names = getattr(handler, "remote_methods", None)
    if not names or isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise TypeError(f"handler {type(handler).__name__} must declare remote_methods, a tuple of the method "
                        f"names clients may call (got {names!r})")
    bad = sorted(n for n in names if n.startswith("_") or not n.isidentifier() or n == HELLO
                 or n == DESCRIBE or not callable(getattr(handler, n, None)))
    if bad:
        raise TypeError(f"handler {type(handler).__name__}.remote_methods lists {bad}: not public methods "
                        f"of the handler (or the reserved {HELLO!r}, {DESCRIBE!r})")
    return frozenset(names)


def _error_frame(message: str, error_type: str, **extra: Any) -> bytearray:
    return encode_message(KIND_ERROR, None, {"error_type": error_type, **extra}, error=message)


def _peer_gone(conn: socket.socket) -> bool:
    """Whether the peer closed `conn` (EOF or reset waiting), without consuming any data."""
    try:
        readable, _, _ = select.select([conn.fileno()], [], [], 0)
    except (OSError, ValueError):
        return True
    if not readable:
        return False
    try:  # peek on a plain duplicate: a TLS socket refuses MSG_PEEK
        with socket.fromfd(conn.fileno(), conn.family, conn.type) as raw:
            raw.setblocking(False)
            return raw.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


class _CallWatcher:
    """One thread that watches the connections of calls in progress and flags those whose client left."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watched: dict[socket.socket, threading.Event] = {}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def watch(self, conn: socket.socket) -> threading.Event:
        event = threading.Event()
        with self._lock:
            self._watched[conn] = event
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True, name="cloud-call-watch")
                self._thread.start()
        return event

    def unwatch(self, conn: socket.socket) -> None:
        with self._lock:
            self._watched.pop(conn, None)

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(_WATCH_INTERVAL_S):
            with self._lock:
                items = list(self._watched.items())
            for conn, event in items:
                if not event.is_set() and _peer_gone(conn):
                    event.set()


def process_accelerator() -> dict | str:
    """What this process computes on, as a run records it (report.conditions.accelerator): 'cpu' unless it has put
    work on CUDA (a handler loaded with protocol.cloud_device=cuda, or auto on a GPU host), then the GPUs torch sees
    here: {"device": "cuda", "count": n, "names": [...]} (the handler's model sits on the first, cuda:0)."""
    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return "cpu"
    count = torch.cuda.device_count()
    return {"device": "cuda", "count": count, "names": [torch.cuda.get_device_name(i) for i in range(count)]}


class CloudServer:
    """Accepts connections (one thread each, up to a limit) and dispatches frames to one handler object.

    Only the handler's `remote_methods` can be called. `token` (a shared secret) makes every
    connection present it in a ``hello`` request first; `ssl_context` wraps each connection in TLS.
    """

    def __init__(self, handler: Any, *, network: EmulatedLink | None = None, host: str = "127.0.0.1",
                 port: int = 0, limits: ServerLimits | None = None, token: str | None = None,
                 ssl_context: ssl.SSLContext | None = None, max_message_bytes: int | None = None,
                 frame_timeout_s: float | None = None, description: dict | None = None) -> None:
        limits = limits or ServerLimits()
        if max_message_bytes is not None or frame_timeout_s is not None:
            limits = ServerLimits.from_dict({**limits.to_dict(), **({"max_message_bytes": max_message_bytes}
                                             if max_message_bytes is not None else {}),
                                             **({"frame_timeout_s": frame_timeout_s}
                                                if frame_timeout_s is not None else {})})
        if token is not None and not token:
            raise ValueError("token must be a non-empty string or None")
        self.handler = handler
        self.methods = remote_methods(handler)
        # Answered to DESCRIBE, so a client can refuse a server that runs another protocol's handler
        # (never paths: `description` holds the factory and its non-path settings).
        # The accelerator is read after the handler is built: a handler loaded on a GPU has initialised CUDA by then.
        self.description = {"handler": f"{type(handler).__module__}.{type(handler).__qualname__}",
                            "methods": sorted(self.methods), "accelerator": process_accelerator(),
                            **(description or {})}
        self.limits = limits
        self.max_message_bytes = limits.max_message_bytes
        self.frame_timeout_s = limits.frame_timeout_s
        self.link = network or EmulatedLink(None)
        self.token = token
        self.ssl_context = ssl_context
        self.accept_errors = 0  # accept() failures survived (e.g. out of file descriptors)
        self.refused_connections = 0  # connections turned away at max_connections
        self._handler_lock = threading.Lock()
        self._conn_lock = threading.Lock()
        self._connections = 0  # connections served (authenticated, when the server asks for it)
        self._pending = 0  # connections still in their TLS handshake or hello (max_unauthenticated)
        self._refusers = threading.BoundedSemaphore(4)  # TLS refusals answered at once (each within 1 s)
        self._closed = False
        self._watcher = _CallWatcher()
        apply_limits = getattr(handler, "apply_limits", None)
        if callable(apply_limits):
            apply_limits(limits)
        self._sock = socket.create_server((host, port), backlog=64)
        self.host, self.port = self._sock.getsockname()[:2]

    @property
    def connections(self) -> int:
        """Connections being served now."""
        with self._conn_lock:
            return self._connections

    def serve_forever(self) -> None:
        """Accept connections until close(); accept() errors (out of descriptors...) are logged and survived."""
        while not self._closed:
            try:
                conn, addr = self._sock.accept()
            except OSError as exc:
                if self._closed:
                    return
                self.accept_errors += 1
                log.error("accept() failed (%s); still serving, pausing %.2f s", exc, self.limits.accept_error_pause_s)
                time.sleep(self.limits.accept_error_pause_s)
                continue
            try:
                self._admit(conn, addr)
            except Exception:  # a failure here must cost one connection, never the loop
                log.exception("could not start serving %s", addr)
                conn.close()

    def _admit(self, conn: socket.socket, addr: Any) -> None:
        """Start serving `conn`, or refuse it with a reason. A connection that must authenticate first (TLS or
        a token) counts against max_unauthenticated until it has, and only then takes a max_connections slot,
        so connections that never authenticate cannot lock out one that does."""
        tune_stream_socket(conn)
        gated = self.token is not None or self.ssl_context is not None
        with self._conn_lock:
            if gated:
                full = self._pending >= self.limits.max_unauthenticated
                self._pending += not full
            else:
                full = self._connections >= self.limits.max_connections
                self._connections += not full
        if full:
            self._refuse_full(conn, addr, pending=gated)
            return
        try:
            threading.Thread(target=self._serve_connection, args=(conn, addr, gated), daemon=True,
                             name=f"cloud-conn-{addr[1] if isinstance(addr, tuple) else addr}").start()
        except BaseException:
            with self._conn_lock:
                if gated:
                    self._pending -= 1
                else:
                    self._connections -= 1
            raise

    def _refuse_full(self, conn: socket.socket, addr: Any, *, pending: bool) -> None:
        """Answer a connection the server has no room for with TooManyConnections and a reason, then close it.

        Over TLS the answer needs a handshake: a few refusal threads at most (bounded, each within 1 s);
        beyond them the connection is closed unanswered."""
        self.refused_connections += 1
        why = (f"{self.limits.max_unauthenticated} connections are still authenticating (max_unauthenticated)"
               if pending else f"the cloud serves at most {self.limits.max_connections} connections "
                               "(max_connections)")
        log.warning("refusing %s: %s", addr, why)
        frame = _error_frame(f"{why}; retry later", TOO_MANY_CONNECTIONS)
        if self.ssl_context is None:
            try:
                conn.settimeout(1.0)
                conn.sendall(frame)
            except OSError:
                pass
            conn.close()
            return
        if not self._refusers.acquire(blocking=False):
            conn.close()
            return

        def answer() -> None:
            sock: socket.socket = conn
            try:
                sock = self._tls_handshake(conn, time.monotonic() + min(1.0, self.limits.handshake_timeout_s))
                sock.settimeout(1.0)
                sock.sendall(frame)
                sock.recv(1 << 16)  # the client's first request, so closing sends no reset over the answer
            except (OSError, TimeoutError):
                pass
            finally:
                sock.close()
                self._refusers.release()
        try:
            threading.Thread(target=answer, daemon=True, name="cloud-refuse").start()
        except BaseException:
            self._refusers.release()
            conn.close()
            raise

    def _tls_handshake(self, conn: socket.socket, deadline: float) -> ssl.SSLSocket:
        """The server side of the TLS handshake, done by `deadline` (monotonic) however slowly the peer sends;
        TimeoutError otherwise. `conn` is detached into the returned socket (closed here on failure)."""
        conn.setblocking(False)
        tls = self.ssl_context.wrap_socket(conn, server_side=True,  # type: ignore[union-attr]
                                           do_handshake_on_connect=False)
        try:
            want: tuple[list[ssl.SSLSocket], list[ssl.SSLSocket]]
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    want = ([tls], [])
                except ssl.SSLWantWriteError:
                    want = ([], [tls])
                left = deadline - time.monotonic()
                if left <= 0 or not any(select.select(*want, [], left)[:2]):
                    raise TimeoutError(f"TLS handshake not done within handshake_timeout_s="
                                       f"{self.limits.handshake_timeout_s:g}")
            tls.setblocking(True)
            return tls
        except BaseException:
            tls.close()
            raise

    def close(self) -> None:
        """Stop accepting (wakes a blocked accept()); connections being served finish on their own."""
        self._closed = True
        self._watcher.stop()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()

    def _send(self, conn: socket.socket, frame: bytes | bytearray | Frame) -> None:
        self.link.send(conn, frame, deadline=time.monotonic() + self.frame_timeout_s)

    def _serve_connection(self, conn: socket.socket, addr: Any, gated: bool = False) -> None:
        caller = secrets.token_hex(16)
        pending, served = gated, not gated  # which count this connection holds: _pending or _connections
        try:
            if gated:
                # TLS handshake and token check together within handshake_timeout_s, whatever the peer does
                deadline = time.monotonic() + self.limits.handshake_timeout_s
                if self.ssl_context is not None:
                    conn = self._tls_handshake(conn, deadline)
                welcome = self._authenticate(conn, addr, deadline) if self.token is not None else None
                if self.token is not None and welcome is None:
                    return
                with self._conn_lock:
                    self._pending -= 1
                    pending = False
                    full = self._connections >= self.limits.max_connections
                    self._connections += not full
                    served = not full
                if full:
                    self.refused_connections += 1
                    log.warning("refusing %s: %d connections open (max_connections)", addr,
                                self.limits.max_connections)
                    self._refuse_and_close(conn, _error_frame(
                        f"the cloud serves at most {self.limits.max_connections} connections (max_connections); "
                        "retry later", TOO_MANY_CONNECTIONS))
                    return
                if welcome is not None and not self._try_send(conn, welcome):
                    return
            with request_path():  # $STIP_SCHED_POLICY=fifo: a request's wake-up preempts busy cores (transport.sched)
                self._serve_frames(conn, addr, caller)
        except (ssl.SSLError, OSError) as exc:
            log.warning("connection %s failed: %r", addr, exc)
        except Exception:  # a bug here must cost one connection, never the server
            log.exception("connection %s failed", addr)
        finally:
            conn.close()
            with self._conn_lock:
                self._pending -= pending
                self._connections -= served
            closed = getattr(self.handler, "connection_closed", None)
            if served and callable(closed):
                try:
                    with self._handler_lock:
                        closed(caller)
                except Exception:
                    log.exception("handler connection_closed(%s) failed", addr)

    def _authenticate(self, conn: socket.socket, addr: Any, deadline: float) -> bytearray | None:
        """Read the hello (whole frame by `deadline`, at most HELLO_MAX_BYTES) and check its token: the welcome
        reply to send once a connection slot is granted, or None (refused and answered, or gone)."""
        try:
            header, body = recv_frame(conn, min(self.max_message_bytes, HELLO_MAX_BYTES), deadline=deadline,
                                      max_header_bytes=min(self.limits.max_header_bytes, HELLO_MAX_BYTES))
        except ConnectionClosed:
            return None
        except (TruncatedFrame, TimeoutError) as exc:
            log.warning("connection %s closed before authenticating within handshake_timeout_s=%g: %r", addr,
                        self.limits.handshake_timeout_s, exc)
            return None
        except WireError as exc:
            log.warning("refusing %s before authentication: %s", addr, exc)
            self._refuse_and_close(conn, _error_frame(str(exc), BAD_MESSAGE))
            return None
        reply, accepted = self._hello(header, body, addr)
        if not accepted:
            self._refuse_and_close(conn, reply)
            return None
        return reply

    def _serve_frames(self, conn: socket.socket, addr: Any, caller: str) -> None:
        """Answer frames on one (authenticated) connection until the peer leaves, idles out, or the stream
        breaks."""
        requests = ReceiveBuffers(max_bytes=_POOLED_REQUEST_BYTES)
        while True:
            try:
                header, body = recv_frame(conn, self.max_message_bytes, frame_timeout_s=self.frame_timeout_s,
                                          idle_timeout_s=self.limits.idle_timeout_s,
                                          max_header_bytes=self.limits.max_header_bytes, buffers=requests)
            except ConnectionClosed:
                return
            except TruncatedFrame as exc:
                log.warning("connection %s dropped: %s", addr, exc)
                return
            except MessageTooLarge as exc:  # the stream cannot be resynchronised: refuse, close
                log.warning("refusing oversized frame from %s: %s", addr, exc)
                self._refuse_and_close(conn, _error_frame(str(exc), MESSAGE_TOO_LARGE))
                return
            except WireError as exc:
                log.warning("refusing malformed frame from %s: %s", addr, exc)
                self._refuse_and_close(conn, _error_frame(str(exc), BAD_MESSAGE))
                return
            except (TimeoutError, OSError) as exc:
                log.info("connection %s closed: %r (idle or stalled)", addr, exc)
                return
            reply = self._handle_watched(conn, header, body, caller)
            if reply is None:  # the client left while its call waited or ran
                return
            if not self._try_send(conn, reply):
                return

    def _hello(self, header: bytes, body: bytes | bytearray | memoryview, addr: Any) -> tuple[bytearray, bool]:
        """Check the shared token of a new connection: (reply, accepted)."""
        try:
            request = decode_body(header, body)
        except WireError as exc:
            return _error_frame(str(exc), BAD_MESSAGE), False
        token = request.meta.get("token")  # any JSON value: not valid text (a lone surrogate) is a wrong token
        if request.kind != HELLO or not tokens_match(token, self.token):  # type: ignore[arg-type]
            log.warning("connection %s refused: no valid token in its first request", addr)
            return _error_frame("this cloud requires a token: send a 'hello' request with the shared token "
                                "first", UNAUTHORIZED), False
        return encode_message(KIND_RESULT, None, {"hello": True}), True

    def _handle_watched(self, conn: socket.socket, header: bytes, body: bytes | bytearray | memoryview,
                        caller: str) -> bytearray | Frame | None:
        """handle_frame with the client watched: a call whose client left is skipped or told to stop."""
        event = self._watcher.watch(conn)
        try:
            return self.handle_frame(header, body, caller=caller, cancel=event)
        finally:
            self._watcher.unwatch(conn)

    def _refuse_and_close(self, conn: socket.socket, frame: bytes | bytearray) -> None:
        """Send an error reply on a stream that cannot be trusted, then wind it down.

        Unread input is drained briefly first: closing a socket with unread data makes the kernel
        send a reset, which could destroy the error reply before the peer reads it.
        """
        if not self._try_send(conn, frame):
            return
        try:
            if isinstance(conn, ssl.SSLSocket):
                return
            conn.shutdown(socket.SHUT_WR)
            conn.settimeout(_DRAIN_TIMEOUT_S)
            drained = 0
            deadline = time.monotonic() + _DRAIN_TIMEOUT_S
            while drained < _DRAIN_LIMIT_BYTES and time.monotonic() < deadline and (chunk := conn.recv(1 << 16)):
                drained += len(chunk)
        except OSError:
            pass

    def _try_send(self, conn: socket.socket, frame: bytes | bytearray | Frame) -> bool:
        try:
            self._send(conn, frame)
            return True
        except (OSError, TimeoutError) as exc:
            log.warning("could not send reply: %r", exc)
            return False

    def handle_frame(self, header: bytes, body: bytes | bytearray | memoryview, *, caller: str | None = None,
                     cancel: threading.Event | None = None) -> bytearray | Frame | None:
        """Decode a request whose framing is intact and return the reply frame (never raises).

        Returns None when `cancel` was set (the client left) before the handler could start.
        """
        try:
            request = decode_body(header, body)
        except WireError as exc:
            return _error_frame(str(exc), BAD_MESSAGE)
        if request.kind == DESCRIBE:
            return encode_message(KIND_RESULT, None, self.description)
        method = self._lookup(request.kind)
        if isinstance(method, str):
            return _error_frame(method, UNKNOWN_METHOD)
        try:  # size and mask checks before the handler (and its memory) is reached
            checks.request_size(request.tensors, self.limits.max_batch_tokens)
        except checks.RequestError as exc:
            log.warning("refusing %r: %s", request.kind, exc)
            return _error_frame(f"{request.kind}: {exc}", BAD_REQUEST)
        if not self._acquire(cancel):
            log.info("client left before %r could run: skipped", request.kind)
            return None
        caller_token = _CALLER.set(caller)
        cancel_token = _CANCEL.set(cancel)
        try:
            cpu_start, start = time.process_time(), time.perf_counter()
            result = method(request.tensors, **request.meta)
            cloud_compute = time.perf_counter() - start
            cloud_cpu = time.process_time() - cpu_start  # every thread of this process, torch's pool included
        except Exception as exc:  # the handler's bug is the caller's news, not the server's death
            error_id = secrets.token_hex(4)
            log.exception("handler method %r failed [error %s]", request.kind, error_id)
            return _error_frame(f"{request.kind}: {type(exc).__name__}: {redact(str(exc))} (error {error_id})",
                                HANDLER_ERROR, exception=type(exc).__name__, error_id=error_id)
        finally:
            _CANCEL.reset(cancel_token)
            _CALLER.reset(caller_token)
            self._handler_lock.release()
        try:
            tensors, meta = self._unpack_result(request.kind, result)
            meta = {**meta, RUNTIME_META_KEY: {"cloud_compute": cloud_compute, "cloud_compute_cpu": cloud_cpu,
                                               "threads": torch.get_num_threads(),
                                               "sched_slice_us": read_slice()["slice_us"], "nice": read_nice(),
                                               "sched_policy": thread_policy()}}
            return encode_frame(KIND_RESULT, tensors, meta, max_bytes=self.max_message_bytes)  # sent unjoined
        except Exception as exc:  # bad types, non-JSON meta, too large, tensors that will not copy
            log.error("handler method %r returned an unsendable result: %s", request.kind, exc)
            return _error_frame(f"{request.kind}: cannot send the result: {redact(str(exc))}", BAD_REPLY)

    def _acquire(self, cancel: threading.Event | None) -> bool:
        """Take the handler lock, giving up if the waiting client leaves (so it never queues a dead call)."""
        if cancel is None:
            self._handler_lock.acquire()
            return True
        while not self._handler_lock.acquire(timeout=_WATCH_INTERVAL_S):
            if cancel.is_set():
                return False
        if cancel.is_set():
            self._handler_lock.release()
            return False
        return True

    def _lookup(self, kind: str) -> Callable[..., Any] | str:
        """The bound handler method for `kind`, or a message saying why there is none."""
        if kind.startswith("_") or not kind.isidentifier():
            return f"method {kind!r} is not callable remotely (private or not an identifier)"
        if kind not in self.methods:
            return f"unknown method {kind!r}; the handler offers {sorted(self.methods)}"
        return getattr(self.handler, kind)

    @staticmethod
    def _unpack_result(kind: str, result: Any) -> tuple[dict, dict]:
        if isinstance(result, dict):
            return result, {}
        if isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], dict) \
                and isinstance(result[1], dict):
            return result
        raise TypeError(f"handler method {kind!r} returned {type(result).__name__}; "
                        "expected (dict[str, Tensor], dict)")


def _write_ready(fd: int, payload: dict) -> None:
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(payload) + "\n")


def _exit_on_stdin_eof() -> None:
    """Exit the whole process when the parent closes stdin or dies, taking what the handler started with it."""
    try:
        while sys.stdin.buffer.read(65536):
            pass
    finally:
        log.info("stdin closed: cloud process exiting")
        _end_own_group()
        os._exit(0)


def _end_own_group() -> None:
    """SIGKILL this process's group (this process included) when it leads its own session, as CloudProcess
    starts it (transport.processes.spawn): a grandchild of a killed device never outlives the cloud. A cloud
    started otherwise (a shell's group) signals nobody else."""
    if os.getsid(0) != os.getpid():
        return
    for handler in logging.getLogger().handlers:
        handler.flush()
    os.killpg(os.getpgrp(), signal.SIGKILL)


def main(argv: list[str] | None = None) -> int:
    """Run the cloud process: read the config from stdin, report readiness, serve until EOF."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ready-fd", type=int, required=True)
    args = parser.parse_args(argv)
    config = json.loads(sys.stdin.buffer.readline())
    logging.basicConfig(level=config.get("log_level", "INFO"), stream=sys.stderr,
                        format="%(asctime)s cloud[%(process)d] %(levelname)s %(name)s: %(message)s")
    for entry in config.get("sys_path", []):
        if entry not in sys.path:
            sys.path.append(entry)
    threading.Thread(target=_exit_on_stdin_eof, daemon=True, name="parent-watch").start()
    try:
        threads = apply_threads(config.get("threads"))  # before the handler loads: nothing parallel ran yet
        handler = load_factory(config["factory"])(**config.get("kwargs", {}))
        server = CloudServer(handler, network=EmulatedLink(profile_from_dict(config.get("network"))),
                             host=config.get("host", "127.0.0.1"), port=config.get("port", 0),
                             limits=ServerLimits.from_dict(config.get("limits")),
                             description={"threads": read_threads(threads.get("requested"))})
    except BaseException as exc:
        log.exception("cloud handler startup failed")
        _write_ready(args.ready_fd, {"ready": False, "error": f"{type(exc).__name__}: {exc}",
                                     "traceback": traceback.format_exc()})
        return 2
    log.info("cloud handler %s serving on %s:%d", config["factory"], server.host, server.port)
    _write_ready(args.ready_fd, {"ready": True, "host": server.host, "port": server.port,
                                 "pid": os.getpid(), "accelerator": server.description["accelerator"]})
    server.serve_forever()
    return 0
