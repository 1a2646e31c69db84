"""Reliability of the transport against hostile clients, remote serving, and MPC party lifetime (issue 9).

Loopback only, bounded in count and time; each test stops by itself.
"""
from __future__ import annotations

import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from baselines.full_cloud import FullCloudHandler
from baselines.mpc.launcher import loopback_interface
from transport import CloudError, CloudProcess, RemoteCloud, ServerLimits, checks
from transport.cloud_server import CloudServer, redact
from transport.framing import ConnectionClosed, recv_frame
from transport.testing import EchoHandler
from transport.wire import MAGIC, WireError, decode_body, encode_message

from helpers.loopback_cloud import client, gone, self_signed, serving, stip_handler

pytestmark = pytest.mark.timeout(120)

ECHO = "transport.testing:make_echo_handler"
ROOT = Path(__file__).resolve().parents[1]
MiB = 1 << 20


def assert_serving(cloud) -> None:
    x = torch.arange(4, dtype=torch.float32)
    tensors, _ = cloud.call("scale_add", {"x": x}, {"offset": 1.0})
    assert torch.equal(tensors["x"], x + 1)


def reply_to(address, data: bytes, *, close_write: bool = True, wait_s: float = 5.0):
    """Send raw bytes on a fresh connection; the decoded reply, or None if the server closed without one."""
    with socket.create_connection(address, timeout=wait_s) as sock:
        try:
            sock.sendall(data)
            if close_write:
                sock.shutdown(socket.SHUT_WR)
            return decode_body(*recv_frame(sock, deadline=time.monotonic() + wait_s))
        except (ConnectionClosed, ConnectionError, WireError):
            return None


def rss(pid: int) -> int:
    return psutil.Process(pid).memory_info().rss


# ---------------------------------------------------------------- limits and frames
def test_server_limits_are_validated_by_name():
    assert ServerLimits().max_connections >= 1
    with pytest.raises(ValueError, match="max_connections"):
        ServerLimits(max_connections=0)
    with pytest.raises(ValueError, match="idle_timeout_s"):
        ServerLimits(idle_timeout_s=-1)
    with pytest.raises(ValueError, match="unknown server limits \\['max_conns'\\]"):
        ServerLimits.from_dict({"max_conns": 3})
    assert ServerLimits.from_dict(ServerLimits(max_connections=3).to_dict()).max_connections == 3


def test_declared_length_commits_no_memory():
    """Eight connections each declare a ~1 GiB body and send 64 KiB of it: the server's RSS barely moves."""
    with CloudProcess(ECHO, timeout_s=20) as cloud:
        assert_serving(cloud)
        base = peak = rss(cloud.pid)
        socks = []
        try:
            for _ in range(8):
                s = socket.create_connection(cloud.address, timeout=5)
                header = b'{"kind":"echo"}'
                s.sendall(MAGIC + struct.pack("<IQ", len(header), (1 << 30) - 100) + header + bytes(64 << 10))
                socks.append(s)
            deadline = time.monotonic() + 1.5
            while time.monotonic() < deadline:
                peak = max(peak, rss(cloud.pid))
                time.sleep(0.02)
        finally:
            for s in socks:
                s.close()
        growth = (peak - base) / MiB
        print(f"\ndeclared-length attack: 8 x 1 GiB declared, server RSS {base / MiB:.0f} MiB -> peak "
              f"{peak / MiB:.0f} MiB (+{growth:.1f} MiB)")
        assert growth < 32, f"server RSS grew by {growth:.0f} MiB on declared lengths"
        assert_serving(cloud)


def test_header_limit_is_checked_before_reading():
    with serving(EchoHandler(), limits=ServerLimits(max_header_bytes=1024)) as server:
        reply = reply_to(("127.0.0.1", server.port), MAGIC + struct.pack("<IQ", 4096, 8), close_write=False)
        assert reply.meta["error_type"] == "MessageTooLarge" and "1024" in reply.error
        assert_serving(client(server))


def test_connection_limit_and_idle_timeout():
    limit = 4
    with CloudProcess(ECHO, timeout_s=20, limits=ServerLimits(max_connections=limit, idle_timeout_s=3.0)) as cloud:
        held = [socket.create_connection(cloud.address, timeout=5) for _ in range(limit - 1)]  # + the client's own
        try:
            extra = [reply_to(cloud.address, b"", close_write=False, wait_s=5) for _ in range(6)]
            assert all(r is not None and r.meta["error_type"] == "TooManyConnections" for r in extra)
            server_conns = [c for c in psutil.Process(cloud.pid).net_connections("tcp")
                            if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == cloud.port]
            print(f"\nconnections held at the limit: {len(server_conns)} (max_connections={limit}), "
                  f"{len(extra)} more refused")
            assert len(server_conns) == limit
            time.sleep(3.5)  # idle connections are closed ...
            assert all(s.recv(1) == b"" for s in held)
        finally:
            for s in held:
                s.close()
        assert_serving(cloud)  # ... and the client reconnects by itself


