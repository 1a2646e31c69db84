"""The device-cloud runtime end to end: a real cloud process over loopback TCP.

One module-scoped cloud (emulated 20 ms / 10 Mbit/s link) serves most tests; two more processes
cover a failing factory and a cloud killed mid-call.
"""
from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch

from transport import CloudError, CloudProcess, CloudTimeout, CloudUnavailable
from transport.framing import ConnectionClosed, recv_frame
from transport.link import NetworkProfile
from transport.wire import MAGIC, decode_body, encode_message, expected_payload_bytes, frame_overhead_bytes

pytestmark = pytest.mark.timeout(60)

ECHO = "transport.testing:make_echo_handler"
PROFILE = NetworkProfile("test_20ms_10mbit", bandwidth_bps=10e6, rtt_s=0.020, source="test")
MARGIN_S = 5.0  # slack for process teardown in "returns within the timeout" checks


@pytest.fixture(scope="module")
def cloud():
    with CloudProcess(ECHO, {"scale": 2.0}, network=PROFILE, timeout_s=20) as proc:
        yield proc


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def gone(pid: int, wait_s: float = 5.0) -> bool:
    """The process died (signals land asynchronously, so allow it `wait_s`); a zombie that an
    init which does not reap is left holding counts as dead."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def assert_serving(cloud: CloudProcess) -> None:
    x = torch.arange(6, dtype=torch.float32)
    tensors, meta = cloud.call("scale_add", {"x": x}, {"offset": 1.0})
    assert torch.equal(tensors["x"], x * 2 + 1) and meta == {"n": 1}


def test_round_trip_bit_exact_across_dtypes(cloud):
    g = torch.Generator().manual_seed(1)
    sent = {
        "f32": torch.randn(4, 16, generator=g),
        "f16": torch.randn(3, 5, generator=g).half(),
        "bf16": torch.randn(2, 8, 4, generator=g).bfloat16(),
        "i64": torch.randint(-2**62, 2**62, (2, 9), generator=g),
    }
    sent["f32"][0, :3] = torch.tensor([float("nan"), -0.0, float("-inf")])
    tensors, meta = cloud.call("echo", sent, {"session": None, "tag": "α"})
    assert meta == {"session": None, "tag": "α"}
    for name, t in sent.items():
        assert tensors[name].dtype == t.dtype and tensors[name].shape == t.shape
        assert torch.equal(bits(tensors[name]), bits(t)), name


def test_socket_bytes_equal_expected_payload_plus_framing(cloud):
    """bytes at the socket = payload from shapes + 24 + H + S per message (see transport.wire)."""
    tensors = {"hidden": torch.randn(1, 32, 64), "mask": torch.ones(1, 32, dtype=torch.int64)}
    meta = {"session": None}
    frame = encode_message("echo", tensors, meta)
    (header_len,) = struct.unpack("<I", frame[4:8])
    (st_header_len,) = struct.unpack("<Q", frame[16 + header_len:24 + header_len])
    before = cloud.meter.snapshot()
    cloud.call("echo", tensors, meta)
    traffic = cloud.meter.delta(before, cloud.meter.snapshot())
    assert traffic["messages_up"] == 1 and traffic["messages_down"] == 1
    assert traffic["bytes_up"] == expected_payload_bytes(tensors) + 24 + header_len + st_header_len
    assert traffic["bytes_up"] == len(frame) == cloud.last_call.bytes_up
    assert cloud.last_call.request_overhead_bytes == frame_overhead_bytes(header_len, st_header_len)
    reply = cloud.last_call.reply
    assert traffic["bytes_down"] == (expected_payload_bytes(reply.tensors) + 24 + reply.header_bytes
                                     + reply.tensor_header_bytes)
    assert expected_payload_bytes(reply.tensors) == expected_payload_bytes(tensors)


def test_emulated_link_delays_each_direction(cloud):
    x = torch.zeros(25_000, dtype=torch.float32)  # 100 kB
    before = cloud.meter.snapshot()
    _, meta = cloud.call("zeros", {"x": x}, {"n_bytes": 50_000})
    traffic = cloud.meter.delta(before, cloud.meter.snapshot())
    timing = cloud.last_timing
    assert set(timing) == {"uplink", "cloud_compute", "downlink"}
    up_model = PROFILE.rtt_s / 2 + 8 * traffic["bytes_up"] / PROFILE.bandwidth_bps
    down_model = PROFILE.rtt_s / 2 + 8 * traffic["bytes_down"] / PROFILE.bandwidth_bps
    assert timing["uplink"] >= PROFILE.rtt_s / 2 + 0.080  # 100 kB at 10 Mbit/s = 80 ms
    assert timing["uplink"] >= up_model, cloud.last_call
    # uplink ends when send() returns, which the scheduler may delay past the server's start of
    # work; so only the sum of both directions is causally bounded by the two modelled delays
    assert timing["uplink"] + timing["downlink"] >= up_model + down_model, cloud.last_call
    assert timing["cloud_compute"] >= 0
    # modelled and measured link time are kept apart
    assert traffic["link_time_up"] == pytest.approx(up_model)
    assert traffic["link_time_down"] == pytest.approx(down_model)
    assert traffic["measured_up"] >= traffic["link_time_up"]


def _raw_exchange(cloud: CloudProcess, data: bytes, *, close_write: bool = True):
    """Send raw bytes on a fresh connection; return the decoded reply, or None if dropped."""
    with socket.create_connection(cloud.address, timeout=10) as sock:
        sock.sendall(data)
        if close_write:
            sock.shutdown(socket.SHUT_WR)
        try:
            reply = decode_body(*recv_frame(sock, deadline=time.monotonic() + 10))
        except ConnectionClosed:
            return None
        with pytest.raises(ConnectionClosed):  # an untrustworthy stream is closed after the reply
            recv_frame(sock, deadline=time.monotonic() + 10)
        return reply


def test_malformed_bytes_get_an_error_reply_and_server_keeps_serving(cloud):
    reply = _raw_exchange(cloud, b"GET / HTTP/1.1\r\nHost: cloud\r\n\r\n")
    assert reply.kind == "error" and "bad magic" in reply.error
    assert reply.meta["error_type"] == "BadMessage"
    assert_serving(cloud)


def test_truncated_frame_is_dropped_and_server_keeps_serving(cloud):
    frame = encode_message("echo", {"x": torch.ones(1000)})
    assert _raw_exchange(cloud, frame[: len(frame) // 2]) is None  # client closed mid-frame
    assert _raw_exchange(cloud, b"STW") is None  # closed mid-prefix
    assert_serving(cloud)


def test_oversized_declared_length_is_refused_and_server_keeps_serving(cloud):
    reply = _raw_exchange(cloud, MAGIC + struct.pack("<IQ", 20, 2**40), close_write=False)
    assert reply.kind == "error" and reply.meta["error_type"] == "MessageTooLarge"
    assert str(2**40 + 36) in reply.error and "limit" in reply.error
    reply = _raw_exchange(cloud, MAGIC + struct.pack("<IQ", 2**31, 8), close_write=False)
    assert reply.meta["error_type"] == "MessageTooLarge" and "JSON header length" in reply.error
    assert_serving(cloud)


def test_bad_header_or_body_with_sound_framing_keeps_the_connection(cloud):
    bad_json = b"{oops"
    body = struct.pack("<Q", 8) + b"{}      "
    good = encode_message("scale_add", {"x": torch.ones(2)}, {"offset": 0.5})
    with socket.create_connection(cloud.address, timeout=10) as sock:
        sock.sendall(MAGIC + struct.pack("<IQ", len(bad_json), len(body)) + bad_json + body)
        reply = decode_body(*recv_frame(sock, deadline=time.monotonic() + 10))
        assert reply.meta["error_type"] == "BadMessage" and "JSON" in reply.error
        sock.sendall(good)  # same connection, next request
        reply = decode_body(*recv_frame(sock, deadline=time.monotonic() + 10))
        assert reply.kind == "result" and torch.equal(reply.tensors["x"], torch.full((2,), 2.5))


@pytest.mark.parametrize("method", ["no_such_method", "_lookup", "__init__", "children"])
def test_unknown_method_is_refused_and_server_keeps_serving(cloud, method):
    with pytest.raises(CloudError, match="not callable remotely|unknown method") as info:
        cloud.call(method)
    assert info.value.error_type == "UnknownMethod" and not isinstance(info.value, CloudUnavailable)
    assert_serving(cloud)


def test_handler_exception_is_reported_and_server_keeps_serving(cloud):
    with pytest.raises(CloudError, match="RuntimeError: disk on fire") as info:
        cloud.call("fail", None, {"message": "disk on fire"})
    assert info.value.error_type == "HandlerError"
    assert info.value.remote_traceback is None  # the traceback stays in the server's log
    assert "Traceback" in cloud._log_tail() and "error " in str(info.value)
    with pytest.raises(CloudError, match="expected \\(dict\\[str, Tensor\\], dict\\)"):
        cloud.call("bad_result")
    with pytest.raises(CloudError, match="unexpected keyword argument 'bogus'"):
        cloud.call("sleep", None, {"bogus": 1})
    assert_serving(cloud)


def test_oversized_request_is_refused_before_sending():
    unstarted = CloudProcess(ECHO, max_message_bytes=1000)  # encoding is checked before the process
    with pytest.raises(ValueError, match="over the 1000 B limit"):
        unstarted.call("echo", {"x": torch.ones(1000)})
    assert unstarted.meter.snapshot()["bytes_up"] == 0
    with pytest.raises(CloudUnavailable, match="not running"):
        unstarted.call("echo")


def test_bad_factory_arguments_fail_fast():
    with pytest.raises(ValueError, match="'pkg.module:function'"):
        CloudProcess("transport.testing.make_echo_handler")
    with pytest.raises(ValueError, match="JSON-able"):
        CloudProcess(ECHO, {"t": torch.ones(1)})


def test_failing_factory_raises_with_its_error_and_leaves_no_process():
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with pytest.raises(CloudUnavailable, match="FileNotFoundError: no weights here") as info:
        with CloudProcess("transport.testing:make_broken_handler", {"message": "no weights here"},
                          timeout_s=30):
            pass
    assert "make_broken_handler" in info.value.remote_traceback
    left = {p.pid for p in psutil.Process().children(recursive=True)} - before
    assert all(gone(pid) for pid in left)


def test_killed_cloud_raises_unavailable_within_timeout_and_cleans_up():
    timeout_s = 10.0
    with pytest.raises(CloudUnavailable, match="exited with code -9"):  # leaves `with` by exception
        with CloudProcess(ECHO, timeout_s=timeout_s) as cloud:
            leader = cloud.pid
            grandchild = cloud.call("spawn_child")[1]["pid"]
            assert psutil.Process(grandchild).ppid() == leader

            start = time.monotonic()
            with pytest.raises(CloudTimeout, match="did not answer 'sleep' within 0.5 s"):
                cloud.call("sleep", None, {"seconds": 3.0}, timeout_s=0.5)
            assert time.monotonic() - start < 0.5 + MARGIN_S

            killer = threading.Timer(0.5, os.kill, (leader, signal.SIGKILL))
            killer.start()
            start = time.monotonic()
            with pytest.raises(CloudUnavailable, match="exited with code -9 during 'sleep'"):
                cloud.call("sleep", None, {"seconds": 60.0})
            assert time.monotonic() - start < timeout_s + MARGIN_S
            killer.join()
            assert not cloud.alive
            cloud.call("echo")  # still a clear error, never a hang
    assert gone(leader) and gone(grandchild)


def test_cloud_exits_when_its_parent_dies_without_closing(tmp_path):
    """The child watches its stdin: a device that crashes (no __exit__) leaves no cloud behind."""
    log_path = str(tmp_path / "cloud.log")
    script = ("import os, sys\n"
              "from transport import CloudProcess\n"
              f"cloud = CloudProcess({ECHO!r}, timeout_s=30, log_path={log_path!r}).start()\n"
              "print(cloud.pid, flush=True)\n"
              "os._exit(0)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parents[1]),
                                                                     os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=50, env=env,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert gone(int(out.stdout.split()[0]), wait_s=10)
