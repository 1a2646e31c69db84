"""The same attacks against the baselines' shapes, on plain tensors (no bench/ or baselines/ import).

Random projection: the device sends x @ R with a secret Gaussian R [d, k]. Model split: the
device runs the first layers itself and sends their activations in the clear.
"""
from __future__ import annotations

import torch
from transformers import PreTrainedModel

from .hidden import hidden_state_token_recovery

PROJECTION_KPA_ASSUMPTION = "cloud knows n plaintext embedding rows and sees their projections x @ R"
PROJECTION_MULTISET_ASSUMPTION = "cloud holds the public embedding table and sees x @ R; R unknown"
SPLIT_ASSUMPTION = ("cloud holds the public base model (the device's layers included) and sees the "
                    "device's layer-l activations in the clear")


def gaussian_projection(d: int, k: int, seed: int) -> torch.Tensor:
    """A secret random projection R [d, k] with N(0, 1/k) entries (norms kept in expectation)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(d, k, generator=gen) / k ** 0.5


def projection_known_plaintext(plain: torch.Tensor, projected: torch.Tensor) -> torch.Tensor:
    """R estimated by least squares from n (x, x @ R) rows: exact once the rows span the d features."""
    x = plain.reshape(-1, plain.shape[-1]).double()
    y = projected.reshape(-1, projected.shape[-1]).double()
    return torch.linalg.lstsq(x, y, driver="gelsd").solution.float()


def nearest_tokens(plain_guess: torch.Tensor, embedding_table: torch.Tensor,
                   chunk: int = 4096) -> torch.Tensor:
    """Token ids whose table rows are nearest to each guessed plaintext embedding row."""
    rows = plain_guess.reshape(-1, plain_guess.shape[-1]).float()
    best_dist = torch.full((rows.shape[0],), float("inf"))
    best = torch.zeros(rows.shape[0], dtype=torch.long)
    for start in range(0, embedding_table.shape[0], chunk):
        dist, idx = torch.cdist(rows, embedding_table[start:start + chunk].detach().float()).min(dim=-1)
        better = dist < best_dist
        best_dist, best = torch.where(better, dist, best_dist), torch.where(better, idx + start, best)
    return best.view(plain_guess.shape[:-1])


def projection_token_recovery(projected: torch.Tensor, r_guess: torch.Tensor,
                              embedding_table: torch.Tensor) -> torch.Tensor:
    """Decode projected rows with an estimated R (pseudo-inverse), then nearest table row."""
    return nearest_tokens(projected.float() @ torch.linalg.pinv(r_guess), embedding_table)


def split_token_recovery(activations: torch.Tensor, public_model: PreTrainedModel, layer: int,
                         candidates: torch.Tensor | None = None) -> torch.Tensor:
    """Invert a model split's clear layer-`layer` activations [seq, d] by vocabulary matching."""
    return hidden_state_token_recovery(activations, public_model, layer, candidates, statistic="raw")