def test_running_out_of_file_descriptors_does_not_kill_the_server(tmp_path):
    """With RLIMIT_NOFILE low, accept() fails (EMFILE); the server logs it, survives, and serves once fds free up."""
    script = ("import resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64)); "
              "from transport.serve import main; sys.exit(main(sys.argv[1:]))")
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-c", script, "--factory", ECHO, "--limits",
                             json.dumps({"max_connections": 1000})], stdout=subprocess.PIPE, stderr=log,
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    socks = []
    try:
        ready = json.loads(proc.stdout.readline())
        for _ in range(100):
            try:
                socks.append(socket.create_connection(("127.0.0.1", ready["port"]), timeout=1))
            except OSError:
                break
        time.sleep(0.5)
        assert proc.poll() is None, "the server died when it ran out of file descriptors"
        for s in socks:
            s.close()
        time.sleep(0.5)
        with RemoteCloud(f"127.0.0.1:{ready['port']}", timeout_s=10) as cloud:
            assert_serving(cloud)
        assert b"accept() failed" in (tmp_path / "serve.log").read_bytes()
    finally:
        for s in socks:
            s.close()
        proc.terminate()
        proc.wait(10)


# ---------------------------------------------------------------- replies, methods, input
class _ModelHandler(EchoHandler):
    remote_methods = ("echo", "fail")

    def __init__(self) -> None:
        super().__init__()
        self.model = torch.nn.Linear(2, 2)  # callable, but not remotely


def test_only_remote_methods_are_callable_and_errors_carry_no_traceback_or_path():
    with serving(_ModelHandler()) as server:
        cloud = client(server)
        with pytest.raises(CloudError, match="unknown method 'model'") as info:
            cloud.call("model")
        assert info.value.error_type == "UnknownMethod"
        with pytest.raises(CloudError) as info:
            cloud.call("fail", None, {"message": "cannot open /srv/secret/weights.bin"})
        text = str(info.value)
        assert "Traceback" not in text and "/srv/secret" not in text and "<path>" in text and "(error " in text
        assert info.value.remote_traceback is None
        cloud.close()
    with pytest.raises(TypeError, match="remote_methods"):
        CloudServer(object())
    assert redact('File "/home/u/x.py", line 3') == 'File "<path>", line 3'
    assert "model" not in FullCloudHandler.remote_methods


def test_deeply_nested_json_header_gets_an_error_reply():
    header = b'{"kind":"echo","meta":{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}}"
    body = struct.pack("<Q", 8) + b"{}      "
    with serving(EchoHandler()) as server:
        reply = reply_to(("127.0.0.1", server.port), MAGIC + struct.pack("<IQ", len(header), len(body)) + header + body)
        assert reply is not None and reply.meta["error_type"] == "BadMessage" and "nested" in reply.error
        assert_serving(client(server))


def test_request_checks_refuse_wrong_types_nan_and_shapes():
    with pytest.raises(checks.RequestError, match="last_only must be true or false, got 'no'"):
        checks.meta_bool("last_only", "no")
    with pytest.raises(checks.RequestError, match="top_k must be an integer"):
        checks.meta_int("top_k", True, optional=True)
    with pytest.raises(checks.RequestError, match="NaN or infinite"):
        checks.finite("inputs_embeds", torch.tensor([1.0, float("inf")]))
    with pytest.raises(checks.RequestError, match="attention_mask has shape \\(1, 3\\), expected \\(1, 4\\)"):
        checks.integer("attention_mask", torch.ones(1, 3, dtype=torch.long), (1, 4))
    assert checks.meta_int("top_k", None, optional=True) is None


