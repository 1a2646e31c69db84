"""Output-side frequency analysis of the fixed output permutation `pi_c`.

Assumption: the cloud holds the public base model and public text; it sees (or computes, since
it runs the model) the permuted argmax index at every position of many users' traffic, all
under the same `pi_c`. It ranks those indices by frequency and maps them, rank for rank, onto
the tokens the public model predicts most often on public text.
"""
from __future__ import annotations

from collections import Counter
from typing import Iterable

import torch
from torch import nn

ASSUMPTION = ("cloud holds the public model and public text and sees the permuted argmax index of "
              "every position of many queries under one pi_c; no key")


@torch.no_grad()
def argmax_indices(model: nn.Module, chunks: Iterable[torch.Tensor], **kwargs) -> torch.Tensor:
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
