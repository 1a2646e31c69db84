"""Embedding multiset matching: a feature permutation keeps each row's multiset of values.

Assumption: the cloud holds the public embedding table (or ViT patch module) and sees the
permuted embeddings; it knows no key.
"""
from __future__ import annotations

import torch
from transformers.models.vit.modeling_vit import ViTEmbeddings

from .kpa import known_plaintext_permutation

ASSUMPTION = "cloud holds the public embedding table and sees the permuted embeddings; no key"
PATCH_ASSUMPTION = "cloud holds the public ViT patch embedding module (CLS, positions, projection); no key"


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
        table = embedding_table[start:start + chunk].detach().sort(dim=-1).values.float()
        dist, idx = torch.cdist(rows, table).min(dim=-1)
        better = dist < best_dist
        best_dist, best = torch.where(better, dist, best_dist), torch.where(better, idx + start, best)
    return best.view(permuted.shape[:-1])


@torch.no_grad()
def recover_with_position_tables(permuted: torch.Tensor, device_embed, vocab: int) -> torch.Tensor:
    """Multiset matching where the device module adds positions (RoBERTa): one table per position.

    `device_embed` maps ids [n, seq] to embeddings (the public device module); the table for
    position t embeds each id repeated t + 1 times and keeps the last row.
    """
    guesses = []
    for t in range(permuted.shape[1]):
        table = device_embed(torch.arange(vocab)[:, None].expand(vocab, t + 1))[:, -1]
        guesses.append(fingerprint_token_recovery(permuted[:, t], table))
    return torch.stack(guesses, dim=1)


def adds_positions(device_embed, token: int = 3) -> bool:
    """Whether the device module's output depends on the position (the same id twice differs)."""
    rows = device_embed(torch.tensor([[token, token]]))[0]
    return not torch.equal(rows[0], rows[1])


@torch.no_grad()
def vit_patch_recovery(permuted: torch.Tensor, vit_embeddings: ViTEmbeddings,
                       patch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ViT analogue: the CLS row (cls + pos[0]) is known plaintext, so it gives `pi`; then
    each patch row is un-permuted and the public linear patch projection inverted (least squares).

    `permuted` is one image's wire tensor [1 + n_patches, d]. Returns (pi guess, patches
    [n_patches, channels * patch_size**2] in the projection's flattening order).
    """
    cls_row = (vit_embeddings.cls_token[0, 0] + vit_embeddings.position_embeddings[0, 0]).float()
    pi = known_plaintext_permutation(cls_row[None], permuted[:1].float())
    plain = torch.empty_like(permuted, dtype=torch.float32)
    plain[:, pi] = permuted.float()  # plain[..., pi[j]] = x_perm[..., j]
    proj = vit_embeddings.patch_embeddings.projection
    if proj.bias is None:
        raise ValueError("the ViT patch projection has no bias; this inversion subtracts it (a ViT's has one)")
    weight = proj.weight.reshape(proj.weight.shape[0], -1).float()  # [d, C*p*p]
    target = plain[1:] - vit_embeddings.position_embeddings[0, 1:].float() - proj.bias.float()
    patches = torch.linalg.lstsq(weight, target.T).solution.T  # minimum-norm where d < C*p*p
    return pi, patches


def image_patches(pixel_values: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[C, H, W] -> [n_patches, C*p*p], row-major over patches, in Conv2d's weight flattening order."""
    c, _, _ = pixel_values.shape
    p = patch_size
    tiles = pixel_values.unfold(1, p, p).unfold(2, p, p)  # [C, h, w, p, p]
    return tiles.permute(1, 2, 0, 3, 4).reshape(-1, c * p * p)
