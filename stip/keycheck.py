"""Check a key set against a model: metadata, shapes, and the structure every key must have.

Shapes alone let wrong keys through (another head layout with the same hidden size, another
family with the same shapes, a tensor that is not a permutation), and each gives a silently
wrong model. Every failure names what differs and the way out; key values are never printed.
"""
from __future__ import annotations

import dataclasses
import hashlib

import torch

from .families import Dims
from .keys import KeyMismatchError, KeySet

WAY_OUT = ("use the keys made for this model, or draw new ones with ModelDeveloper(model) / "
           "`stip transform` (and re-transform the cloud checkpoint with them)")
USER_KEYS = ("pi", "pi_c")


def model_metadata(model_type: str, dims: Dims, out_dim: int | None) -> dict[str, str]:
    """The non-secret description of the model a key set is made for (stored with the keys)."""
    meta = {"model_type": model_type, "out_dim": str(out_dim)}
    meta.update({name: str(value) for name, value in dataclasses.asdict(dims).items()})
    return meta


def expected_key_shapes(dims: Dims, out_dim: int | None) -> dict[str, tuple[int, ...]]:
    """The shape every key must have for a model with these dimensions."""
    shapes: dict[str, tuple[int, ...]] = {"pi": (dims.hidden,)}
    if out_dim is not None:
        shapes["pi_c"] = (out_dim,)
    q, kv = dims.n_heads * dims.head_dim, dims.n_kv_heads * dims.head_dim
    ffn = (dims.n_experts, dims.ffn) if dims.n_experts else (dims.ffn,)
    for i in range(dims.n_layers):
        shapes.update({f"layers.{i}.pi_i1_q": (q,), f"layers.{i}.pi_i1_k": (kv,), f"layers.{i}.pi_i2_v": (kv,),
                       f"layers.{i}.pi_i2_o": (q,), f"layers.{i}.pi_i3": ffn})
    return shapes


def check_keys(keys: KeySet, model_type: str, dims: Dims, out_dim: int | None, user_only: bool = False) -> None:
    """Raise KeyMismatchError unless `keys` were made for this model and every key is well formed.

    `user_only` checks the user's subset (pi, pi_c) only, as a registered device holds.
    """
    _check_metadata(keys, model_metadata(model_type, dims, out_dim))
    expected = expected_key_shapes(dims, out_dim)
    if user_only:
        expected = {name: shape for name, shape in expected.items() if name in USER_KEYS}
    keys.check_shapes(expected)
    for name in expected:
        _check_permutation(name, keys[name])
    if not user_only:
        for i in range(dims.n_layers):
            _check_heads(keys, i, dims)


def _check_metadata(keys: KeySet, wanted: dict[str, str]) -> None:
    for field, value in wanted.items():
        found = keys.metadata.get(field)
        if found is None:
            raise KeyMismatchError(f"the keys carry no '{field}' metadata (made by an older stip, or built by "
                                   f"hand), so they cannot be checked against this model: {WAY_OUT}")
        if found != value:
            raise KeyMismatchError(f"the keys were made for {field}={found} but this model has {field}={value}: "
                                   f"they belong to another model; {WAY_OUT}")


def _check_permutation(name: str, key: torch.Tensor) -> None:
    if key.dtype != torch.long:
        raise KeyMismatchError(f"key '{name}' has dtype {key.dtype}, not int64: not a permutation; {WAY_OUT}")
    rows = key.reshape(-1, key.shape[-1])
    if not torch.equal(rows.sort(dim=-1).values, torch.arange(rows.shape[-1]).expand_as(rows)):
        raise KeyMismatchError(f"key '{name}' is not a permutation (a repeated or out-of-range index); {WAY_OUT}")


def _check_heads(keys: KeySet, layer: int, dims: Dims) -> None:
    """Q/K/V/O keys move whole heads (KV groups with their query heads) as attention needs.

    K and V move KV heads in one shared order; each query head comes from the group its K
    head came from; Q and K share a within-head order per group (the identity under RoPE);
    the O-projection input follows the query heads with V's within-head order.
    """
    hd, n_kv = dims.head_dim, dims.n_kv_heads
    group = dims.n_heads // n_kv
    q, k, v, o = (keys[f"layers.{layer}.{n}"].view(-1, hd) for n in ("pi_i1_q", "pi_i1_k", "pi_i2_v", "pi_i2_o"))

    def fail(what: str) -> None:
        raise KeyMismatchError(f"layer {layer}: {what} (n_heads={dims.n_heads}, n_kv_heads={n_kv}, "
                               f"head_dim={hd}, rope={dims.rope}); the keys would give a wrong model; {WAY_OUT}")

    for name, key in (("pi_i1_q", q), ("pi_i1_k", k), ("pi_i2_v", v), ("pi_i2_o", o)):
        if not torch.equal(key // hd, (key[:, :1] // hd).expand_as(key)):
            fail(f"key '{name}' mixes features of different heads")
    k_heads, v_heads, q_heads, o_heads = k[:, 0] // hd, v[:, 0] // hd, q[:, 0] // hd, o[:, 0] // hd
    if not torch.equal(k_heads, v_heads):
        fail("K and V keys move the KV heads in different orders")
    if not torch.equal(q_heads // group, k_heads.repeat_interleave(group)):
        fail("query heads do not move with their KV group")
    if not torch.equal(q_heads, o_heads):
        fail("the O-projection key does not follow the query heads")
    k_within, v_within = k % hd, v % hd
    if not torch.equal(q % hd, k_within.repeat_interleave(group, dim=0)):
        fail("Q and K keys order the features inside a head differently")
    if not torch.equal(o % hd, v_within.repeat_interleave(group, dim=0)):
        fail("the O-projection key does not follow V's order inside a head")
    if dims.rope and not torch.equal(k_within, torch.arange(hd).expand_as(k_within)):
        fail("under RoPE the order inside a Q/K head must stay fixed, but these keys permute it")


WEIGHTS_ID_FIELD = "stip_weights_id"  # the cloud config's fingerprint of the device module it was made with


def weights_fingerprint(module: torch.nn.Module, keys: KeySet) -> str:
    """A keyed hash of the device module's tensors, so a device built for other weights is refused.

    The key id names keys, not weights: a fine-tune re-transformed with the same keys would accept an
    old device. Keyed by the user keys (pi, pi_c), so the cloud, which sees it, cannot test a guess of
    the weights. Floats are hashed as float32: a bf16 copy of the same weights matches.
    """
    secret = hashlib.sha256(b"stip-weights-id-v1")
    for name in sorted(n for n in USER_KEYS if n in keys.tensors):
        secret.update(keys[name].to(torch.long).contiguous().numpy().tobytes())
    digest = hashlib.blake2b(key=secret.digest(), digest_size=16)
    tensors = dict(module.named_parameters()) | dict(module.named_buffers())
    for name in sorted(tensors):
        t = tensors[name].detach()
        t = t.float() if t.is_floating_point() else t
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(t.contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()
