"""MoE routing leakage: the router's output (the experts) is not permuted, so routing is plaintext.

Assumption: the cloud holds the public base model (router included) and sees, at every MoE
layer, the router logits (or only the chosen experts) of each token; position by position it
tries candidate tokens after the recovered prefix through the public model and keeps the one
whose routing matches best.
"""
from __future__ import annotations

import torch
from transformers import PreTrainedModel

from .hidden import embedding_table

ASSUMPTION = "cloud holds the public base model and router and sees each token's routing; no key"


@torch.no_grad()
def router_logits(model: PreTrainedModel, **inputs: torch.Tensor) -> torch.Tensor:
    """[batch, seq, layers, experts]: every MoE layer's router logits (what the cloud computes)."""
    batch, seq = next(iter(inputs.values())).shape[:2]
    out = model.base_model(**inputs, output_router_logits=True)
    return torch.stack([r.reshape(batch, seq, -1) for r in out.router_logits], dim=2)


def _choices(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """Multi-hot [.., layers, experts] of the top_k experts per layer."""
    return torch.zeros_like(logits).scatter_(-1, logits.topk(top_k, dim=-1).indices, 1.0)


@torch.no_grad()
def routing_token_recovery(observed: torch.Tensor, public_model: PreTrainedModel, top_k: int,
                           use: str = "logits", candidates: torch.Tensor | None = None) -> torch.Tensor:
    """Tokens of one sequence from its routing [seq, layers, experts].

    `use="logits"`: nearest router logits; `use="choices"`: most layers with the same expert set
    (the first such candidate on a tie, as an attacker without logits must pick one).
    """
    if use not in ("logits", "choices"):
        raise ValueError(f"use must be 'logits' or 'choices', got {use!r}")
    if candidates is None:
        candidates = torch.arange(embedding_table(public_model).shape[0])
    guesses: list[int] = []
    for t in range(observed.shape[0]):
        prefix = torch.tensor(guesses, dtype=torch.long).expand(candidates.numel(), t)
        cand = router_logits(public_model, input_ids=torch.cat([prefix, candidates[:, None]], 1))[:, -1]
        if use == "logits":
            score = (cand - observed[t]).flatten(1).norm(dim=-1)
        else:
            score = -(_choices(cand, top_k) * _choices(observed[t], top_k)).sum(dim=(-1, -2))
        guesses.append(int(candidates[score.argmin()]))
    return torch.tensor(guesses, dtype=torch.long)
