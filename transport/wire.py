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

The body is written and read by the safetensors library (`safetensors.torch.save` / `load`),
which validates every offset, dtype and shape of a received body.

This module is pure (bytes in, bytes out); socket I/O lives in the runtime that uses it.
"""
from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save

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
        out[name] = t.detach().contiguous()
    return out


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
    body = safetensors_save(_prepare_tensors(tensors))
    total = FRAME_PREFIX_BYTES + len(header) + len(body)
    if total > max_bytes:
        raise MessageTooLarge(f"message {kind!r} is {total} B ({expected_payload_bytes(tensors or {})} B of "
                              f"tensors), over the {max_bytes} B limit")
    frame = bytearray(total)
    _PREFIX.pack_into(frame, 0, MAGIC, len(header), len(body))
    frame[FRAME_PREFIX_BYTES:FRAME_PREFIX_BYTES + len(header)] = header
    frame[FRAME_PREFIX_BYTES + len(header):] = body
    return frame


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
    """Decode a safetensors body with the safetensors library; returns (tensors, S)."""
    if len(body) < SAFETENSORS_LEN_BYTES:
        raise WireError(f"body of {len(body)} B is too short for a safetensors payload")
    (st_header_len,) = struct.unpack_from("<Q", body, 0)
    if SAFETENSORS_LEN_BYTES + st_header_len > len(body):
        raise WireError(f"safetensors header length {st_header_len} B exceeds the {len(body)} B body")
    try:
        tensors = safetensors_load(bytes(body))
    except Exception as exc:  # SafetensorError and friends: report them as a bad frame
        raise WireError(f"body is not a valid safetensors payload: {exc}") from exc
    return tensors, st_header_len


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
