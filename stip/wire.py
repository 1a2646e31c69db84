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
                      (tensors in the caller's order, padded with spaces to a multiple of 8),
                      then the raw little-endian tensor data: numel x itemsize bytes per tensor,
                      no gaps, placed by descending itemsize (so each is aligned to its itemsize)

So a frame is exactly ``16 + H + 8 + S + payload`` bytes, where ``payload`` is
`expected_payload_bytes(tensors)` (computed from shapes and dtypes alone). The framing overhead is
``FRAME_PREFIX_BYTES + H + SAFETENSORS_LEN_BYTES + S`` = ``24 + H + S``, reported per message by
`Message.overhead_bytes`. The total frame size ``16 + H + B`` is bounded by a caller-chosen
maximum (`DEFAULT_MAX_MESSAGE_BYTES` by default), checked from the prefix alone so that a reader
never allocates for an oversized declared length.

The body is a standard safetensors file, written and read here directly rather than through the
safetensors library: encoding is one copy of each tensor into the frame, decoding is zero-copy
(the returned tensors are writable views into one buffer of the received body). safetensors'
own ``load`` reads these bodies and its ``save`` output decodes here (tested).

This module is pure (bytes in, bytes out); socket I/O lives in the runtime that uses it.
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
_TORCH_DTYPES = {tag: dtype for dtype, tag in _ST_DTYPES.items()}


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
        out[name] = t.detach()
    return out


def _tensor_header(tensors: dict[str, torch.Tensor]) -> tuple[bytes, list[tuple[str, int, int]]]:
    """The padded safetensors JSON header and (name, begin, end) data spans, largest itemsize first."""
    order = sorted(tensors, key=lambda n: -tensors[n].element_size())  # stable: keeps alignment
    spans: list[tuple[str, int, int]] = []
    offset = 0
    for name in order:
        end = offset + math.prod(tensors[name].shape) * tensors[name].element_size()
        spans.append((name, offset, end))
        offset = end
    where = {name: [begin, end] for name, begin, end in spans}
    entries = {name: {"dtype": _ST_DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": where[name]}
               for name, t in tensors.items()}  # the caller's order, so decoding keeps it
    text = json.dumps(entries, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    return text + b" " * (-len(text) % 8), spans


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


def encode_message(kind: str, tensors: Mapping[str, torch.Tensor] | None = None,
                   meta: Mapping[str, Any] | None = None, *, error: str | None = None,
                   max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> bytearray:
    """Encode one frame (a bytearray, filled with one copy of each tensor).

    Raises WireError naming a bad tensor or meta value, MessageTooLarge beyond `max_bytes`.
    """
    header = encode_header(kind, meta, error)
    if len(header) > MAX_HEADER_BYTES:
        raise MessageTooLarge(f"JSON header of {len(header)} B exceeds {MAX_HEADER_BYTES} B; "
                              "move bulky meta into tensors")
    prepared = _prepare_tensors(tensors)
    st_header, spans = _tensor_header(prepared)
    payload = spans[-1][2] if spans else 0
    total = FRAME_PREFIX_BYTES + len(header) + SAFETENSORS_LEN_BYTES + len(st_header) + payload
    if total > max_bytes:
        raise MessageTooLarge(f"message {kind!r} is {total} B ({payload} B of tensors), over the "
                              f"{max_bytes} B limit")
    frame = bytearray(total)
    body_len = SAFETENSORS_LEN_BYTES + len(st_header) + payload
    _PREFIX.pack_into(frame, 0, MAGIC, len(header), body_len)
    pos = FRAME_PREFIX_BYTES
    frame[pos:pos + len(header)] = header
    pos += len(header)
    struct.pack_into("<Q", frame, pos, len(st_header))
    pos += SAFETENSORS_LEN_BYTES
    frame[pos:pos + len(st_header)] = st_header
    data_start = pos + len(st_header)
    if payload:
        dst = torch.frombuffer(frame, dtype=torch.uint8)
        for name, begin, end in spans:
            if end > begin:
                src = prepared[name].reshape(-1).view(torch.uint8)
                dst[data_start + begin:data_start + end].copy_(src)
    return frame


def encode_error(error: str, meta: Mapping[str, Any] | None = None) -> bytearray:
    """An error reply frame (no tensors)."""
    return encode_message(KIND_ERROR, None, meta, error=error)


def decode_prefix(prefix: bytes, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> tuple[int, int]:
    """Validate the 16-byte prefix and return (H, B); raises before anything large is read."""
    if len(prefix) != FRAME_PREFIX_BYTES:
        raise WireError(f"frame prefix must be {FRAME_PREFIX_BYTES} B, got {len(prefix)} B")
    magic, header_len, body_len = _PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise WireError(f"bad magic {magic!r}, expected {MAGIC!r}: not a STIP wire frame "
                        "(or a stream out of sync)")
    if header_len == 0:
        raise WireError("declared JSON header length is 0; a frame always has a header")
    if header_len > MAX_HEADER_BYTES:
        raise MessageTooLarge(f"declared JSON header length {header_len} B exceeds "
                              f"{MAX_HEADER_BYTES} B")
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
    """Decode a safetensors body into tensors viewing its buffer; returns (tensors, S).

    Every offset is checked against the shapes, and the data must tile the body exactly.
    A read-only buffer (bytes) is copied once so the tensors are writable.
    """
    view = memoryview(body)
    if view.readonly:
        view = memoryview(bytearray(view))
    if len(view) < SAFETENSORS_LEN_BYTES:
        raise WireError(f"body of {len(view)} B is too short for a safetensors payload")
    (st_header_len,) = struct.unpack_from("<Q", view, 0)
    data_start = SAFETENSORS_LEN_BYTES + st_header_len
    if data_start > len(view):
        raise WireError(f"safetensors header length {st_header_len} B exceeds the {len(view)} B body")
    try:
        entries = json.loads(bytes(view[SAFETENSORS_LEN_BYTES:data_start]).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise WireError(f"body is not a valid safetensors payload: header is not JSON ({exc})") from exc
    if not isinstance(entries, dict):
        raise WireError("body is not a valid safetensors payload: header is not a JSON object")
    entries.pop("__metadata__", None)
    data_len = len(view) - data_start
    spans = []
    for name, entry in entries.items():
        spans.append((*_check_entry(name, entry, data_len), name))
    spans.sort(key=lambda span: (span[0], span[1], span[4]))
    covered = 0
    for begin, end, dtype, shape, name in spans:
        if begin != covered:
            raise WireError(f"safetensors tensor {name!r} starts at {begin}, expected {covered}: "
                            "data offsets overlap or leave gaps")
        covered = end
    if covered != data_len:
        raise WireError(f"safetensors data is {data_len} B but the tensors cover {covered} B")
    base = torch.frombuffer(view, dtype=torch.uint8) if data_len else None
    tensors: dict[str, torch.Tensor] = {}
    for begin, end, dtype, shape, name in spans:
        if end == begin:
            tensors[name] = torch.empty(shape, dtype=dtype)
            continue
        raw = base[data_start + begin:data_start + end]
        if raw.data_ptr() % dtype.itemsize:  # misaligned (a foreign layout or buffer): copy
            raw = raw.clone()
        tensors[name] = raw.view(dtype).reshape(shape)
    order = {name: i for i, name in enumerate(entries)}
    return dict(sorted(tensors.items(), key=lambda kv: order[kv[0]])), st_header_len


def _check_entry(name: str, entry: Any, data_len: int) -> tuple[int, int, torch.dtype, list[int]]:
    if not isinstance(entry, dict):
        raise WireError(f"safetensors entry {name!r} is not an object")
    dtype = _TORCH_DTYPES.get(entry.get("dtype"))
    if dtype is None:
        raise WireError(f"safetensors tensor {name!r} has unknown dtype {entry.get('dtype')!r}; "
                        f"known: {sorted(_TORCH_DTYPES)}")
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise WireError(f"safetensors tensor {name!r} has a bad shape {shape!r}")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) and o >= 0 for o in offsets)):
        raise WireError(f"safetensors tensor {name!r} has bad data_offsets {offsets!r}")
    begin, end = offsets
    if end > data_len or end - begin != math.prod(shape) * dtype.itemsize:
        raise WireError(f"safetensors tensor {name!r}: data_offsets {offsets} do not fit shape {shape} "
                        f"of {entry['dtype']} in {data_len} B of data")
    return begin, end, dtype, shape


def decode_message(frame: bytes | bytearray, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> Message:
    """Decode one complete frame; raises WireError on any deviation from the format."""
    frame = memoryview(frame)
    header_len, body_len = decode_prefix(bytes(frame[:FRAME_PREFIX_BYTES]), max_bytes)
    expected = FRAME_PREFIX_BYTES + header_len + body_len
    if len(frame) != expected:
        raise WireError(f"frame is {len(frame)} B but its prefix declares {expected} B "
                        f"({'truncated' if len(frame) < expected else 'trailing bytes'})")
    header = bytes(frame[FRAME_PREFIX_BYTES:FRAME_PREFIX_BYTES + header_len])
    return decode_body(header, bytearray(frame[FRAME_PREFIX_BYTES + header_len:]))  # aligned copy
