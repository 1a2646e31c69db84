"""The device side of the runtime: spawn the cloud process, call it, time and meter each call.

`CloudProcess` starts ``python -m transport`` (the server in cloud.py) in its own session,
waits for it to report its port, and keeps one TCP connection to it. Each `call` goes through
the emulated uplink, waits for the reply within a timeout and splits the measured round trip
into ``uplink`` (push through the emulated link), ``cloud_compute`` (handler time reported by
the server) and ``downlink`` (the rest: emulated downlink delay, transfer, server framing).
The split point is when send() returns on the device; if the scheduler resumes the device late,
a little time moves from downlink to uplink, but their sum is exact.
A dead or silent cloud raises `CloudUnavailable` within the timeout; on exit the whole process
group is killed, whatever happened.
"""
from __future__ import annotations

import json
import logging
import os
import select
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from transport.auth import plaintext_token_problem
from transport.cloud_server import HELLO, RUNTIME_META_KEY, UNAUTHORIZED, _peer_gone
from transport.framing import ReceiveBuffers, recv_frame, tune_stream_socket
from transport.limits import ServerLimits
from transport.link import EmulatedLink, NetworkProfile, profile_to_dict
from transport.meter import DOWN, UP, TrafficMeter
from transport.processes import signal_tree, spawn
from transport.sched import request_path
from transport.threads import resolve_threads, thread_env
from transport.wire import (
    DEFAULT_MAX_MESSAGE_BYTES,
    KIND_ERROR,
    Message,
    WireError,
    decode_body,
    encode_frame,
    encode_message,
    expected_payload_bytes,
)

log = logging.getLogger(__name__)

_PROJECT_ROOT = str(Path(__file__).resolve().parents[1])
_LOG_TAIL_CHARS = 3000


class CloudError(RuntimeError):
    """The cloud answered with an error (bad request, unknown method, handler exception)."""

    def __init__(self, message: str, *, error_type: str | None = None,
                 remote_traceback: str | None = None) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.remote_traceback = remote_traceback


class CloudUnavailable(CloudError):
    """The cloud process is not there to answer: failed to start, died, or closed the link."""


class CloudTimeout(CloudUnavailable):
    """The cloud process did not answer within the timeout."""


@dataclass
class CallRecord:
    """Everything measured about one call (`CloudProcess.last_call`)."""

    method: str
    uplink: float
    cloud_compute: float
    downlink: float
    round_trip: float
    encode: float
    decode: float
    bytes_up: int
    bytes_down: int
    link_time_up: float  # modelled by the profile
    link_time_down: float  # modelled by the profile
    request_overhead_bytes: int
    reply: Message | None = field(default=None, repr=False)
    cloud_compute_cpu: float | None = None  # the cloud process's CPU time in the handler (None: server did not say)
    cloud_threads: int | None = None  # the cloud's torch intra-op threads during the call (as it reported)
    cloud_sched_slice_us: float | None = None  # the serving thread's scheduler slice (transport.sched), as reported
    cloud_nice: int | None = None  # the serving thread's nice value (transport.sched), as reported
    cloud_sched_policy: str | None = None  # the serving thread's policy, fifo or fair (transport.sched), as reported

    @property
    def timing(self) -> dict[str, float]:
        """The three link/compute phases of the latency breakdown."""
        return {"uplink": self.uplink, "cloud_compute": self.cloud_compute, "downlink": self.downlink}


def _kill_group(pid: int) -> None:
    signal_tree(pid, signal.SIGKILL)


