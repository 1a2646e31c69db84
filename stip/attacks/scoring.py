"""Honest scores for attack rows: real positions only, per position and per distinct token; keys on what is secret.

`token_scores` drops pad positions and gives both the per-position rate (frequent tokens weigh more) and
the per-distinct-token rate (each distinct true token weighs once: the mean over distinct tokens of the
share of its positions recovered). `key_space_bits` counts what each STIP key can be, given how
`stip.keys` draws it (whole KV groups move; Q/K keep their within-head order under RoPE), so a key with
one possible value (one KV head under RoPE) is forced, not secret, and is left out of every key score.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, TypedDict

import torch

from ..families import Dims
from ..keys import KeySet
from .rows import row

# One vocabulary for the rows' `metric` column (attack rows; units in brackets).
METRICS = {
    "token_recovery": "share of real (non-pad) token positions whose token the attack names [fraction]",
    "distinct_token_recovery": "mean over distinct real tokens of the share of their positions recovered [fraction]",
    "key_recovered": "share of one secret key's entries recovered; forced keys (0 bits) are not scored [fraction]",
    "key_exact": "1 if one secret key is recovered whole, else 0 [fraction]",
    "secret_keys_mean_recovered": "mean of key_recovered over the secret (non-forced) keys [fraction]",
    "key_space_bits_recovered": "bits of the secret keys recovered whole over all secret keys' bits [fraction]",
    "effective_key_space_bits": "log2 of the number of possible key sets (independent draws only) [bits]",
    "pi_recovered": "share of pi's entries recovered (known plaintext, ViT CLS row, an alignment) [fraction]",
    "argmax_decoded_with_recovered_pi_c": "share of real positions whose argmax the recovered pi_c decodes [fraction]",
    "positions_recovered": "output side: share of traffic positions whose argmax index is decoded right [fraction]",
    "distinct_indices_recovered": "output side: share of distinct argmax indices seen that are mapped right [fraction]",
    "distinct_indices": "output side: distinct argmax indices seen in the traffic [count]",
    "pi_c_named_recovered": "output side: share of the pi_c entries an attack named that are right [fraction]",
    "pixel_relative_error": "ViT: ||recovered - true patches|| / ||true patches|| (lower = better attack) [ratio]",
    "max_abs_error": "functional theft: max |stolen - original| output [abs]",
    "top1_agreement": "top-1 agreement with plaintext at real positions (theft, noise defence accuracy) [fraction]",
    "pooled_cosine": "noise defence accuracy without logits: cosine of mean-pooled last states [cosine]",
    "prompt_kind_accuracy": "speculation trace: leave-one-out share of prompts whose kind is named [fraction]",
    # a scheme's accuracy and cost beside its attacks (stip/attacks/matrix.py, the scheme x attack matrix)
    "max_abs_logit_diff": "scheme accuracy: max |scheme - plaintext| logit at real positions [logit]",
    "call_latency": "scheme cost: median seconds of one in-process forward through the scheme's cloud model [s]",
    "latency_ratio_vs_plaintext": "scheme cost: call_latency / the plaintext model's, same batch, interleaved [ratio]",
    "upload_bytes_per_token": "scheme cost: bytes the device sends per token (one hidden vector) [bytes]",
    "download_bytes_per_token": "scheme cost: bytes the cloud returns per token (one logit row) [bytes]",
    "transform_seconds": "scheme cost: seconds to transform the model once (keys drawn, weights rewritten) [s]",
    "per_session_retransform_seconds": "fresh keys: median seconds to re-transform the model per session [s]",
    "per_session_cloud_bytes": "fresh keys: bytes of the transformed model shipped to the cloud per session [bytes]",
}


def token_scores(guess: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, float]:
    """{token_recovery, distinct_token_recovery, n_real_tokens, n_distinct_tokens} over the real positions.

    `guess` and `truth` share a shape; `mask` (same shape, True = real) drops pads; None = every position real.
    """
    if guess.shape != truth.shape:
        raise ValueError(f"guess {tuple(guess.shape)} and truth {tuple(truth.shape)} differ; align them first")
    keep = torch.ones_like(truth, dtype=torch.bool) if mask is None else mask.bool()
    if keep.shape != truth.shape:
        raise ValueError(f"mask {tuple(keep.shape)} does not match truth {tuple(truth.shape)}")
    t, g = truth[keep].long(), guess[keep].long()
    if t.numel() == 0:
        raise ValueError("no real positions to score (the mask is all False)")
    hit = (g == t).double()
    distinct, inverse = torch.unique(t, return_inverse=True)
    per_token = torch.zeros(distinct.numel(), dtype=torch.double).index_add_(0, inverse, hit)
    counts = torch.bincount(inverse, minlength=distinct.numel()).double()
    return {"token_recovery": float(hit.mean()), "distinct_token_recovery": float((per_token / counts).mean()),
            "n_real_tokens": int(t.numel()), "n_distinct_tokens": int(distinct.numel())}


def token_rows(attack: str, name: str, family: str, assumption: str, guess: torch.Tensor, truth: torch.Tensor,
               mask: torch.Tensor | None, n_queries: int, seconds: float, **params: Any) -> list[dict[str, Any]]:
    """Two tidy rows, real positions only: token_recovery (per position) and distinct_token_recovery."""
    s = token_scores(guess.reshape(truth.shape), truth, mask)
    common = dict(n_real_tokens=s["n_real_tokens"], n_distinct_tokens=s["n_distinct_tokens"],
                  n_pad_positions=int(truth.numel() - s["n_real_tokens"]), **params)
    return [row(attack, name, family, assumption, metric, s[metric], "fraction", n_queries, seconds, **common)
            for metric in ("token_recovery", "distinct_token_recovery")]


def log2_factorial(n: int) -> float:
    """log2(n!), the bits of a uniformly random permutation of n items."""
    return math.lgamma(n + 1) / math.log(2)


def key_space_bits(dims: Dims, out_dim: int | None) -> dict[str, float]:
    """{key name: log2 of the values it can take} for every key `stip.transform.generate_keys` draws.

    Attention keys share draws (the KV-group order moves Q, K, V and O together), so their bits overlap;
    `effective_key_space_bits` counts each draw once.
    """
    group = dims.n_heads // dims.n_kv_heads
    kv = log2_factorial(dims.n_kv_heads)
    within_qk = 0.0 if dims.rope else dims.n_kv_heads * log2_factorial(dims.head_dim)
    within_v = dims.n_kv_heads * log2_factorial(dims.head_dim)
    q_in_group = dims.n_kv_heads * log2_factorial(group)
    ffn = log2_factorial(dims.ffn) * (dims.n_experts or 1)
    bits = {"pi": log2_factorial(dims.hidden)}
    if out_dim is not None:
        bits["pi_c"] = log2_factorial(out_dim)
    for i in range(dims.n_layers):
        bits.update({f"layers.{i}.pi_i1_k": kv + within_qk, f"layers.{i}.pi_i1_q": kv + within_qk + q_in_group,
                     f"layers.{i}.pi_i2_v": kv + within_v, f"layers.{i}.pi_i2_o": kv + within_v + q_in_group,
                     f"layers.{i}.pi_i3": ffn})
    return bits


def effective_key_space_bits(dims: Dims, out_dim: int | None) -> float:
    """log2 of the number of key sets: each independent draw counted once (pi, pi_c, and per layer the
    KV-group order, the within-head orders, the Q-in-group orders and the FFN order)."""
    bits = key_space_bits(dims, out_dim)
    group = dims.n_heads // dims.n_kv_heads
    within_qk = 0.0 if dims.rope else dims.n_kv_heads * log2_factorial(dims.head_dim)
    per_layer = (log2_factorial(dims.n_kv_heads) + within_qk + dims.n_kv_heads * log2_factorial(dims.head_dim)
                 + dims.n_kv_heads * log2_factorial(group) + log2_factorial(dims.ffn) * (dims.n_experts or 1))
    return bits["pi"] + bits.get("pi_c", 0.0) + dims.n_layers * per_layer


def secret_keys(dims: Dims, out_dim: int | None) -> dict[str, float]:
    """The keys worth scoring: those with more than one possible value (bits > 0)."""
    return {k: b for k, b in key_space_bits(dims, out_dim).items() if b > 0}


class KeyScores(TypedDict):
    """What `key_scores` returns: each field a row's value (or, per_key, one row per key)."""

    per_key: dict[str, tuple[float, bool]]
    forced: list[str]
    secret_keys_mean_recovered: float
    n_secret_keys: int
    n_secret_keys_attempted: int
    key_space_bits_recovered: float
    effective_key_space_bits: float


