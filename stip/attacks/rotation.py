"""Attacks adapted to an orthogonal rotation of the residual stream (stip/schemes.py's rotation arm).

A rotation is not a permutation: a row's multiset of values changes, so the multiset and sorted-state
attacks fail by construction. What a rotation keeps is every inner product, and the weights still
determine Q:
- `procrustes_rotation`: weight alignment. Cloud readers are (W diag(g)) Q and writers Q^T W, so
  stacking the public base's folded weights A against the cloud's B gives B = A Q; the orthogonal
  Procrustes solution (SVD of A^T B) is Q when A has full column rank. Assumption: the cloud holds its
  weights and the public base; no key, no traffic.
- `known_plaintext_rotation`: Procrustes from n known (x, x Q) rows (exact once they span the d features).
- `gram_token_recovery`: hidden-state vocabulary matching with an invariant of every orthogonal map
  (a permutation included): at position t each candidate's inner products with the recovered prefix's
  states <h_t, h_j>, j <= t, are compared with the observed ones <x_t, x_j>.
"""
from __future__ import annotations

import torch
from transformers import PreTrainedModel

from .hidden import embedding_table, states_at

PROCRUSTES_ASSUMPTION = ("cloud holds its transformed weights and the public base weights; no key, no traffic; "
                         "then decodes traffic with the recovered rotation (nearest public embedding row)")
KPA_ASSUMPTION = "cloud knows n plaintext embedding rows of one session and sees their transformed rows"
GRAM_ASSUMPTION = ("cloud holds the public base model and sees the transformed hidden state at layer l; "
                   "no key; matches inner products with the recovered prefix (invariant to any orthogonal map)")


def orthogonal_procrustes(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """argmin over orthogonal Q of ||a Q - b||_F, from the cross-product a^T b (float64)."""
    u, _, vt = torch.linalg.svd(a.double().T @ b.double())
    return u @ vt


@torch.no_grad()
def procrustes_rotation(cloud: PreTrainedModel, base: PreTrainedModel) -> torch.Tensor:
    """Q estimated from the cloud's weights and the public base's (norm scales folded as the arm folds them)."""
    cross = None
    for lc, lb in zip(cloud.model.layers, base.model.layers):
        pairs = []
        for norm, names in ((lb.input_layernorm, ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
                            (lb.post_attention_layernorm, ("mlp.gate_proj", "mlp.up_proj"))):
            g = norm.weight.double()[None, :]
            pairs += [(lb.get_submodule(n).weight.double() * g, lc.get_submodule(n).weight.double()) for n in names]
        pairs += [(lb.get_submodule(n).weight.double().T, lc.get_submodule(n).weight.double().T)
                  for n in ("self_attn.o_proj", "mlp.down_proj")]
        for a, b in pairs:
            cross = a.T @ b if cross is None else cross + a.T @ b
    if cross is None:
        raise ValueError(f"{type(cloud).__name__} has no layers to align")
    u, _, vt = torch.linalg.svd(cross)
    return u @ vt


def known_plaintext_rotation(plain: torch.Tensor, wire: torch.Tensor) -> torch.Tensor:
    """Q from n (x, x Q) rows by orthogonal Procrustes (underdetermined below d rows)."""
    return orthogonal_procrustes(plain.reshape(-1, plain.shape[-1]), wire.reshape(-1, wire.shape[-1]))


@torch.no_grad()
def gram_token_recovery(observed: torch.Tensor, public_model: PreTrainedModel, layer: int,
                        candidates: torch.Tensor | None = None, batch: int = 512) -> torch.Tensor:
    """Recover one sequence's tokens from its transformed layer-`layer` states [seq, d].

    Each position is decoded after the prefix already recovered (errors propagate); the statistic is
    the vector of inner products with the prefix's states, blind to any orthogonal transform.
    `layer` 0 is the embedding output (what the device sends).
    """
    if candidates is None:
        candidates = torch.arange(embedding_table(public_model).shape[0])
    obs = observed.double()
    guesses: list[int] = []
    for t in range(obs.shape[0]):
        target = obs[: t + 1] @ obs[t]  # [t + 1]
        prefix = torch.tensor(guesses, dtype=torch.long)
        best, best_dist = -1, float("inf")
        for start in range(0, candidates.numel(), batch):
            cand = candidates[start:start + batch]
            ids = torch.cat([prefix.expand(cand.numel(), t), cand[:, None]], dim=1)
            states = states_at(public_model, layer, input_ids=ids).double()  # [c, t + 1, d]
            stat = torch.einsum("cjd,cd->cj", states, states[:, -1])
            dist, idx = (stat - target).norm(dim=-1).min(dim=0)
            if float(dist) < best_dist:
                best, best_dist = int(cand[idx]), float(dist)
        guesses.append(best)
    return torch.tensor(guesses, dtype=torch.long)
