"""Attacks a curious cloud can run on what STIP sends it: measured, not assumed (STIP.md).

A permutation hides where each feature went, not which values a row holds: both attacks
below exploit that.
"""
from __future__ import annotations

import torch


def fingerprint_token_recovery(permuted: torch.Tensor, embedding_table: torch.Tensor,
                               chunk: int = 4096) -> torch.Tensor:
    """Ciphertext-only: guess each token by matching the row's sorted values to sorted table rows.

    `permuted` is what crossed the wire ([..., d]); `embedding_table` is the public [V, d]
    embedding. Returns token guesses shaped like `permuted` without its last dim.
    """
    rows = permuted.reshape(-1, permuted.shape[-1]).sort(dim=-1).values.float()
    best_dist = torch.full((rows.shape[0],), float("inf"))
    best = torch.zeros(rows.shape[0], dtype=torch.long)
    for start in range(0, embedding_table.shape[0], chunk):
        table = embedding_table[start:start + chunk].sort(dim=-1).values.float()
        dist, idx = torch.cdist(rows, table).min(dim=-1)
        better = dist < best_dist
        best_dist, best = torch.where(better, dist, best_dist), torch.where(better, idx + start, best)
    return best.view(permuted.shape[:-1])


def known_plaintext_permutation(plain: torch.Tensor, permuted: torch.Tensor) -> torch.Tensor:
    """Recover `pi` from one (x, x @ pi) pair by column matching: x_perm[j] = x[pi[j]].

    Uses every row given: the column of `plain` whose values equal column j of `permuted`.
    """
    a = plain.reshape(-1, plain.shape[-1]).T.float()  # [d, n] columns of x
    b = permuted.reshape(-1, permuted.shape[-1]).T.float()
    return torch.cdist(b, a).argmin(dim=-1)
