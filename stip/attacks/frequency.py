"""Output-side frequency analysis of the fixed output permutation `pi_c`.

Assumption: the cloud holds the public base model and public text; it sees (or computes, since
it runs the model) the permuted argmax index at every position of many users' traffic, all
under the same `pi_c`. It ranks those indices by frequency and maps them, rank for rank, onto
the tokens the public model predicts most often on public text. Rank for rank breaks as soon as two
frequent tokens swap ranks between the users' text and the public text, so `logit_profiles` and
`profile_mapping` match each output index on a profile of its logits over the traffic instead (the
cloud computes the permuted logits; several features, nearest or one-to-one), which a rank swap leaves alone.
"""
from __future__ import annotations

from collections import Counter
from typing import Iterable

import torch
from scipy.optimize import linear_sum_assignment
from transformers import PreTrainedModel

ASSUMPTION = ("cloud holds the public model and public text and sees the permuted argmax index of "
              "every position of many queries under one pi_c; no key")


@torch.no_grad()
def argmax_indices(model: PreTrainedModel, chunks: Iterable[torch.Tensor], **kwargs) -> torch.Tensor:
    """The argmax vocabulary index at every position of each [1, seq] chunk (input_ids or inputs_embeds)."""
    name = kwargs.pop("input_name", "input_ids")
    return torch.cat([model(**{name: c}, **kwargs).logits.argmax(-1).reshape(-1) for c in chunks])


def frequency_mapping(observed: torch.Tensor, reference: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """guess[j] = the token whose reference frequency rank equals index j's observed rank (-1: unseen)."""
    guess = torch.full((vocab_size,), -1, dtype=torch.long)
    ranked_obs = [i for i, _ in Counter(observed.tolist()).most_common()]
    ranked_ref = [t for t, _ in Counter(reference.tolist()).most_common()]
    for j, t in zip(ranked_obs, ranked_ref):
        guess[j] = t
    return guess


def frequency_recovery(observed: torch.Tensor, truth: torch.Tensor, guess: torch.Tensor) -> dict[str, float]:
    """Share of traffic positions decoded right, and share of distinct observed indices mapped right."""
    right = guess[observed] == truth
    distinct = torch.unique(observed)
    truth_of = {int(o): int(t) for o, t in zip(observed, truth)}
    mapped = sum(int(guess[j]) == truth_of[int(j)] for j in distinct)
    return {"positions_recovered": float(right.float().mean()),
            "distinct_indices_recovered": mapped / max(1, distinct.numel()),
            "distinct_indices": float(distinct.numel())}


PROFILE_ASSUMPTION = ("cloud holds the public model and public text and computes the permuted logits of many "
                      "queries under one pi_c (it runs the head); matches each output index's logit profile over "
                      "the traffic to the public model's per-token profile on public text; no key")
PROFILE_FEATURES = ("mean", "std", "skew", "max", "argmax_share")


@torch.no_grad()
def logit_profiles(model: PreTrainedModel, chunks: Iterable[torch.Tensor], **kwargs) -> torch.Tensor:
    """[V, 5]: per vocabulary index, the mean, std, skew and max of its logit over every position (each
    position's logits standardised first, which a permutation cannot hide) and its share of argmaxes."""
    name = kwargs.pop("input_name", "input_ids")
    # running (sum z, sum z^2, sum z^3, max z, argmax count) per vocabulary index
    acc: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    n = 0
    for c in chunks:
        logits = model(**{name: c}, **kwargs).logits
        logits = logits.reshape(-1, logits.shape[-1]).double()
        z = (logits - logits.mean(-1, keepdim=True)) / logits.std(-1, keepdim=True).clamp_min(1e-12)
        wins = torch.bincount(z.argmax(-1), minlength=z.shape[1]).double()
        if acc is None:
            acc = (z.sum(0), z.pow(2).sum(0), z.pow(3).sum(0), z.max(0).values, wins)
        else:
            acc = (acc[0] + z.sum(0), acc[1] + z.pow(2).sum(0), acc[2] + z.pow(3).sum(0),
                   torch.maximum(acc[3], z.max(0).values), acc[4] + wins)
        n += z.shape[0]
    if acc is None:
        raise ValueError("no chunks given; pass at least one [1, seq] chunk")
    s1, s2, s3, top, wins = acc
    mean = s1 / n
    var = (s2 / n - mean.pow(2)).clamp_min(1e-12)
    skew = (s3 / n - 3 * mean * var - mean.pow(3)) / var.pow(1.5)
    return torch.stack([mean, var.sqrt(), skew, top, torch.log1p(wins / n * 1e4)], dim=1).float()


def profile_mapping(observed: torch.Tensor, reference: torch.Tensor, indices: torch.Tensor | None = None,
                    hungarian_limit: int = 4096, chunk: int = 1024) -> torch.Tensor:
    """guess[j] = the token whose reference profile is nearest index j's observed profile (-1: not asked).

    Every index (or only `indices`) is matched against every token: one-to-one (Hungarian) up to
    `hungarian_limit` indices, else nearest. Features are scaled by their spread over the reference.
    """
    scale = reference.std(0).clamp_min(1e-12)
    a, b = observed / scale, reference / scale
    rows = torch.arange(a.shape[0]) if indices is None else torch.unique(indices)
    guess = torch.full((a.shape[0],), -1, dtype=torch.long)
    if rows.numel() == b.shape[0] and rows.numel() <= hungarian_limit:
        _, cols = linear_sum_assignment(torch.cdist(a.double(), b.double()).numpy())
        guess[:] = torch.as_tensor(cols, dtype=torch.long)
        return guess
    for start in range(0, rows.numel(), chunk):
        r = rows[start:start + chunk]
        guess[r] = torch.cdist(a[r], b).argmin(-1)
    return guess
