"""The noise defence's frontier: attack success against accuracy loss over a range of sigma.

Each sigma is given relative to the RMS of the public embedding table (sigma_rel) and applied
as DataOwner(noise_sigma=sigma_rel * rms); accuracy is top-1 agreement of the decoded outputs
with plaintext (Table 5's metric; for a model without logits, the cosine of the mean-pooled
last hidden state with plaintext's).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn
from transformers import PreTrainedModel

from ..parties import DataOwner, ModelDeveloper, ModelServer
from . import baselines, kpa, multiset, weights
from .rows import row, timer
from .scoring import token_rows

DEFENCE = "defence: the device adds fresh N(0, sigma^2) noise to the permuted embeddings"


def embedding_rms(model: PreTrainedModel) -> float:
    """RMS of the public embedding table: the unit sigma_rel is measured in."""
    return float(public_table(ModelDeveloper(model, seed=0).data_owner()).float().pow(2).mean().sqrt())


@torch.no_grad()
def public_table(device: DataOwner) -> torch.Tensor:
    """[V, d]: the device module's output for each token id at the first position (scaled as it embeds)."""
    vocab = getattr(device.embedding, "num_embeddings", None)
    if vocab is None:
        vocab = next(m.num_embeddings for m in device.embedding.modules() if isinstance(m, nn.Embedding))
    return device.embed(torch.arange(vocab)[:, None])[:, 0]  # each id at the first position


@torch.no_grad()
def accuracy(plain_out: Any, decoded: dict[str, torch.Tensor],
             mask: torch.Tensor | None = None) -> tuple[str, float]:
    """(metric name, value) of the noisy decoded outputs against plaintext (top-1: real positions only)."""
    if "logits" in decoded:
        agree = decoded["logits"].argmax(-1) == plain_out.logits.argmax(-1)
        return "top1_agreement", float(agree[mask].float().mean() if mask is not None else agree.float().mean())
    a, b = decoded["last_hidden_state"].mean(1), plain_out.last_hidden_state.mean(1)
    return "pooled_cosine", float(torch.nn.functional.cosine_similarity(a, b, dim=-1).mean())


@torch.no_grad()
def noise_frontier(name: str, model: PreTrainedModel, input_ids: torch.Tensor, sigmas_rel: Sequence[float],
                   seed: int = 0, kpa_rows: int = 8, mask: torch.Tensor | None = None) -> list[dict[str, Any]]:
    """Rows per sigma: accuracy, multiset token recovery, KPA (Hungarian) from `kpa_rows` rows, and
    nearest-token decoding with the `pi` that weight alignment recovers (noise never touches weights).
    Every rate is over the real positions of `mask` (None: all), the KPA rows are real ones too.
    """
    keep = torch.ones_like(input_ids, dtype=torch.bool) if mask is None else mask.bool()
    developer = ModelDeveloper(model, seed=seed)
    cloud = developer.cloud_model()
    server = ModelServer(cloud)
    with timer() as t_align:
        aligned_pi = weights.recover_pi(developer.family, cloud.state_dict(), model.state_dict())
    family = developer.family.name
    table = public_table(developer.data_owner())
    rms = float(table.float().pow(2).mean().sqrt())
    plain_out = model(input_ids=input_ids, attention_mask=keep.long())
    rows = []
    for rel in sigmas_rel:
        sigma = rel * rms
        device = developer.data_owner(noise_sigma=sigma, noise_generator=torch.Generator().manual_seed(seed))
        params = dict(sigma=sigma, sigma_rel=rel, defence="noise", d=device.hidden_size)
        with timer() as t:
            request = device.request(input_ids, attention_mask=keep.long())
            decoded = device.decode(server.infer(**request), input_ids=input_ids)
        metric, value = accuracy(plain_out, decoded, keep)
        rows.append(row("noise_defence", name, family, DEFENCE,
                        metric, value, "fraction" if metric == "top1_agreement" else "cosine",
                        input_ids.shape[0], t[0], **params))
        wire = request["inputs_embeds"]
        with timer() as t:
            guesses = multiset.fingerprint_token_recovery(wire, table)
        rows += token_rows("multiset", name, family, multiset.ASSUMPTION, guesses, input_ids, keep,
                           input_ids.shape[0], t[0], **params)
        plain = device.embed(input_ids)[keep][:kpa_rows]
        with timer() as t:
            pi = kpa.assignment_permutation(plain, wire[keep][:kpa_rows])
        rows.append(row("known_plaintext", name, family, kpa.ASSUMPTION, "pi_recovered",
                        float((pi == device.keys["pi"]).float().mean()), "fraction", kpa_rows, t[0],
                        n=kpa_rows, **params))
        with timer() as t:
            plain_guess = torch.empty_like(wire)
            plain_guess[..., aligned_pi] = wire
            nearest = baselines.nearest_tokens(plain_guess, table)
        rows += token_rows("weight_alignment_nearest", name, family, weights.ASSUMPTION + "; then sees traffic",
                           nearest, input_ids, keep, input_ids.shape[0], t[0] + t_align[0],
                           pi_recovered=float((aligned_pi == device.keys["pi"]).float().mean()), **params)
    return rows