def test_stip_sessions_are_bound_capped_expired_and_inputs_checked():
    handler, owner = stip_handler()
    limits = ServerLimits(max_sessions_per_connection=2, session_ttl_s=1.5)
    with serving(handler, limits=limits) as server:
        alice, mallory = client(server), client(server)
        session = alice.call("open_session")[1]["session"]
        request = owner.request(torch.tensor([[1, 2, 3]]), session=session)
        tensors = {k: v for k, v in request.items() if isinstance(v, torch.Tensor)}
        meta = {k: v for k, v in request.items() if not isinstance(v, torch.Tensor)}
        with pytest.raises(CloudError, match="unknown session"):  # another's live id reads as unknown (issue 24)
            mallory.call("infer", tensors, meta)
        mallory.call("close_session", None, {"session": session})  # ignored, as for an unknown id
        alice.call("infer", tensors, meta)  # the owner still can
        with pytest.raises(CloudError, match="last_only must be true or false"):
            alice.call("infer", tensors, {**meta, "session": None, "last_only": "no"})
        bad = dict(tensors)
        bad["inputs_embeds"] = bad["inputs_embeds"].clone()
        bad["inputs_embeds"][0, 0, 0] = float("nan")
        with pytest.raises(CloudError, match="NaN"):
            alice.call("infer", bad, {**meta, "session": None})
        alice.call("open_session")
        with pytest.raises(CloudError, match="max_sessions_per_owner=2"):
            alice.call("open_session")
        mallory.call("open_session")  # the cap is per connection: others are not locked out
        time.sleep(1.7)
        with pytest.raises(CloudError, match="unknown session"):  # expired after session_ttl_s
            alice.call("infer", tensors, meta)
        mine = mallory.call("open_session")[1]["session"]
        mallory.close()  # a closed connection takes its sessions with it
        deadline = time.monotonic() + 5
        while mine in handler.server._sessions and time.monotonic() < deadline:
            time.sleep(0.02)
        assert mine not in handler.server._sessions
        alice.close()


def test_a_client_that_gives_up_does_not_hold_the_lock():
    with serving(EchoHandler()) as server:
        address = ("127.0.0.1", server.port)
        running = socket.create_connection(address, timeout=5)  # a long call, then the client leaves
        running.sendall(encode_message("sleep", None, {"seconds": 60}))
        time.sleep(0.3)
        queued = socket.create_connection(address, timeout=5)  # a call waiting for the lock, then leaves
        queued.sendall(encode_message("sleep", None, {"seconds": 60}))
        time.sleep(0.2)
        running.close()
        queued.close()
        start = time.monotonic()
        assert_serving(client(server))
        assert time.monotonic() - start < 3, "a call of a client that left still held the handler lock"


# ---------------------------------------------------------------- fuzz
def _mutations(rng: random.Random, good: bytes) -> bytes:
    kind = rng.randrange(7)
    if kind == 0:  # flip bytes anywhere
        data = bytearray(good)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data)
    if kind == 1:  # truncate
        return good[:rng.randrange(len(good))]
    if kind == 2:  # garbage
        return rng.randbytes(rng.randint(1, 512))
    if kind == 3:  # a prefix declaring random sizes, a little data
        return MAGIC + struct.pack("<IQ", rng.choice([0, 1, 20, 1 << 20, 1 << 31]),
                                   rng.choice([0, 7, 8, 1 << 30, 1 << 62])) + rng.randbytes(rng.randint(0, 64))
    if kind == 4:  # sound framing, hostile JSON header
        header = rng.choice([b"[]", b"null", b'{"kind":5}', b'{"kind":"echo","meta":[]}', b'{"kind":"__init__"}',
                             b'{"kind":"echo","meta":{"x":' + b"[" * 5000 + b"]" * 5000 + b"}}",
                             b'{"kind":"sleep","meta":{"seconds":"x"}}', b"\xff\xfe", b'{"kind":"model"}'])
        body = struct.pack("<Q", 8) + b"{}      "
        return MAGIC + struct.pack("<IQ", len(header), len(body)) + header + body
    if kind == 5:  # sound framing and header, random safetensors body
        header = b'{"kind":"echo"}'
        body = struct.pack("<Q", rng.randint(0, 200)) + rng.randbytes(rng.randint(0, 200))
        return MAGIC + struct.pack("<IQ", len(header), len(body)) + header + body
    return good + rng.randbytes(rng.randint(1, 64))  # trailing junk after a good frame