def key_scores(recovered: Mapping[str, torch.Tensor], keys: KeySet, dims: Dims,
               out_dim: int | None) -> KeyScores:
    """Score recovered keys {name: index} against the truth, secret keys only.

    Returns per_key {name: (entry fraction, exact)}, the forced keys left out, the mean over the secret
    keys attempted, the share of the secret keys' bits (each key's own, shared draws counted per key) in
    keys recovered whole, and the effective key space (each draw once).
    """
    bits = key_space_bits(dims, out_dim)
    secret = {k: b for k, b in bits.items() if b > 0}
    per_key: dict[str, tuple[float, bool]] = {}
    for name, index in recovered.items():
        if name not in secret or name not in keys:
            continue
        truth = keys[name]
        if truth.shape != index.shape:
            continue  # e.g. per-expert keys the attack did not attempt
        per_key[name] = (float((index == truth).float().mean()), bool(torch.equal(index, truth)))
    exact_bits = sum(secret[k] for k, (_, exact) in per_key.items() if exact)
    return {"per_key": per_key,
            "forced": sorted(k for k, b in bits.items() if b == 0),
            "secret_keys_mean_recovered": (sum(f for f, _ in per_key.values()) / len(per_key)) if per_key else 0.0,
            "n_secret_keys": len(secret), "n_secret_keys_attempted": len(per_key),
            "key_space_bits_recovered": exact_bits / sum(secret.values()) if secret else 0.0,
            "effective_key_space_bits": effective_key_space_bits(dims, out_dim)}