class CloudClient:
    """The calling side of a cloud connection: framing, emulated link, metering, timing, reconnects.

    `CloudProcess` (a cloud it spawns) and `RemoteCloud` (a cloud already running elsewhere) add
    how the server comes to exist. A connection the server closed while idle is reopened before
    the next call; `token` is presented in a ``hello`` request on every new connection.
    """

    def __init__(self, *, network: NetworkProfile | None = None, timeout_s: float = 60.0,
                 host: str = "127.0.0.1", port: int = 0, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 token: str | None = None, ssl_context: ssl.SSLContext | None = None,
                 server_hostname: str | None = None) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.network = network
        self.timeout_s = float(timeout_s)
        self.host, self.port = host, port
        self.max_message_bytes = max_message_bytes
        self.token = token
        self.ssl_context = ssl_context
        self.server_hostname = server_hostname or host
        self.link = EmulatedLink(network)
        self.meter = TrafficMeter()
        self.last_timing: dict[str, float] = {}
        self.last_call: CallRecord | None = None
        # What the cloud computes on as its server reported it (transport.cloud_server.process_accelerator):
        # set from the ready line of a spawned cloud, from DESCRIBE for a served one; None where it did not say.
        self.accelerator: dict | str | None = None
        self._call_lock = threading.Lock()  # one request in flight per connection
        self._sock: socket.socket | None = None
        self._replies = ReceiveBuffers()  # a large reply (full logits) lands in a warm buffer a dropped one used

    def __enter__(self) -> CloudClient:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def alive(self) -> bool:
        """Whether the server can still be there (a spawned process that has not exited)."""
        return True

    @property
    def describe(self) -> str:
        """How error messages name this cloud."""
        return f"cloud {self.host}:{self.port}"

    def start(self) -> CloudClient:
        """Make the server reachable (spawn it, or connect to it)."""
        self._connect()
        return self

    def close(self) -> None:
        """Close the connection; safe to call twice."""
        self._drop_connection()

    def _ensure_started(self) -> None:
        """Raise CloudUnavailable when there is nothing to call."""

    def _connect(self) -> socket.socket:
        if self._sock is not None and _peer_gone(self._sock):  # the server closed an idle connection
            log.info("%s closed the idle connection; reconnecting", self.describe)
            self._drop_connection()
        if self._sock is None:
            sock = tune_stream_socket(socket.create_connection((self.host, self.port), timeout=self.timeout_s))
            try:
                if self.ssl_context is not None:
                    sock = self.ssl_context.wrap_socket(sock, server_hostname=self.server_hostname)
                if self.token is not None:
                    self._hello(sock)
            except BaseException:
                sock.close()
                raise
            self._sock = sock
        return self._sock

    def _hello(self, sock: socket.socket) -> None:
        """Present the shared token (not metered: connection set-up, like the TLS handshake)."""
        deadline = time.monotonic() + self.timeout_s
        self.link.send(sock, encode_message(HELLO, None, {"token": self.token}), deadline=deadline)
        reply = decode_body(*recv_frame(sock, self.max_message_bytes, deadline=deadline))
        if reply.kind == KIND_ERROR:
            raise CloudError(f"{self.describe} refused the connection: {reply.error}",
                             error_type=reply.meta.get("error_type", UNAUTHORIZED))

    def _drop_connection(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    def _died(self, method: str, cause: BaseException | None = None) -> CloudUnavailable:
        why = f" ({type(cause).__name__}: {cause})" if cause is not None else ""
        return CloudUnavailable(f"{self.describe} closed the connection during {method!r}{why}")

    # ----------------------------------------------------------------- calls
    def call(self, method: str, tensors: Mapping[str, torch.Tensor] | None = None,
             meta: Mapping[str, Any] | None = None, *, timeout_s: float | None = None
             ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Run ``handler.<method>(tensors, **meta)`` in the cloud; returns (tensors, meta).

        Raises transport.wire.WireError (a ValueError) for a request that cannot be encoded,
        CloudError for an error reply, CloudUnavailable if the process is gone, CloudTimeout if
        no reply arrives within `timeout_s` (default: the instance's timeout_s). Thread-safe:
        concurrent calls are serialised.
        """
        with self._call_lock:
            return self._call(method, tensors, meta, timeout_s)

    def _call(self, method: str, tensors: Mapping[str, torch.Tensor] | None,
              meta: Mapping[str, Any] | None, timeout_s: float | None
              ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        timeout = self.timeout_s if timeout_s is None else float(timeout_s)
        t_encode = time.perf_counter()
        frame = encode_frame(method, tensors, meta, max_bytes=self.max_message_bytes)  # the tensors' own memory
        self._ensure_started()
        request_payload = expected_payload_bytes(tensors or {})
        start = time.perf_counter()
        deadline = time.monotonic() + timeout
        before = self.meter.snapshot()
        try:
            if not self.alive:
                raise ConnectionError("process not running")
            sock = self._connect()
            with request_path():  # $STIP_SCHED_POLICY=fifo: its wake-ups preempt busy cores (transport.sched)
                sent = self.link.send(sock, frame, deadline=deadline,
                                      on_bytes=lambda n: self.meter.add_bytes(UP, n))
                self.meter.add_message(UP, sent.modelled_s, sent.measured_s)
                t_sent = time.perf_counter()
                header, body = recv_frame(sock, self.max_message_bytes, deadline=deadline,
                                          on_bytes=lambda n: self.meter.add_bytes(DOWN, n), buffers=self._replies)
                t_end = time.perf_counter()
        except TimeoutError as exc:
            self._drop_connection()  # a late reply would desynchronise the stream
            if not self.alive:
                raise self._died(method) from exc
            raise CloudTimeout(f"{self.describe} did not answer {method!r} "
                               f"within {timeout:g} s (timeout_s)") from exc
        except (ConnectionError, OSError, WireError) as exc:
            self._drop_connection()
            if isinstance(exc, WireError) and self.alive:
                raise CloudError(f"cloud sent a malformed reply to {method!r}: {exc}") from exc
            raise self._died(method, exc) from exc
        except BaseException:  # e.g. KeyboardInterrupt mid-frame: the stream is out of step
            self._drop_connection()
            raise
        try:
            reply = decode_body(header, body)
        except WireError as exc:
            raise CloudError(f"cloud sent a malformed reply to {method!r}: {exc}") from exc
        t_decoded = time.perf_counter()
        link_down = self.link.one_way_time(reply.frame_bytes)
        self.meter.add_message(DOWN, link_down, max(t_end - t_sent, 0.0))
        runtime = reply.meta.pop(RUNTIME_META_KEY, {}) or {}
        cloud_compute = float(runtime.get("cloud_compute", 0.0))
        uplink = t_sent - start
        traffic = self.meter.delta(before, self.meter.snapshot())
        record = CallRecord(
            method=method, uplink=uplink, cloud_compute=cloud_compute,
            downlink=max(t_end - t_sent - cloud_compute, 0.0), round_trip=t_end - start,
            encode=start - t_encode, decode=t_decoded - t_end,
            bytes_up=int(traffic["bytes_up"]), bytes_down=int(traffic["bytes_down"]),
            link_time_up=self.link.one_way_time(len(frame)), link_time_down=link_down,
            request_overhead_bytes=len(frame) - request_payload, reply=reply,
            cloud_compute_cpu=runtime.get("cloud_compute_cpu"), cloud_threads=runtime.get("threads"),
            cloud_sched_slice_us=runtime.get("sched_slice_us"), cloud_nice=runtime.get("nice"),
            cloud_sched_policy=runtime.get("sched_policy"))
        self.last_call, self.last_timing = record, record.timing
        if reply.kind == KIND_ERROR:
            raise CloudError(f"{self.describe} refused {method!r}: {reply.error}",
                             error_type=reply.meta.get("error_type"),
                             remote_traceback=reply.meta.get("traceback"))
        return reply.tensors, reply.meta


class CloudProcess(CloudClient):
    """A cloud handler in its own OS process, reached over a (loopback) TCP socket.

    ``factory`` is "pkg.module:function"; the child calls ``factory(**kwargs)`` (kwargs JSON-able)
    and serves ``handler.<method>(tensors, **meta) -> (tensors, meta)``. ``network`` shapes both
    directions (None: no emulation). ``timeout_s`` bounds each call; ``startup_timeout_s``
    (default max(timeout_s, 120)) bounds building the handler. The child's stdout/stderr go to
    ``log_path`` (default: a temporary file removed on close; its tail is quoted in errors).
    ``limits`` bounds what clients can cost the server (ServerLimits; ``max_message_bytes`` and
    ``frame_timeout_s`` fill the default one).
    """

    def __init__(self, factory: str, kwargs: Mapping[str, Any] | None = None, *,
                 network: NetworkProfile | None = None, timeout_s: float = 60.0,
                 startup_timeout_s: float | None = None, host: str = "127.0.0.1", port: int = 0,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, frame_timeout_s: float = 120.0,
                 log_path: str | os.PathLike | None = None, log_level: str = "INFO",
                 limits: ServerLimits | None = None, threads: int | None = None) -> None:
        module, sep, attr = factory.partition(":")
        if not sep or not module or not attr:
            raise ValueError(f"handler factory {factory!r} must look like 'pkg.module:function'")
        self.kwargs = dict(kwargs or {})
        try:
            json.dumps(self.kwargs)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"handler kwargs for {factory!r} must be JSON-able: {exc}") from exc
        if limits is None:
            limits = ServerLimits(max_message_bytes=max_message_bytes, frame_timeout_s=frame_timeout_s)
        elif (max_message_bytes, frame_timeout_s) != (DEFAULT_MAX_MESSAGE_BYTES, 120.0):
            raise ValueError("give max_message_bytes and frame_timeout_s inside limits=ServerLimits(...), not "
                             "beside it")
        super().__init__(network=network, timeout_s=timeout_s, host=host, port=port,
                         max_message_bytes=limits.max_message_bytes)
        self.factory = factory
        self.threads = resolve_threads(threads)  # the child's torch threads and OMP/MKL/BLAS env (transport.threads)
        self.limits = limits
        self.startup_timeout_s = float(startup_timeout_s or max(self.timeout_s, 120.0))
        self._requested_port = port
        self.frame_timeout_s = limits.frame_timeout_s
        self.log_level = log_level
        self._own_log = log_path is None
        self.log_path: Path | None = None if log_path is None else Path(log_path)
        self._proc: subprocess.Popen | None = None
        self._finalizer: weakref.finalize | None = None

    # ----------------------------------------------------------------- lifecycle
    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def describe(self) -> str:
        return f"cloud {self.factory!r} (pid {self.pid})"

    def _ensure_started(self) -> None:
        if self._proc is None:
            raise CloudUnavailable(f"cloud process {self.factory!r} is not running; "
                                   "use `with CloudProcess(...) as cloud:`")

    def start(self) -> CloudProcess:
        """Spawn the cloud process and wait until it listens (or raise CloudUnavailable)."""
        if self._proc is not None:
            raise RuntimeError(f"cloud process {self.factory!r} already started (pid {self.pid})")
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="stip-cloud-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        config = {"factory": self.factory, "kwargs": self.kwargs, "network": profile_to_dict(self.network),
                  "host": self.host, "port": self.port, "limits": self.limits.to_dict(), "log_level": self.log_level,
                  "sys_path": [os.path.abspath(p) for p in sys.path if p], "threads": self.threads}
        env = {**os.environ, **thread_env(self.threads)}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PROJECT_ROOT, env.get("PYTHONPATH")]))
        self.port = self._requested_port
        ready_r, ready_w = os.pipe()
        try:
            with open(self.log_path, "ab") as log_file:
                self._proc = spawn(
                    [sys.executable, "-m", "transport", "--ready-fd", str(ready_w)],
                    stdin=subprocess.PIPE, stdout=log_file, stderr=subprocess.STDOUT, env=env,
                    pass_fds=(ready_w,))
        finally:
            os.close(ready_w)
        self._finalizer = weakref.finalize(self, _kill_group, self._proc.pid)
        try:
            assert self._proc.stdin is not None
            try:
                self._proc.stdin.write(json.dumps(config).encode() + b"\n")
                self._proc.stdin.flush()
            except BrokenPipeError:
                pass  # the child died at once; _wait_ready reports how
            ready = self._wait_ready(ready_r)
            self.port = int(ready["port"])
            self.accelerator = ready.get("accelerator")
            self._connect()
        except BaseException:
            self.close()
            raise
        finally:
            os.close(ready_r)
        log.info("cloud process %s (pid %d) listening on %s:%d", self.factory, self.pid, self.host, self.port)
        return self

    def _wait_ready(self, fd: int) -> dict:
        deadline = time.monotonic() + self.startup_timeout_s
        data = b""
        while b"\n" not in data:
            left = deadline - time.monotonic()
            if left <= 0:
                raise CloudTimeout(f"cloud process {self.factory!r} (pid {self.pid}) not ready within "
                                   f"{self.startup_timeout_s:.0f} s (startup_timeout_s){self._log_tail()}")
            readable, _, _ = select.select([fd], [], [], min(left, 0.5))
            if readable:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                data += chunk
        if not data.strip():
            code = self._wait_exit(5.0)
            raise CloudUnavailable(f"cloud process {self.factory!r} exited (code {code}) before it was "
                                   f"ready{self._log_tail()}")
        ready = json.loads(data.splitlines()[0])
        if not ready.get("ready"):
            raise CloudUnavailable(f"cloud handler {self.factory}(**{self.kwargs!r}) failed to start: "
                                   f"{ready.get('error')}", remote_traceback=ready.get("traceback"))
        return ready

    def close(self, grace_s: float = 1.0) -> None:
        """Close the link and kill the cloud's process group; safe to call twice."""
        self._drop_connection()
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                if proc.stdin is not None:
                    proc.stdin.close()  # the child exits on stdin EOF
            except OSError:
                pass
            deadline = time.monotonic() + grace_s
            while time.monotonic() < deadline and not _exited_unreaped(proc.pid):
                time.sleep(0.01)
            _kill_group(proc.pid)  # leader not reaped yet, so its pid still names the group
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                log.error("cloud process %d did not die after SIGKILL", proc.pid)
            if self._finalizer is not None:
                self._finalizer.detach()
        if self._own_log and self.log_path is not None:
            self.log_path.unlink(missing_ok=True)
            self.log_path = None

    def _wait_exit(self, timeout: float) -> int | None:
        if self._proc is None:
            return None
        try:
            return self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def _log_tail(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        text = self.log_path.read_bytes()[-_LOG_TAIL_CHARS:].decode("utf-8", "replace").strip()
        return f"\n--- cloud log tail ({self.log_path}) ---\n{text}" if text else ""

    def _died(self, method: str, cause: BaseException | None = None) -> CloudUnavailable:
        code = self._wait_exit(2.0)
        state = f"exited with code {code}" if code is not None else "closed the connection"
        why = f" ({type(cause).__name__}: {cause})" if cause is not None else ""
        return CloudUnavailable(f"cloud process {self.factory!r} (pid {self.pid}) {state} during "
                                f"{method!r}{why}{self._log_tail()}")




class RemoteCloud(CloudClient):
    """A cloud already serving elsewhere (``python -m transport serve``), reached at ``host:port``.

    Off loopback the server requires TLS and a token, so give ``ca_file`` (the server's certificate
    or its CA, PEM) and ``token``; ``network`` still emulates a link on top of the real one (None:
    measure the real link alone).
    """

    def __init__(self, address: str, *, token: str | None = None, ca_file: str | os.PathLike | None = None,
                 server_hostname: str | None = None, network: NetworkProfile | None = None,
                 timeout_s: float = 60.0, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        host, port = parse_address(address)
        exposed = plaintext_token_problem(host, token, ca_file is not None)
        if exposed:  # the server refuses to serve off loopback without TLS; the client never sends it in clear
            raise ValueError(f"refusing to send the cloud token to {address}: {exposed}")
        context = None
        if ca_file is not None:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=os.fspath(ca_file))
        super().__init__(network=network, timeout_s=timeout_s, host=host, port=port,
                         max_message_bytes=max_message_bytes, token=token, ssl_context=context,
                         server_hostname=server_hostname)

    @property
    def describe(self) -> str:
        return f"remote cloud {self.host}:{self.port}"

    def start(self) -> RemoteCloud:
        """Connect (TLS handshake and token check included), or raise CloudUnavailable naming the address."""
        try:
            self._connect()
        except (OSError, TimeoutError) as exc:
            raise CloudUnavailable(f"cannot reach {self.describe}: {type(exc).__name__}: {exc}") from exc
        return self


def parse_address(address: str) -> tuple[str, int]:
    """"host:port" (or "[v6]:port") -> (host, port); errors show the expected form."""
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"cloud address {address!r} must look like 'host:port' (port 1..65535)")
    return host, int(port)

def _exited_unreaped(pid: int) -> bool:
    """Whether child `pid` has exited, without reaping it (its pid keeps naming its group)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True
