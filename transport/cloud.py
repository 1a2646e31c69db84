"""The cloud process: a TCP server that runs a handler object on requests in transport.wire frames.

Started by `transport.client.CloudProcess` as ``python -m transport --ready-fd N``.
Its configuration arrives as the first line of stdin (JSON: factory, kwargs, network, host, port,
max_message_bytes, frame_timeout_s, sys_path, log_level); it then builds the handler with
``factory(**kwargs)`` ("pkg.module:function"), binds the socket and writes one JSON line to fd N:
``{"ready": true, "port": P, "pid": ...}`` or ``{"ready": false, "error": "..."}``. It exits when
stdin reaches EOF, i.e. when the parent closes it or dies, so it never outlives its device.

A request of kind ``m`` calls ``handler.m(tensors, **meta) -> (tensors, meta)``; handler calls are
serialised by a lock and timed (``cloud_compute``, returned in the reply meta under
RUNTIME_META_KEY). Replies go through the emulated downlink. Anything wrong - bad frame, unknown
method, handler exception, unencodable result - is answered with an error frame whose meta carries
``error_type``; the server keeps serving. Only when the stream cannot be trusted any more (bad
prefix, oversized declared length, peer gone mid-frame) is that one connection closed.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import pkgutil
import socket
import sys
import threading
import time
import traceback
from typing import Any, Callable

from transport.framing import ConnectionClosed, TruncatedFrame, recv_frame
from transport.link import EmulatedLink, profile_from_dict
from transport.wire import (
    DEFAULT_MAX_MESSAGE_BYTES,
    KIND_ERROR,
    KIND_RESULT,
    MessageTooLarge,
    WireError,
    decode_body,
    encode_message,
)

log = logging.getLogger(__name__)

RUNTIME_META_KEY = "_runtime"  # reply meta key holding the server's timings
DEFAULT_FRAME_TIMEOUT_S = 120.0  # a started frame must finish within this
_DRAIN_TIMEOUT_S = 1.0
_DRAIN_LIMIT_BYTES = 64 << 20

# error_type values carried in error replies
BAD_MESSAGE = "BadMessage"
MESSAGE_TOO_LARGE = "MessageTooLarge"
UNKNOWN_METHOD = "UnknownMethod"
HANDLER_ERROR = "HandlerError"
BAD_REPLY = "BadReply"


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


def _error_frame(message: str, error_type: str, **extra: Any) -> bytearray:
    return encode_message(KIND_ERROR, None, {"error_type": error_type, **extra}, error=message)


class CloudServer:
    """Accepts connections (one thread each) and dispatches frames to one handler object."""

    def __init__(self, handler: Any, *, network: EmulatedLink | None = None, host: str = "127.0.0.1",
                 port: int = 0, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 frame_timeout_s: float = DEFAULT_FRAME_TIMEOUT_S) -> None:
        self.handler = handler
        self.link = network or EmulatedLink(None)
        self.max_message_bytes = max_message_bytes
        self.frame_timeout_s = frame_timeout_s
        self._handler_lock = threading.Lock()
        self._sock = socket.create_server((host, port), backlog=16)
        self.host, self.port = self._sock.getsockname()[:2]

    def serve_forever(self) -> None:
        """Accept connections until the listening socket is closed."""
        while True:
            try:
                conn, addr = self._sock.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._serve_connection, args=(conn, addr), daemon=True,
                             name=f"cloud-conn-{addr[1]}").start()

    def close(self) -> None:
        self._sock.close()

    def _send(self, conn: socket.socket, frame: bytes | bytearray) -> None:
        self.link.send(conn, frame, deadline=time.monotonic() + self.frame_timeout_s)

    def _serve_connection(self, conn: socket.socket, addr: Any) -> None:
        try:
            self._serve_frames(conn, addr)
        except Exception:  # a bug here must cost one connection, never the server
            log.exception("connection %s failed", addr)
        finally:
            conn.close()

    def _serve_frames(self, conn: socket.socket, addr: Any) -> None:
        """Answer frames on one connection until the peer leaves or the stream breaks."""
        while True:
            try:
                header, body = recv_frame(conn, self.max_message_bytes,
                                          frame_timeout_s=self.frame_timeout_s)
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
                log.warning("connection %s failed mid-frame: %r", addr, exc)
                return
            if not self._try_send(conn, self.handle_frame(header, body)):
                return

    def _refuse_and_close(self, conn: socket.socket, frame: bytes | bytearray) -> None:
        """Send an error reply on a stream that cannot be trusted, then wind it down.

        Unread input is drained briefly first: closing a socket with unread data makes the kernel
        send a reset, which could destroy the error reply before the peer reads it.
        """
        if not self._try_send(conn, frame):
            return
        try:
            conn.shutdown(socket.SHUT_WR)
            conn.settimeout(_DRAIN_TIMEOUT_S)
            drained = 0
            while drained < _DRAIN_LIMIT_BYTES and (chunk := conn.recv(1 << 16)):
                drained += len(chunk)
        except OSError:
            pass

    def _try_send(self, conn: socket.socket, frame: bytes | bytearray) -> bool:
        try:
            self._send(conn, frame)
            return True
        except (OSError, TimeoutError) as exc:
            log.warning("could not send reply: %r", exc)
            return False

    def handle_frame(self, header: bytes, body: bytes | bytearray) -> bytearray:
        """Decode a request whose framing is intact and return the reply frame (never raises)."""
        try:
            request = decode_body(header, body)
        except WireError as exc:
            return _error_frame(str(exc), BAD_MESSAGE)
        method = self._lookup(request.kind)
        if isinstance(method, str):
            return _error_frame(method, UNKNOWN_METHOD)
        try:
            with self._handler_lock:
                start = time.perf_counter()
                result = method(request.tensors, **request.meta)
                cloud_compute = time.perf_counter() - start
        except Exception as exc:  # the handler's bug is the caller's news, not the server's death
            log.exception("handler method %r failed", request.kind)
            return _error_frame(f"{request.kind}: {type(exc).__name__}: {exc}", HANDLER_ERROR,
                                exception=type(exc).__name__, traceback=traceback.format_exc())
        try:
            tensors, meta = self._unpack_result(request.kind, result)
            meta = {**meta, RUNTIME_META_KEY: {"cloud_compute": cloud_compute}}
            return encode_message(KIND_RESULT, tensors, meta, max_bytes=self.max_message_bytes)
        except Exception as exc:  # bad types, non-JSON meta, too large, tensors that will not copy
            log.error("handler method %r returned an unsendable result: %s", request.kind, exc)
            return _error_frame(f"{request.kind}: cannot send the result: {exc}", BAD_REPLY)

    def _lookup(self, kind: str) -> Callable[..., Any] | str:
        """The bound handler method for `kind`, or a message saying why there is none."""
        if kind.startswith("_") or not kind.isidentifier():
            return f"method {kind!r} is not callable remotely (private or not an identifier)"
        method = getattr(self.handler, kind, None)
        if not callable(method):
            public = sorted(n for n in dir(self.handler)
                            if not n.startswith("_") and callable(getattr(self.handler, n, None)))
            return f"unknown method {kind!r}; the handler offers {public}"
        return method

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
    """Exit the whole process when the parent closes stdin or dies."""
    try:
        while sys.stdin.buffer.read(65536):
            pass
    finally:
        log.info("stdin closed: cloud process exiting")
        os._exit(0)


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
        handler = load_factory(config["factory"])(**config.get("kwargs", {}))
        server = CloudServer(handler, network=EmulatedLink(profile_from_dict(config.get("network"))),
                             host=config.get("host", "127.0.0.1"), port=config.get("port", 0),
                             max_message_bytes=config.get("max_message_bytes", DEFAULT_MAX_MESSAGE_BYTES),
                             frame_timeout_s=config.get("frame_timeout_s", DEFAULT_FRAME_TIMEOUT_S))
    except BaseException as exc:
        log.exception("cloud handler startup failed")
        _write_ready(args.ready_fd, {"ready": False, "error": f"{type(exc).__name__}: {exc}",
                                     "traceback": traceback.format_exc()})
        return 2
    log.info("cloud handler %s serving on %s:%d", config["factory"], server.host, server.port)
    _write_ready(args.ready_fd, {"ready": True, "host": server.host, "port": server.port,
                                 "pid": os.getpid()})
    server.serve_forever()
    return 0
