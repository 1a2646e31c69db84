"""Issue 21, "a transport that copies once": the same bytes at the socket, with the tensors' own memory sent
(scatter-gather) and the received buffer viewed, not copied.

The reference for "the same bytes" is the old encoder, kept here: prefix + JSON header + `safetensors.torch.save`.
"""
from __future__ import annotations

import json
import socket
import struct
import threading
import tracemalloc

import pytest
import torch
from safetensors.torch import save as safetensors_save

from transport.framing import ReceiveBuffers, recv_frame, send_bytes
from transport.link import EmulatedLink
from transport.meter import TrafficMeter
from transport.wire import MAGIC, Frame, WireError, decode_body, decode_message, encode_frame, encode_header

pytestmark = pytest.mark.timeout(60)


def old_encoder(kind: str, tensors: dict[str, torch.Tensor], meta: dict) -> bytes:
    """The encoder before issue 21 (safetensors library body), as the byte-for-byte reference."""
    header = encode_header(kind, meta)
    body = safetensors_save({k: v.detach().contiguous() for k, v in tensors.items()})
    return struct.pack("<4sIQ", MAGIC, len(header), len(body)) + header + body


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def cases() -> dict[str, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(3)
    every_dtype = {f"t_{str(d).split('.')[-1]}": torch.randint(0, 7, (2, 3), generator=g, dtype=torch.uint8).to(d)
                   for d in (torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32,
                             torch.int16, torch.int8, torch.uint8, torch.bool, torch.uint16, torch.uint32,
                             torch.uint64, torch.float8_e4m3fn, torch.float8_e5m2)}
    return {
        "none": {},
        "every_dtype": every_dtype,
        "bf16_logits": {"logits": torch.randn(2, 5, 97, generator=g).bfloat16()},
        "zero_dim": {"s": torch.tensor(2.5), "i": torch.tensor(7)},
        "empty": {"e": torch.zeros(0, 4), "f": torch.zeros(3, 0, dtype=torch.bfloat16), "x": torch.ones(1)},
        "non_contiguous": {"t": torch.arange(24, dtype=torch.int32).reshape(4, 6).t(),
                           "s": torch.randn(8, 8, generator=g)[::2, 1::3]},
        "odd_sizes_mixed": {"b": torch.ones(3, dtype=torch.bool), "d": torch.arange(5, dtype=torch.float64),
                            "h": torch.ones(7, dtype=torch.float16), "z": torch.arange(3, dtype=torch.int8),
                            "ä \"quoted\"\n": torch.ones(1)},
        "gpt2_logits_like": {"logits": torch.randn(1, 16, 50257, generator=g)},
    }


@pytest.mark.parametrize("name", list(cases()))
def test_frame_is_byte_for_byte_the_old_encoders(name):
    tensors = cases()[name]
    meta = {"session": None, "k": [1, 2]}
    frame = encode_frame("infer", tensors, meta)
    old = old_encoder("infer", tensors, meta)
    assert len(frame) == len(old)
    assert bytes(frame.to_bytearray()) == old
    msg = decode_message(frame.to_bytearray())
    assert set(msg.tensors) == set(tensors)
    for key, t in tensors.items():
        assert msg.tensors[key].dtype == t.dtype and msg.tensors[key].shape == t.shape, key
        assert torch.equal(bits(msg.tensors[key]), bits(t)), key


def test_frame_parts_are_the_tensors_own_memory():
    """No copy of a contiguous tensor at encoding: a frame part starts at the tensor's data pointer."""
    x = torch.randn(1000)
    y = torch.randn(50).bfloat16()
    frame = encode_frame("m", {"x": x, "y": y})
    assert isinstance(frame, Frame)
    pointers = {torch.frombuffer(part, dtype=torch.uint8).data_ptr() for part in frame.parts[1:]}
    assert pointers == {x.data_ptr(), y.data_ptr()}


def _over_socketpair(frame: Frame) -> tuple[bytes, object, list[int]]:
    a, b = socket.socketpair()
    counted: list[int] = []
    with a, b:
        sender = threading.Thread(target=send_bytes, args=(a, frame), kwargs={"on_bytes": counted.append})
        sender.start()
        header, body = recv_frame(b)
        sender.join()
    return header, body, counted


def test_scatter_gather_send_and_view_decode_round_trip():
    tensors = {**cases()["every_dtype"], **cases()["non_contiguous"], "big": torch.randn(3, 700_000)}
    frame = encode_frame("echo", tensors, {"a": 1})
    header, body, counted = _over_socketpair(frame)
    assert sum(counted) == len(frame) == len(old_encoder("echo", tensors, {"a": 1}))
    msg = decode_body(header, body)
    assert msg.meta == {"a": 1} and msg.frame_bytes == len(frame)
    base = torch.frombuffer(body, dtype=torch.uint8)
    lo, hi = base.data_ptr(), base.data_ptr() + len(body)
    for key, t in tensors.items():
        got = msg.tensors[key]
        assert torch.equal(bits(got), bits(t)), key
        assert lo <= got.data_ptr() < hi, f"{key} is a copy, not a view of the received buffer"
        assert got.data_ptr() % got.element_size() == 0, key


def _receive(frame: Frame, buffers: ReceiveBuffers) -> tuple[bytes, memoryview]:
    a, b = socket.socketpair()
    with a, b:
        sender = threading.Thread(target=send_bytes, args=(a, frame))
        sender.start()
        received = recv_frame(b, buffers=buffers)
        sender.join()
    return received


def _start(view: memoryview) -> int:
    return torch.frombuffer(view, dtype=torch.uint8).data_ptr()


def test_a_warm_receive_buffer_is_reused_only_once_nothing_views_it():
    """ReceiveBuffers: a body lands in an earlier frame's buffer only when no decoded tensor or view of that one is
    left (a buffer still viewed would overwrite tensors the caller holds); two buffers, then the oldest idle one."""
    buffers = ReceiveBuffers(keep=2, min_bytes=1 << 20)
    xs = [torch.full((600_000,), float(i)) for i in range(4)]  # 2.4 MB each
    first = decode_body(*_receive(encode_frame("m", {"x": xs[0]}), buffers)).tensors["x"]
    second = decode_body(*_receive(encode_frame("m", {"x": xs[1]}), buffers)).tensors["x"]
    assert first.data_ptr() != second.data_ptr(), "a viewed buffer was reused"
    third = decode_body(*_receive(encode_frame("m", {"x": xs[2]}), buffers)).tensors["x"]
    assert len({first.data_ptr(), second.data_ptr(), third.data_ptr()}) == 3
    assert torch.equal(first, xs[0]) and torch.equal(second, xs[1]) and torch.equal(third, xs[2])
    assert len(buffers._arrays) == 2, "holds at most `keep` buffers"
    kept = third.data_ptr()  # the pool holds the second and the third buffer
    del first, third
    header, body = _receive(encode_frame("m", {"x": xs[3]}), buffers)
    assert _start(body) <= kept < _start(body) + len(body), "an idle warm buffer was not reused"
    assert torch.equal(decode_body(header, body).tensors["x"], xs[3]) and torch.equal(second, xs[1])
    del body
    while_held = _receive(encode_frame("m", {"x": xs[0]}), buffers)[1]  # the second is still viewed: not it
    assert not _start(while_held) <= second.data_ptr() < _start(while_held) + len(while_held)


def test_small_and_oversized_bodies_are_not_pooled():
    buffers = ReceiveBuffers(keep=2, min_bytes=1 << 20, max_bytes=4 << 20)
    for n in (1000, 2_000_000):  # 4 KB (malloc serves it warm anyway) and 8 MB (over max_bytes)
        _receive(encode_frame("m", {"x": torch.zeros(n)}), buffers)
    assert buffers._arrays == []
    with pytest.raises(ValueError, match="keep=0"):
        ReceiveBuffers(keep=0)


def test_receive_allocates_the_body_once_not_a_growing_heap_buffer():
    """The old receiver grew a bytearray by doubling (peak 1.5x the body on the Python heap)."""
    x = torch.randn(2_000_000)  # 8 MB
    frame = encode_frame("m", {"x": x})
    a, b = socket.socketpair()
    with a, b:
        sender = threading.Thread(target=send_bytes, args=(a, frame))
        sender.start()
        tracemalloc.start()
        try:
            _, body = recv_frame(b)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        sender.join()
    assert len(body) == len(frame) - 16 - struct.unpack("<I", bytes(frame.parts[0][4:8]))[0]
    assert peak < 0.1 * len(body), f"receiving an {len(body)} B body took {peak} B of Python heap"


def test_emulated_link_and_meter_count_the_same_bytes_as_the_old_frame():
    tensors = cases()["odd_sizes_mixed"]
    frame = encode_frame("m", tensors)
    meter = TrafficMeter()
    a, b = socket.socketpair()
    with a, b:
        sent = EmulatedLink(None).send(a, frame, on_bytes=lambda n: meter.add_bytes("up", n))
        header, body = recv_frame(b)
    old = len(old_encoder("m", tensors, {}))
    assert sent.n_bytes == meter.snapshot()["bytes_up"] == old
    assert 16 + len(header) + len(body) == old


def test_decode_copies_a_misaligned_tensor_once_and_keeps_it_aligned():
    """A foreign body may put an F32 at an odd offset: it is copied to aligned memory, not viewed misaligned."""
    st_json = json.dumps({"b": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},
                          "x": {"dtype": "F32", "shape": [2], "data_offsets": [1, 9]}}).encode()
    st_json += b" " * (-len(st_json) % 8)
    data = b"\x07" + struct.pack("<2f", 1.5, -2.0)
    body = bytearray(struct.pack("<Q", len(st_json)) + st_json + data)
    msg = decode_body(b'{"kind":"m"}', body)
    assert msg.tensors["x"].tolist() == [1.5, -2.0] and msg.tensors["b"].tolist() == [7]
    assert msg.tensors["x"].data_ptr() % 4 == 0


@pytest.mark.parametrize("entries, match", [
    ({"x": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}, "shape"),
    ({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0]}}, "data_offsets"),
    ({"x": {"dtype": "F32", "shape": [1], "data_offsets": [8, 4]}}, "data_offsets"),
    ({"x": [1, 2]}, "must be an object"),
    ({"__metadata__": {"a": 1}}, "__metadata__"),
])
def test_decode_refuses_what_the_safetensors_library_refuses(entries, match):
    st_json = json.dumps(entries).encode()
    body = bytearray(struct.pack("<Q", len(st_json)) + st_json + b"\0" * 4)
    with pytest.raises(WireError, match=match):
        decode_body(b'{"kind":"m"}', body)


def test_sparse_tensors_are_refused_by_name():
    with pytest.raises(WireError, match="'s' has layout"):
        encode_frame("m", {"s": torch.eye(3).to_sparse()})