def test_fuzz_malformed_frames_server_keeps_serving_with_bounded_memory():
    rng = random.Random(9)
    good = bytes(encode_message("scale_add", {"x": torch.arange(16, dtype=torch.float32)}, {"offset": 1.0}))
    tried = refused = accepted = dropped = 0
    with CloudProcess(ECHO, timeout_s=20, limits=ServerLimits(max_connections=32, frame_timeout_s=2.0)) as cloud:
        assert_serving(cloud)
        base = peak = rss(cloud.pid)
        for i in range(300):
            reply = reply_to(cloud.address, _mutations(rng, good))
            tried += 1
            if reply is None:
                dropped += 1
            elif reply.kind == "error":
                refused += 1
                assert "Traceback" not in (reply.error or "")
            else:
                accepted += 1
            if i % 25 == 0:
                peak = max(peak, rss(cloud.pid))
                assert cloud.alive
        peak = max(peak, rss(cloud.pid))
        crashed = 0 if cloud.alive else 1
        print(f"\nfuzz: tried {tried}, refused with an error reply {refused}, closed without reply {dropped}, "
              f"accepted {accepted}, crashed {crashed}; server RSS {base / MiB:.0f} -> peak {peak / MiB:.0f} MiB")
        assert crashed == 0 and refused > tried // 2
        assert (peak - base) / MiB < 64
        assert_serving(cloud)


# ---------------------------------------------------------------- remote serving
def _serve(args: list[str], env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "transport", "serve", "--factory", ECHO, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def test_serve_refuses_a_non_loopback_address_without_tls_and_token(tmp_path):
    proc = _serve(["--host", "0.0.0.0"])
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and b"not loopback" in err and b"TLS" in err and b"token" in err
    cert, key = self_signed(tmp_path)
    proc = _serve(["--host", "0.0.0.0", "--tls-cert", str(cert), "--tls-key", str(key)])
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and b"token" in err and out == b""


def test_serve_with_tls_and_token_on_loopback(tmp_path):
    cert, key = self_signed(tmp_path)
    token = "t" * 32
    proc = _serve(["--tls-cert", str(cert), "--tls-key", str(key)], env={"STIP_CLOUD_TOKEN": token})
    try:
        ready = json.loads(proc.stdout.readline())
        assert ready["tls"] and ready["token"]
        address = f"127.0.0.1:{ready['port']}"
        with RemoteCloud(address, token=token, ca_file=cert, timeout_s=10) as cloud:
            assert_serving(cloud)
            x = torch.randn(3, 5)
            assert torch.equal(cloud.call("echo", {"x": x})[0]["x"], x)
            assert cloud.meter.snapshot()["bytes_up"] > x.numel() * 4
        with pytest.raises(CloudError, match="requires a token") as info:
            RemoteCloud(address, token="wrong" * 8, ca_file=cert, timeout_s=10).start()
        assert info.value.error_type == "Unauthorized"
        with pytest.raises(CloudError):  # TLS but no token: the first real call is refused
            with RemoteCloud(address, ca_file=cert, timeout_s=10) as cloud:
                cloud.call("echo")
        with pytest.raises((CloudError, OSError)):  # no TLS at all: the handshake fails
            with RemoteCloud(address, token=token, timeout_s=5) as cloud:
                cloud.call("echo")
    finally:
        proc.terminate()
        proc.wait(10)


# ---------------------------------------------------------------- MPC parties never outlive the runner
RUNNER = """
import os, sys, time
from baselines.mpc.launcher import run_parties

def party(rank, crypten, folder):
    with open(os.path.join(folder, f"party{rank}.pid"), "w") as f:
        f.write(f"{os.getpid()} {os.environ['GLOO_SOCKET_IFNAME']} {os.environ['RENDEZVOUS']}")
    time.sleep(300)

run_parties(party, sys.argv[1], timeout_s=120)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_mpc_parties_die_with_a_killed_runner(tmp_path, sig):
    rdv_root = tmp_path / "tmp"
    rdv_root.mkdir()
    runner = subprocess.Popen([sys.executable, "-c", RUNNER, str(tmp_path)], cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(rdv_root)})
    try:
        deadline = time.monotonic() + 90
        while len(list(tmp_path.glob("party*.pid"))) < 2:
            assert runner.poll() is None and time.monotonic() < deadline, "parties did not start"
            time.sleep(0.1)
        time.sleep(0.2)
        info = [p.read_text().split() for p in sorted(tmp_path.glob("party*.pid"))]
        pids = [int(i[0]) for i in info]
        assert all(i[1] == loopback_interface() for i in info)  # gloo bound to loopback
        assert list(rdv_root.glob("mpc-rdv-*"))
        runner.send_signal(sig)
        runner.wait(20)
        orphans = [pid for pid in pids if not gone(pid, 10)]
        print(f"\norphans after {sig.name}: {len(orphans)}")
        assert orphans == []
        deadline = time.monotonic() + 5
        while list(rdv_root.glob("mpc-rdv-*")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list(rdv_root.glob("mpc-rdv-*")) == []
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()
