"""Apply a family's rules to tensors: key generation from shapes, and per-tensor transforms.

Works on (name, tensor) pairs only, so the same code serves an in-memory state dict and a
checkpoint read shard by shard. Permutations are index selections, never dense matmuls.
"""
from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, Mapping

import torch

from .families import DEVICE, Dims, Family
from .keycheck import expected_key_shapes, model_metadata  # noqa: F401 (expected_key_shapes re-exported)
from .keys import KEY_ID, KeyMismatchError, KeySet, PermutationSource, head_structured_permutations, new_key_id

_LAYER_KEYS = {"q": "pi_i1_q", "k": "pi_i1_k", "v": "pi_i2_v", "o": "pi_i2_o", "f": "pi_i3"}


_THREADED_MIN_NUMEL = 1 << 20  # below ~4 MB of float32, thread hand-off costs more than it saves
_pool: ThreadPoolExecutor | None = None
_pool_threads = 0


def _drop_pool() -> None:
    global _pool, _pool_threads
    _pool, _pool_threads = None, 0  # a forked child has none of the parent's threads


os.register_at_fork(after_in_child=_drop_pool)


def _rows_in_parallel(flat: torch.Tensor, index: torch.Tensor, threads: int) -> torch.Tensor:
    """index_select of row blocks on `threads` threads (the op itself runs one thread along dim 1)."""
    global _pool, _pool_threads
    if _pool is None or _pool_threads < threads:
        _pool, _pool_threads = ThreadPoolExecutor(threads, thread_name_prefix="stip-permute"), threads
    out = flat.new_empty((flat.shape[0], index.numel()))
    step = -(-flat.shape[0] // threads)
    jobs = [_pool.submit(torch.index_select, flat[r:r + step], 1, index, out=out[r:r + step])
            for r in range(0, flat.shape[0], step)]
    for job in jobs:
        job.result()
    return out


def permute_features(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x @ P == x[..., index], as an index_select over the last dim (row blocks on threads when large).

    Un-permuting GPT-2 logits [128, 50257] against a copy of the same tensor (bench_stip_micro,
    2 threads on a shared 2-core host, medians over three runs): index_select on 2 threads
    0.7-2.9x, gather 1.9-3.5x, index_select 1.7-3.6x, advanced indexing 2.9-6x, scatter by pi
    4.6-4.8x, take_along_dim 18-24x; torch.compile'd indexing was no faster than index_select
    (and took 16 s to compile). A [1, 1, 576] embedding: index_select 2.8 us, gather 5 us.
    """
    small = x.numel() < _THREADED_MIN_NUMEL
    if small or x.device.type != "cpu" or (x.requires_grad and torch.is_grad_enabled()):
        return x.index_select(-1, index)
    threads = min(torch.get_num_threads(), x.numel() // x.shape[-1])
    if threads < 2:
        return x.index_select(-1, index)
    out = _rows_in_parallel(x.reshape(-1, x.shape[-1]), index, threads)
    return out.view(*x.shape[:-1], index.numel())


def output_dim(family: Family, shapes: Mapping[str, tuple[int, ...]]) -> int | None:
    """Size of the output space `c` (vocabulary or labels), read off the head's shape."""
    for name, shape in shapes.items():
        spaces, _ = family.spaces_for(name)
        if spaces != DEVICE and "c" in spaces:
            return int(shape[spaces.index("c")])
    return None


def generate_keys(dims: Dims, out_dim: int | None, model_type: str, seed: int | None) -> KeySet:
    """Draw every permutation a model needs: pi, pi_c, and per layer pi_i1/pi_i2/pi_i3."""
    source = PermutationSource(seed)
    tensors = {"pi": source.permutation(dims.hidden)}
    if out_dim is not None:
        tensors["pi_c"] = source.permutation(out_dim)
    for i in range(dims.n_layers):
        heads = head_structured_permutations(dims.n_heads, dims.n_kv_heads, dims.head_dim, dims.rope, source)
        tensors.update({f"layers.{i}.{k}": v for k, v in heads.items()})
        if dims.n_experts:
            tensors[f"layers.{i}.pi_i3"] = torch.stack([source.permutation(dims.ffn) for _ in range(dims.n_experts)])
        else:
            tensors[f"layers.{i}.pi_i3"] = source.permutation(dims.ffn)
    metadata = {**model_metadata(model_type, dims, out_dim), "role": "developer", "seeded": str(seed is not None),
                KEY_ID: new_key_id(tensors, seeded=seed is not None)}
    return KeySet(tensors, metadata)


def space_index(keys: KeySet, space: str, where: dict[str, int]) -> torch.Tensor:
    """The index vector (or per-expert index matrix) of a named feature space.

    `where` holds the layer index `L` and, for one expert's own tensor, the expert index `E`.
    """
    if space == "h":
        return keys["pi"]
    if space == "c":
        return keys["pi_c"]
    if "L" not in where:
        raise KeyMismatchError(f"space '{space}' needs a layer index")
    if space == "qkv":  # GPT-2's fused Q|K|V: each third gets its own output permutation
        q, k, v = (space_index(keys, s, where) for s in ("q", "k", "v"))
        return torch.cat([q, q.numel() + k, q.numel() + k.numel() + v])
    if space == "gu":  # Mixtral's fused gate|up per expert, both with pi_i3
        f = space_index(keys, "f", where)
        return torch.cat([f, f.shape[-1] + f], dim=-1)
    index = keys[f"layers.{where['L']}.{_LAYER_KEYS[space]}"]
    return index[where["E"]] if "E" in where else index


def transform_tensor(tensor: torch.Tensor, spaces, where: dict[str, int], keys: KeySet) -> torch.Tensor:
    """Permute each dimension of `tensor` into its feature space; zero device-side tensors."""
    if spaces == DEVICE:
        return torch.zeros_like(tensor)
    if len(spaces) != tensor.dim():
        raise KeyMismatchError(f"rule expects {len(spaces)} dims but tensor has shape {tuple(tensor.shape)}")
    out = tensor
    for dim, space in enumerate(spaces):
        if space is None:
            continue
        index = space_index(keys, space, where)
        if index.dim() == 1:
            if index.numel() != out.shape[dim]:
                raise KeyMismatchError(f"space '{space}' has {index.numel()} features but the tensor has "
                                       f"{out.shape[dim]} on dim {dim}: keys from another model?")
            out = out.index_select(dim, index)
        else:  # one permutation per expert (leading dim)
            out = torch.stack([out[e].index_select(dim - 1, index[e]) for e in range(out.shape[0])])
    return out.contiguous()


def transform_stored(read: Callable[[torch.Tensor | None], torch.Tensor], shape: tuple[int, ...], itemsize: int,
                     spaces, where: dict[str, int], keys: KeySet, block_bytes: int = 8 << 20) -> Iterator[torch.Tensor]:
    """Transform a stored tensor block by block: `read(rows)` returns x[rows] (x itself for None).

    Output rows i..j need only source rows index[i..j], so each block is read in permuted order
    and permuted along its other dims: the peak is one block, never the whole tensor.
    """
    if len(spaces) != len(shape):
        raise KeyMismatchError(f"rule expects {len(spaces)} dims but tensor has shape {tuple(shape)}")
    indices = [None if space is None else space_index(keys, space, where) for space in spaces]
    if len(shape) < 2 or any(i is not None and i.dim() > 1 for i in indices):
        yield transform_tensor(read(None), spaces, where, keys)  # 1-D, or one permutation per expert
        return
    for dim, (space, index) in enumerate(zip(spaces, indices)):
        if index is not None and index.numel() != shape[dim]:
            raise KeyMismatchError(f"space '{space}' has {index.numel()} features but the tensor has "
                                   f"{shape[dim]} on dim {dim}: keys from another model?")
    rows = indices[0] if indices[0] is not None else torch.arange(shape[0])
    row_bytes = max(1, math.prod(shape[1:]) * itemsize)
    step = max(1, block_bytes // row_bytes)
    for start in range(0, shape[0], step):
        block = read(rows[start:start + step])
        for dim, index in enumerate(indices):
            if dim and index is not None:
                block = block.index_select(dim, index)
        yield block


def transform_named_tensors(
    family: Family, named: Iterable[tuple[str, torch.Tensor]], keys: KeySet
) -> Iterable[tuple[str, torch.Tensor]]:
    """Lazily transform (name, tensor) pairs: peak memory is one tensor beyond the caller's."""
    for name, tensor in named:
        spaces, where = family.spaces_for(name)
        yield name, transform_tensor(tensor, spaces, where, keys)
