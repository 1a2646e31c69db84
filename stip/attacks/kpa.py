"""Known-plaintext recovery of `pi` from n (x, x @ pi) pairs by column matching.

Assumption: the cloud knows n plaintext embeddings next to their permuted rows (e.g. a BOS
or [CLS] row, a ViT CLS row, or text it got the user to send).
"""
from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment

EXACT = "donot_use_mm_for_euclid_dist"  # cdist's matrix-product shortcut rounds near-equal values apart
ASSUMPTION = "cloud knows n plaintext embedding rows and sees their permuted rows"


def known_plaintext_permutation(plain: torch.Tensor, permuted: torch.Tensor) -> torch.Tensor:
    """Recover `pi` from (x, x @ pi) rows by nearest column: x_perm[:, j] = x[:, pi[j]].

    Uses every row given; exact when the columns are distinct (one float32 row usually is).
    """
    a = plain.reshape(-1, plain.shape[-1]).T.float()  # [d, n] columns of x
    b = permuted.reshape(-1, permuted.shape[-1]).T.float()
    return torch.cdist(b, a, compute_mode=EXACT).argmin(dim=-1)


def assignment_permutation(plain: torch.Tensor, permuted: torch.Tensor) -> torch.Tensor:
    """Like known_plaintext_permutation but a one-to-one (Hungarian) column assignment: robust to noise."""
    a = plain.reshape(-1, plain.shape[-1]).T.double()
    b = permuted.reshape(-1, permuted.shape[-1]).T.double()
    _, cols = linear_sum_assignment(torch.cdist(b, a, compute_mode=EXACT).numpy())
    return torch.as_tensor(cols, dtype=torch.long)
