"""Wire format for device <-> cloud messages: a fixed prefix, a JSON header, a safetensors body.

One message ("frame") is laid out byte by byte as follows (all integers little-endian):

    offset  size  field
    0       4     magic b"STW1" (format version 1)
    4       4     H: uint32, length of the JSON header in bytes (0 < H <= MAX_HEADER_BYTES)
    8       8     B: uint64, length of the safetensors body in bytes (B >= 8)
    16      H     JSON header, UTF-8 (ASCII-only, compact):
                      {"kind": str, "meta": {...}, "error": str | null}
                  kind  - the method name of a request ("infer"), or "result" / "error" in a reply
                  meta  - JSON-able keyword arguments / metadata
                  error - a message when kind == "error", else null
    16+H    B     safetensors serialisation of the tensor dict (an empty dict is still encoded):
                      8 bytes uint64 S, then S bytes of safetensors JSON
                      {"name": {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, ...}
                      (padded with spaces to a multiple of 8), then the raw little-endian
                      tensor data: numel x itemsize bytes per tensor, no gaps

So a frame is exactly ``16 + H + 8 + S + payload`` bytes, where ``payload`` is
`expected_payload_bytes(tensors)` (computed from shapes and dtypes alone). The framing overhead is
``FRAME_PREFIX_BYTES + H + SAFETENSORS_LEN_BYTES + S`` = ``24 + H + S``, reported per message by
`Message.overhead_bytes`. The total frame size ``16 + H + B`` is bounded by a caller-chosen
maximum (`DEFAULT_MAX_MESSAGE_BYTES` by default), checked from the prefix alone so that a reader
never allocates for an oversized declared length.

The body is standard safetensors, byte for byte what `safetensors.torch.save` writes (tensors
ordered by dtype, then name; JSON padded with spaces to a multiple of 8; tests compare the two),
but built here without copying the tensors: `encode_frame` returns a `Frame`, a list of buffers
(prefix + JSON header + safetensors header in one small block, then each tensor's own memory)
that the framing layer sends with one scatter-gather `sendmsg` per chunk. Decoding validates every
dtype, shape and offset as the safetensors library does (gap-free, in bounds, sizes consistent)
and returns tensors that are views of the received buffer (`torch.frombuffer`), copied only where
a foreign body places a tensor at an offset misaligned for its dtype (never in our own frames:
the data starts 8-aligned and the dtype order keeps every tensor aligned).

This module is pure (buffers in, buffers out); socket I/O lives in transport.framing.
"""
from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import Any, Mapping

import torch

MAGIC = b"STW1"
_PREFIX = struct.Struct("<4sIQ")
FRAME_PREFIX_BYTES = _PREFIX.size  # 16
SAFETENSORS_LEN_BYTES = 8  # the uint64 S at the start of the safetensors body
MAX_HEADER_BYTES = 1 << 20  # 1 MiB of JSON is far more than any meta needs
DEFAULT_MAX_MESSAGE_BYTES = 1 << 30  # 1 GiB: holds a batch of 7B-model logits, refuses nonsense

KIND_RESULT = "result"
KIND_ERROR = "error"

assert FRAME_PREFIX_BYTES == 16

# torch dtype <-> safetensors dtype tag (only those this torch build has)
_ST_DTYPES: dict[torch.dtype, str] = {
    getattr(torch, name): tag for name, tag in (
        ("float64", "F64"), ("float32", "F32"), ("float16", "F16"), ("bfloat16", "BF16"),
        ("int64", "I64"), ("int32", "I32"), ("int16", "I16"), ("int8", "I8"), ("uint8", "U8"),
        ("bool", "BOOL"), ("uint16", "U16"), ("uint32", "U32"), ("uint64", "U64"),
        ("float8_e4m3fn", "F8_E4M3"), ("float8_e5m2", "F8_E5M2"),
    ) if hasattr(torch, name)
}


# safetensors' own tensor order in a body (its Dtype enum, largest first): keeps every tensor aligned
_ST_ORDER = ("U64", "I64", "F64", "F32", "U32", "I32", "BF16", "F16", "U16", "I16", "F8_E4M3", "F8_E5M2",
             "I8", "U8", "BOOL")
_ST_RANK = {tag: rank for rank, tag in enumerate(_ST_ORDER)}
_TAG_DTYPES: dict[str, torch.dtype] = {tag: dtype for dtype, tag in _ST_DTYPES.items()}
assert set(_ST_DTYPES.values()) <= set(_ST_ORDER)


class WireError(ValueError):
    """A frame that does not follow the format (bad magic, lengths, JSON or safetensors)."""


class MessageTooLarge(WireError):
    """A frame whose (declared) size exceeds the allowed maximum."""


