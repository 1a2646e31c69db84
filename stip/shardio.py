"""Read and write safetensors files one tensor at a time, with no mmap and no whole-file buffer.

`safetensors.torch.save_file` builds the whole file in memory and `safe_open` keeps every
touched page of its mmap resident, so a shard costs ~3x its size. Here rows are read by
position (in permuted order) and written block by block, so the peak is one working block.
"""
from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from io import BufferedReader
from pathlib import Path
from typing import Iterable

import torch
from safetensors.torch import _TYPES

# safetensors dtype names -> torch dtypes (safetensors' table, less any this torch lacks: None there)
DTYPES: dict[str, torch.dtype] = {name: dtype for name, dtype in _TYPES.items() if dtype is not None}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
CHUNK_BYTES = 8 << 20  # working chunk for column permutations and zero fill
_ALIGN = 8


@dataclass(frozen=True)
class Entry:
    """One tensor's place in a safetensors file."""

    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute file offset of the first byte
    nbytes: int

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


def read_header(path: str | os.PathLike) -> dict[str, Entry]:
    """The tensors of a safetensors file (name -> Entry), from its JSON header only."""
    with open(path, "rb") as fh:
        (size,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(size))
    header.pop("__metadata__", None)
    return {name: Entry(h["dtype"], tuple(h["shape"]), 8 + size + h["data_offsets"][0],
                        h["data_offsets"][1] - h["data_offsets"][0]) for name, h in header.items()}


def _bytes_view(t: torch.Tensor) -> memoryview:
    # numpy's stubs declare ndarray.__buffer__ for Python >= 3.12 only; the buffer protocol is there on 3.11 too
    return memoryview(t.reshape(-1).view(torch.uint8).numpy())  # type: ignore[arg-type]


def _read_exact(fh: BufferedReader, offset: int, into: memoryview) -> None:
    fh.seek(offset)
    done = 0
    while done < len(into):
        n = fh.readinto(into[done:])
        if not n:
            raise EOFError(f"{fh.name}: file ends inside a tensor (truncated checkpoint?); re-save it")
        done += n


def read_tensor(fh: BufferedReader, entry: Entry, rows: torch.Tensor | None = None) -> torch.Tensor:
    """The whole tensor, or the rows `rows` of its leading dimension in that order (x[rows])."""
    if rows is None:
        out = torch.empty(entry.shape, dtype=entry.torch_dtype)
        if out.numel():
            _read_exact(fh, entry.start, _bytes_view(out))
        return out
    out = torch.empty((rows.numel(), *entry.shape[1:]), dtype=entry.torch_dtype)
    row_bytes = entry.nbytes // entry.shape[0] if entry.shape[0] else 0
    if row_bytes and torch.equal(rows, torch.arange(int(rows[0]), int(rows[0]) + rows.numel())):
        _read_exact(fh, entry.start + int(rows[0]) * row_bytes, _bytes_view(out))  # a run of rows: one read
    elif row_bytes:
        view = _bytes_view(out)
        for i, src in enumerate(rows.tolist()):
            _read_exact(fh, entry.start + src * row_bytes, view[i * row_bytes:(i + 1) * row_bytes])
    return out


class ShardWriter:
    """Writes a safetensors file whose tensor list is known up front, one tensor at a time."""

    def __init__(self, path: str | os.PathLike, specs: list[tuple[str, str, tuple[int, ...]]]) -> None:
        self.path = Path(path)
        header: dict = {"__metadata__": {"format": "pt"}}
        self._sizes: dict[str, int] = {}
        offset = 0
        for name, dtype, shape in specs:
            nbytes = DTYPES[dtype].itemsize * _numel(shape)
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            self._sizes[name] = nbytes
            offset += nbytes
        self._order = [name for name, _, _ in specs]
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % _ALIGN)
        self._fh = open(self.path, "wb")
        self._fh.write(struct.pack("<Q", len(blob)) + blob)
        self._next = 0

    def _expect(self, name: str) -> int:
        if self._next >= len(self._order) or self._order[self._next] != name:
            raise RuntimeError(f"{self.path.name}: tensor '{name}' written out of order")
        self._next += 1
        return self._sizes[name]

    def write(self, name: str, chunks: Iterable[torch.Tensor]) -> None:
        """Append the next tensor, given as consecutive blocks of its leading dimension."""
        nbytes = self._expect(name)
        written = 0
        for chunk in chunks:
            if chunk.numel():
                written += self._fh.write(_bytes_view(chunk.contiguous()))
        if written != nbytes:
            raise RuntimeError(f"{self.path.name}: tensor '{name}' has {written} bytes, the header declares {nbytes}")

    def write_zeros(self, name: str) -> None:
        """Append the next tensor as zeros without materialising it."""
        left = self._expect(name)
        zeros = memoryview(bytes(min(left, CHUNK_BYTES)))
        while left:
            n = min(left, len(zeros))
            self._fh.write(zeros[:n])
            left -= n

    def close(self) -> None:
        """Finish the file; every declared tensor must have been written."""
        self._fh.close()
        if self._next != len(self._order):
            raise RuntimeError(f"{self.path.name}: {len(self._order) - self._next} declared tensors were not written")

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.close()
        else:
            self._fh.close()


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n
