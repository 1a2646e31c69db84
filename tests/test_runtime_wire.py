"""Wire format, link emulation and meter, in-process (no cloud process needed)."""
from __future__ import annotations

import json
import socket
import struct
import time

import pytest
import torch
from safetensors.torch import load, save

from transport.framing import ConnectionClosed, TruncatedFrame, recv_frame
from transport.link import EmulatedLink, NetworkProfile, profile_from_dict, profile_to_dict, sleep_until
from transport.meter import TrafficMeter
from transport.wire import (
    FRAME_PREFIX_BYTES,
    MAGIC,
    MAX_HEADER_BYTES,
    SAFETENSORS_LEN_BYTES,
    MessageTooLarge,
    WireError,
    decode_message,
    encode_message,
    expected_payload_bytes,
    frame_overhead_bytes,
)

pytestmark = pytest.mark.timeout(60)


def bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bytes of a tensor, so NaN, -0.0 and bf16 compare bit for bit."""
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def sample_tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    f32 = torch.randn(3, 5, generator=g)
    f32[0, 0], f32[0, 1], f32[0, 2] = float("nan"), -0.0, float("inf")
    return {
        "f32": f32,
        "f16": torch.randn(4, 7, generator=g).half(),
        "bf16": torch.randn(2, 3, 8, generator=g).bfloat16(),
        "i64": torch.randint(-2**62, 2**62, (11,), generator=g),
        "bool": torch.rand(6, generator=g) > 0.5,
        "scalar": torch.tensor(3.25, dtype=torch.float64),
        "empty": torch.zeros(0, 4),
        "strided": torch.arange(24, dtype=torch.int32).reshape(4, 6).t(),  # not contiguous
    }


def test_round_trip_is_bit_exact_for_every_dtype():
    tensors = sample_tensors()
    msg = decode_message(encode_message("infer", tensors, {"session": None, "k": [1, 2]}))
    assert msg.kind == "infer" and msg.meta == {"session": None, "k": [1, 2]} and msg.error is None
    assert set(msg.tensors) == set(tensors)
    for name, t in tensors.items():
        got = msg.tensors[name]
        assert got.dtype == t.dtype and got.shape == t.shape, name
        assert torch.equal(bits(got), bits(t)), name


def test_layout_and_exact_overhead():
    """Frame = 16 B prefix + H B JSON + 8 B safetensors length + S B safetensors JSON + payload."""
    x = torch.zeros(25_000, dtype=torch.float32)
    frame = encode_message("echo", {"x": x}, {})
    magic, header_len, body_len = struct.unpack("<4sIQ", frame[:16])
    header = b'{"kind":"echo","meta":{},"error":null}'
    st_json = b'{"x":{"dtype":"F32","shape":[25000],"data_offsets":[0,100000]}}'
    st_len = -(-len(st_json) // 8) * 8  # safetensors pads its JSON to a multiple of 8
    assert magic == MAGIC == b"STW1"
    assert frame[16:16 + header_len] == header and header_len == len(header) == 38
    (s,) = struct.unpack("<Q", frame[16 + header_len:24 + header_len])
    assert s == st_len == 64
    assert body_len == SAFETENSORS_LEN_BYTES + s + 100_000
    assert len(frame) == FRAME_PREFIX_BYTES + header_len + body_len
    # overhead = 24 + H + S = 24 + 38 + 64 = 126 bytes on top of the 100,000 payload bytes
    assert len(frame) - expected_payload_bytes({"x": x}) == frame_overhead_bytes(header_len, s) == 126
    msg = decode_message(frame)
    assert (msg.header_bytes, msg.tensor_header_bytes, msg.payload_bytes) == (38, 64, 100_000)
    assert msg.overhead_bytes == 126 and msg.frame_bytes == len(frame)


def test_empty_message_is_still_a_valid_frame():
    msg = decode_message(encode_message("ping"))
    assert msg.tensors == {} and msg.meta == {} and msg.payload_bytes == 0
    assert msg.overhead_bytes == 24 + msg.header_bytes + 8  # safetensors "{}" padded to 8 bytes


def test_expected_payload_bytes_from_shapes_only():
    on_meta_device = {"a": torch.empty(2, 128, 768, device="meta"),
                      "b": torch.empty(5, dtype=torch.bfloat16, device="meta"),
                      "c": torch.empty(3, 3, dtype=torch.int64, device="meta")}
    assert expected_payload_bytes(on_meta_device) == 2 * 128 * 768 * 4 + 5 * 2 + 9 * 8


def _frame(header: bytes, body: bytes, magic: bytes = MAGIC) -> bytes:
    return struct.pack("<4sIQ", magic, len(header), len(body)) + header + body


@pytest.mark.parametrize("frame, match", [
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "bad magic"),
    (encode_message("echo", {"x": torch.ones(4)})[:-3], "truncated"),
    (encode_message("echo") + b"xx", "trailing"),
    (b"STW1" + struct.pack("<IQ", 0, 8), "header length is 0"),
    (_frame(b"{not json", b"\x02" + b"\0" * 7 + b"{}"), "not valid UTF-8 JSON"),
    (_frame(b"[1, 2]", b"\x02" + b"\0" * 7 + b"{}"), "must be an object"),
    (_frame(b'{"meta": {}}', b"\x02" + b"\0" * 7 + b"{}"), "'kind'"),
    (_frame(b'{"kind": "x", "meta": 3}', b"\x02" + b"\0" * 7 + b"{}"), "'meta'"),
    (_frame(b'{"kind": "x"}', struct.pack("<Q", 10**6) + b"{}"), "exceeds"),
    (_frame(b'{"kind": "x"}', struct.pack("<Q", 6) + b"garbag"), "not a valid safetensors"),
])
def test_decode_refuses_malformed_frames(frame, match):
    with pytest.raises(WireError, match=match):
        decode_message(frame)


def test_decode_refuses_oversized_declared_lengths_from_the_prefix():
    with pytest.raises(MessageTooLarge, match="exceeds the 1000 B limit"):
        decode_message(b"STW1" + struct.pack("<IQ", 10, 2**40), max_bytes=1000)
    with pytest.raises(MessageTooLarge, match="JSON header length"):
        decode_message(b"STW1" + struct.pack("<IQ", MAX_HEADER_BYTES + 1, 8))


def test_encode_refuses_bad_inputs_naming_them():
    with pytest.raises(WireError, match="'n' is a int"):
        encode_message("m", {"n": 3})
    with pytest.raises(WireError, match="names must be str"):
        encode_message("m", {1: torch.ones(1)})
    with pytest.raises(WireError, match=r"keys \['t'\]"):
        encode_message("m", None, {"t": torch.ones(1), "ok": 1})
    with pytest.raises(MessageTooLarge, match="over the 1000 B limit"):
        encode_message("m", {"x": torch.ones(1000)}, max_bytes=1000)
    with pytest.raises(WireError, match="kind"):
        encode_message("", None)


def test_recv_frame_over_a_socket_counts_every_byte():
    a, b = socket.socketpair()
    frame = encode_message("echo", {"x": torch.arange(10)}, {"a": 1})
    counted = []
    with a, b:
        a.sendall(frame + frame[:5])
        a.shutdown(socket.SHUT_WR)
        header, body = recv_frame(b, on_bytes=counted.append)
        assert json.loads(header)["meta"] == {"a": 1}
        assert sum(counted) == len(frame)
        with pytest.raises(TruncatedFrame, match="after 5 B"):
            recv_frame(b)
    c, d = socket.socketpair()
    with c, d:
        c.close()
        with pytest.raises(ConnectionClosed):
            recv_frame(d)


def test_link_models_half_rtt_plus_serialisation():
    profile = NetworkProfile("test", bandwidth_bps=10e6, rtt_s=0.02)
    link = EmulatedLink(profile)
    assert link.emulated
    assert link.one_way_time(100_000) == pytest.approx(0.01 + 0.08)
    assert not EmulatedLink(None).emulated and EmulatedLink(None).one_way_time(10**9) == 0.0
    assert profile_from_dict(profile_to_dict(profile)) == profile
    with pytest.raises(ValueError, match=r"rtt_s=-1.0 \(network 'bad'\) must be a finite number of seconds >= 0"):
        EmulatedLink(NetworkProfile("bad", None, -1.0))
    with pytest.raises(ValueError, match=r"bandwidth_bps=0.0 \(network 'bad'\) must be a positive number"):
        EmulatedLink(NetworkProfile("bad", 0.0, 0.01))


def test_link_send_waits_without_burning_cpu():
    link = EmulatedLink(NetworkProfile("slow", bandwidth_bps=8e6, rtt_s=0.1))  # 0.05 s + 1 ms for 1 kB
    a, b = socket.socketpair()
    with a, b:
        cpu0, wall0 = time.process_time(), time.perf_counter()
        sent = link.send(a, b"\0" * 1000)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    assert sent.modelled_s == pytest.approx(0.05 + 8 * 1000 / 8e6)
    assert sent.measured_s >= sent.modelled_s and wall >= sent.modelled_s
    assert cpu < 0.5 * wall  # sleeping, not spinning
    t0 = time.perf_counter()
    sleep_until(t0 + 0.01)
    assert time.perf_counter() >= t0 + 0.01


def test_meter_keeps_counts_modelled_and_measured_apart():
    meter = TrafficMeter()
    before = meter.snapshot()
    meter.add_bytes("up", 100)
    meter.add_message("up", link_time=0.5, measured=0.25)
    meter.add_bytes("down", 7)
    snap = meter.snapshot()
    assert {"bytes_up", "bytes_down", "messages_up", "messages_down", "link_time_up", "link_time_down",
            "measured_up", "measured_down"} <= set(snap)
    assert TrafficMeter.delta(before, snap)["bytes_up"] == 100
    assert (snap["messages_up"], snap["messages_down"], snap["bytes_down"]) == (1, 0, 7)
    assert (snap["link_time_up"], snap["measured_up"]) == (0.5, 0.25)
    with pytest.raises(ValueError, match="'sideways'"):
        meter.add_bytes("sideways", 1)
    meter.reset()
    assert meter.snapshot()["bytes_up"] == 0


def test_body_is_standard_safetensors_both_ways():
    """Bodies written here load with the safetensors library, and its output decodes here."""
    tensors = sample_tensors()
    frame = encode_message("m", tensors)
    header_len = struct.unpack("<I", frame[4:8])[0]
    loaded = load(bytes(frame[FRAME_PREFIX_BYTES + header_len:]))
    assert all(torch.equal(bits(loaded[k]), bits(t)) for k, t in tensors.items())
    contiguous = {k: t.contiguous() for k, t in tensors.items()}
    header = b'{"kind":"m","meta":{},"error":null}'
    msg = decode_message(_frame(header, save(contiguous)))
    assert all(torch.equal(bits(msg.tensors[k]), bits(t)) for k, t in tensors.items())


def test_decoded_tensors_are_aligned_and_writable():
    tensors = {"b": torch.ones(3, dtype=torch.bool), "d": torch.arange(5, dtype=torch.float64),
               "h": torch.ones(7, dtype=torch.float16)}
    msg = decode_message(encode_message("m", tensors))
    for name, t in msg.tensors.items():
        assert t.data_ptr() % t.element_size() == 0, name
        t.add_(1) if t.dtype != torch.bool else t.logical_not_()  # writable, no warning
    assert set(msg.tensors) == {"b", "d", "h"}


@pytest.mark.parametrize("entries, match", [
    ({"x": {"dtype": "Q99", "shape": [1], "data_offsets": [0, 8]}}, "not a valid safetensors payload"),
    ({"x": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, "not a valid safetensors payload"),
    ({"x": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, "not a valid safetensors payload"),
    ({"x": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}, "y": {"dtype": "F32", "shape": [1],
      "data_offsets": [4, 8]}}, "not a valid safetensors payload"),
    ({"x": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}}, "not a valid safetensors payload"),
])
def test_decode_refuses_inconsistent_safetensors_headers(entries, match):
    """The safetensors library validates dtypes, shapes and offsets; its errors become WireError."""
    st_json = json.dumps(entries).encode()
    body = struct.pack("<Q", len(st_json)) + st_json + b"\0" * 8
    with pytest.raises(WireError, match=match):
        decode_message(_frame(b'{"kind":"m"}', body))


def test_encode_refuses_dtypes_safetensors_cannot_carry():
    with pytest.raises(WireError, match="complex64"):
        encode_message("m", {"z": torch.zeros(2, dtype=torch.complex64)})