@dataclass
class Message:
    """A decoded frame plus the sizes of its parts, so traffic can be reconciled with shapes."""

    kind: str
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]
    error: str | None = None
    header_bytes: int = 0  # H
    body_bytes: int = 0  # B = 8 + S + payload
    tensor_header_bytes: int = 0  # S
    payload_bytes: int = 0  # raw tensor data bytes

    @property
    def frame_bytes(self) -> int:
        """Total bytes of the frame on the wire."""
        return FRAME_PREFIX_BYTES + self.header_bytes + self.body_bytes

    @property
    def overhead_bytes(self) -> int:
        """Bytes on the wire beyond the tensor data: 24 + H + S."""
        return self.frame_bytes - self.payload_bytes


@dataclass(frozen=True)
class Frame:
    """One encoded frame as the buffers it is made of, in order; the tensors' own memory is not copied.

    `len(frame)` is its size on the wire. The frame shares memory with the tensors it was encoded
    from: send it before changing them. `to_bytearray()` joins it (one copy) where one buffer is needed.
    """

    parts: tuple[memoryview, ...]

    def __len__(self) -> int:
        return sum(part.nbytes for part in self.parts)

    def to_bytearray(self) -> bytearray:
        """The whole frame in one buffer (one copy of each tensor)."""
        out = bytearray(len(self))
        offset = 0
        for part in self.parts:
            out[offset:offset + part.nbytes] = part
            offset += part.nbytes
        return out


def expected_payload_bytes(tensors: Mapping[str, torch.Tensor]) -> int:
    """Raw tensor bytes a frame carries, from shapes and dtypes only (no serialisation)."""
    total = 0
    for t in tensors.values():
        total += math.prod(t.shape) * t.element_size()
    return total


def frame_overhead_bytes(header_bytes: int, tensor_header_bytes: int) -> int:
    """Framing overhead of a frame with a JSON header of H bytes and a safetensors header of S."""
    return FRAME_PREFIX_BYTES + header_bytes + SAFETENSORS_LEN_BYTES + tensor_header_bytes


def _prepare_tensors(tensors: Mapping[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for name, t in (tensors or {}).items():
        if not isinstance(name, str):
            raise WireError(f"tensor names must be str, got {name!r} ({type(name).__name__})")
        if not isinstance(t, torch.Tensor):
            raise WireError(f"tensor {name!r} is a {type(t).__name__}, not a torch.Tensor; "
                            "put non-tensor values in meta")
        if t.dtype not in _ST_DTYPES:
            raise WireError(f"tensor {name!r} has dtype {t.dtype}, which safetensors cannot carry; "
                            f"supported: {sorted(str(d) for d in _ST_DTYPES)}")
        if name == "__metadata__":
            raise WireError("tensor name '__metadata__' is reserved by safetensors")
        if t.layout != torch.strided:
            raise WireError(f"tensor {name!r} has layout {t.layout}; send a dense tensor (.to_dense())")
        out[name] = t.detach().cpu().contiguous()  # copies only a GPU or non-contiguous tensor
    return out


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    """The raw bytes of a contiguous CPU tensor, as a view of its own memory (bf16 and bool included)."""
    # numpy's stubs declare ndarray.__buffer__ only for Python 3.12+; an ndarray is a buffer on 3.11 too
    return memoryview(t.reshape(-1).view(torch.uint8).numpy())  # type: ignore[arg-type]


def _safetensors_layout(tensors: dict[str, torch.Tensor]) -> tuple[bytes, list[memoryview]]:
    """The safetensors length field + JSON (as `safetensors.torch.save` writes it) and the data buffers."""
    ordered = sorted(tensors.items(), key=lambda item: (_ST_RANK[_ST_DTYPES[item[1].dtype]], item[0]))
    entries: dict[str, dict[str, Any]] = {}
    data: list[memoryview] = []
    offset = 0
    for name, t in ordered:
        n = t.numel() * t.element_size()
        entries[name] = {"dtype": _ST_DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
        if n:
            data.append(_tensor_bytes(t))
    try:
        text = json.dumps(entries, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise WireError(f"a tensor name is not encodable as UTF-8 ({exc}); use plain str names") from None
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text, data


def encode_header(kind: str, meta: Mapping[str, Any] | None = None, error: str | None = None) -> bytes:
    """The JSON header bytes of a frame; raises WireError naming a value JSON cannot carry."""
    if not isinstance(kind, str) or not kind:
        raise WireError(f"message kind must be a non-empty str, got {kind!r}")
    meta = dict(meta or {})
    try:
        text = json.dumps({"kind": kind, "meta": meta, "error": error}, separators=(",", ":"),
                          ensure_ascii=True)
    except (TypeError, ValueError) as exc:
        bad = [k for k, v in meta.items() if not _json_ok(v)]
        raise WireError(f"meta is not JSON-serialisable (keys {bad}): {exc}; "
                        "send tensors in the tensor dict, not in meta") from exc
    return text.encode("ascii")


def _json_ok(value: Any) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


def encode_frame(kind: str, tensors: Mapping[str, torch.Tensor] | None = None,
                 meta: Mapping[str, Any] | None = None, *, error: str | None = None,
                 max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> Frame:
    """Encode one frame as buffers for a scatter-gather send, without copying contiguous CPU tensors.

    Raises WireError naming a bad tensor or meta value, MessageTooLarge beyond `max_bytes`.
    """
    header = encode_header(kind, meta, error)
    if len(header) > MAX_HEADER_BYTES:
        raise MessageTooLarge(f"JSON header of {len(header)} B exceeds {MAX_HEADER_BYTES} B; "
                              "move bulky meta into tensors")
    prepared = _prepare_tensors(tensors)
    st_header, data = _safetensors_layout(prepared)
    body_len = len(st_header) + expected_payload_bytes(prepared)
    total = FRAME_PREFIX_BYTES + len(header) + body_len
    if total > max_bytes:
        raise MessageTooLarge(f"message {kind!r} is {total} B ({expected_payload_bytes(prepared)} B of "
                              f"tensors), over the {max_bytes} B limit")
    head = _PREFIX.pack(MAGIC, len(header), body_len) + header + st_header
    return Frame((memoryview(head), *data))


def encode_message(kind: str, tensors: Mapping[str, torch.Tensor] | None = None,
                   meta: Mapping[str, Any] | None = None, *, error: str | None = None,
                   max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> bytearray:
    """Encode one frame in one buffer (one copy of each tensor); `encode_frame` copies none."""
    return encode_frame(kind, tensors, meta, error=error, max_bytes=max_bytes).to_bytearray()


def encode_error(error: str, meta: Mapping[str, Any] | None = None) -> bytearray:
    """An error reply frame (no tensors)."""
    return encode_message(KIND_ERROR, None, meta, error=error)


def decode_prefix(prefix: bytes, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                  max_header_bytes: int = MAX_HEADER_BYTES) -> tuple[int, int]:
    """Validate the 16-byte prefix and return (H, B); raises before anything large is read."""
    if len(prefix) != FRAME_PREFIX_BYTES:
        raise WireError(f"frame prefix must be {FRAME_PREFIX_BYTES} B, got {len(prefix)} B")
    magic, header_len, body_len = _PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise WireError(f"bad magic {magic!r}, expected {MAGIC!r}: not a STIP wire frame "
                        "(or a stream out of sync)")
    if header_len == 0:
        raise WireError("declared JSON header length is 0; a frame always has a header")
    if header_len > min(max_header_bytes, MAX_HEADER_BYTES):
        raise MessageTooLarge(f"declared JSON header length {header_len} B exceeds "
                              f"{min(max_header_bytes, MAX_HEADER_BYTES)} B")
    if body_len < SAFETENSORS_LEN_BYTES:
        raise WireError(f"declared body length {body_len} B is shorter than the "
                        f"{SAFETENSORS_LEN_BYTES} B safetensors length field")
    total = FRAME_PREFIX_BYTES + header_len + body_len
    if total > max_bytes:
        raise MessageTooLarge(f"declared frame size {total} B exceeds the {max_bytes} B limit")
    return header_len, body_len


def decode_body(header: bytes, body: bytes | bytearray | memoryview) -> Message:
    """Decode the JSON header and safetensors body that follow a validated prefix."""
    try:
        obj = json.loads(header.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise WireError(f"JSON header is not valid UTF-8 JSON: {exc}") from exc
    except RecursionError:  # json's own depth limit: a hostile header, refused like any bad one
        raise WireError("JSON header is nested too deeply") from None
    if not isinstance(obj, dict):
        raise WireError(f"JSON header must be an object, got {type(obj).__name__}")
    kind, meta, error = obj.get("kind"), obj.get("meta", {}), obj.get("error")
    if not isinstance(kind, str) or not kind:
        raise WireError(f"JSON header 'kind' must be a non-empty str, got {kind!r}")
    if not isinstance(meta, dict):
        raise WireError(f"JSON header 'meta' must be an object, got {type(meta).__name__}")
    if error is not None and not isinstance(error, str):
        raise WireError(f"JSON header 'error' must be a str or null, got {error!r}")
    tensors, st_header_len = decode_tensors(body)
    payload = expected_payload_bytes(tensors)
    return Message(kind=kind, tensors=tensors, meta=meta, error=error, header_bytes=len(header),
                   body_bytes=len(body), tensor_header_bytes=st_header_len, payload_bytes=payload)


def decode_tensors(body: bytes | bytearray | memoryview) -> tuple[dict[str, torch.Tensor], int]:
    """Decode a safetensors body into tensors that view it; returns (tensors, S).

    A writable body (the buffer a frame was received into) is viewed in place; a read-only one
    (bytes) is copied once first. Raises WireError for any inconsistent dtype, shape or offset.
    """
    view = memoryview(body).cast("B")
    if len(view) < SAFETENSORS_LEN_BYTES:
        raise WireError(f"body of {len(view)} B is too short for a safetensors payload")
    (st_header_len,) = struct.unpack_from("<Q", view, 0)
    if SAFETENSORS_LEN_BYTES + st_header_len > len(view):
        raise WireError(f"safetensors header length {st_header_len} B exceeds the {len(view)} B body")
    data_start = SAFETENSORS_LEN_BYTES + st_header_len
    layout = _parse_safetensors_header(bytes(view[SAFETENSORS_LEN_BYTES:data_start]), len(view) - data_start)
    if view.readonly and layout:
        view = memoryview(bytearray(view))
    tensors: dict[str, torch.Tensor] = {}
    for name, dtype, shape, begin, end in layout:
        if begin == end:
            tensors[name] = torch.empty(shape, dtype=dtype)
            continue
        raw = torch.frombuffer(view, dtype=torch.uint8, count=end - begin, offset=data_start + begin)
        if raw.data_ptr() % dtype.itemsize:
            raw = raw.clone()  # misaligned for its dtype (a foreign body): one aligned copy
        tensors[name] = raw.view(dtype).reshape(shape)
    return tensors, st_header_len


def _invalid(reason: str) -> WireError:
    return WireError(f"body is not a valid safetensors payload: {reason}")


def _parse_safetensors_header(text: bytes, data_len: int) -> list[tuple[str, torch.dtype, list[int], int, int]]:
    """(name, dtype, shape, begin, end) per tensor, in data order, checked as the safetensors library checks."""
    try:
        entries = json.loads(text)
    except (UnicodeDecodeError, ValueError) as exc:
        raise _invalid(f"header is not UTF-8 JSON ({exc})") from None
    except RecursionError:
        raise _invalid("header is nested too deeply") from None
    if not isinstance(entries, dict):
        raise _invalid(f"header must be a JSON object, got {type(entries).__name__}")
    layout = []
    for name, info in entries.items():
        if name == "__metadata__":
            if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                raise _invalid("__metadata__ must map str to str")
            continue
        if not isinstance(info, dict):
            raise _invalid(f"entry {name!r} must be an object, got {type(info).__name__}")
        tag, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if tag not in _TAG_DTYPES:
            raise _invalid(f"tensor {name!r} has unknown dtype {tag!r}; known: {sorted(_TAG_DTYPES)}")
        if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
            raise _invalid(f"tensor {name!r} has shape {shape!r}; expected a list of ints >= 0")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets) \
                or offsets[0] > offsets[1]:
            raise _invalid(f"tensor {name!r} has data_offsets {offsets!r}; expected [begin, end], 0 <= begin <= end")
        dtype = _TAG_DTYPES[tag]
        size = math.prod(shape) * dtype.itemsize
        if offsets[1] - offsets[0] != size:
            raise _invalid(f"tensor {name!r} ({tag}, shape {shape}) needs {size} B, its data_offsets {offsets} "
                           f"span {offsets[1] - offsets[0]} B")
        layout.append((name, dtype, shape, offsets[0], offsets[1]))
    layout.sort(key=lambda entry: (entry[3], entry[4]))
    expected = 0
    for name, _, _, begin, end in layout:
        if begin != expected:
            raise _invalid(f"tensor {name!r} starts at {begin} B, expected {expected} B (gap or overlap)")
        expected = end
    if expected != data_len:
        raise _invalid(f"tensors cover {expected} B of a {data_len} B data section")
    return layout


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def decode_message(data: bytes | bytearray | memoryview, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> Message:
    """Decode one complete frame; raises WireError on any deviation from the format."""
    frame = memoryview(data)
    header_len, body_len = decode_prefix(bytes(frame[:FRAME_PREFIX_BYTES]), max_bytes)
    expected = FRAME_PREFIX_BYTES + header_len + body_len
    if len(frame) != expected:
        raise WireError(f"frame is {len(frame)} B but its prefix declares {expected} B "
                        f"({'truncated' if len(frame) < expected else 'trailing bytes'})")
    header = bytes(frame[FRAME_PREFIX_BYTES:FRAME_PREFIX_BYTES + header_len])
    return decode_body(header, bytearray(frame[FRAME_PREFIX_BYTES + header_len:]))  # one aligned, writable copy
