"""Hidden-state vocabulary matching ("Hidden No More", arXiv 2505.18332).

Assumption: the cloud holds the public base model and sees the permuted hidden state at layer
l; position by position it runs each candidate token after the prefix it has already recovered
through the base, and keeps the one whose sorted state values (a permutation-invariant
statistic) are nearest. Causal decoders only: a bidirectional encoder's state also depends on
later tokens.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel

ASSUMPTION = ("cloud holds the public base model (weights may have drifted) and sees the permuted "
              "hidden state at layer l; no key")


class _Stop(Exception):
    def __init__(self, value: torch.Tensor) -> None:
        self.value = value


def embedding_table(model: PreTrainedModel) -> torch.Tensor:
    """The public input embedding table [vocab, d]: the vocabulary every matching attack tries."""
    return model.get_input_embeddings().get_parameter("weight")


def layer_list(model: PreTrainedModel) -> nn.ModuleList:
    """The model's stack of transformer blocks (the ModuleList with one entry per layer)."""
    n = model.config.get_text_config().num_hidden_layers
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise ValueError(f"{type(model).__name__} has no ModuleList of its {n} layers; pass another model")


@torch.no_grad()
def states_at(model: PreTrainedModel, layer: int, **inputs: torch.Tensor) -> torch.Tensor:
    """The residual stream entering block `layer` (0 = embeddings), stopping the forward there."""
    blocks = layer_list(model)
    if not 0 <= layer < len(blocks):
        raise ValueError(f"layer {layer} is outside 0..{len(blocks) - 1}")

    def grab(_module, args, kwargs):
        raise _Stop(args[0] if args else kwargs["hidden_states"])

    handle = blocks[layer].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        model.base_model(**inputs)
    except _Stop as stop:
        return stop.value
    finally:
        handle.remove()
    raise RuntimeError(f"block {layer} of {type(model).__name__} never ran")


@torch.no_grad()
def hidden_state_token_recovery(observed: torch.Tensor, public_model: PreTrainedModel, layer: int,
                                candidates: torch.Tensor | None = None, batch: int = 512,
                                statistic: str = "sorted", order: str = "index",
                                tolerance: float = 0.0) -> torch.Tensor:
    """Recover the tokens of one sequence from its observed layer-`layer` states [seq, d].

    `candidates` defaults to the whole vocabulary (the papers' setting). `statistic` compares
    "sorted" values (blind to any feature permutation: STIP) or "raw" vectors (no transform:
    a model split's activations). See `vocabulary_matching` for `order` and `tolerance`.
    """
    return vocabulary_matching(observed, public_model, layer, candidates, batch, statistic, order, tolerance)[0]


@torch.no_grad()
def vocabulary_matching(observed: torch.Tensor, public_model: PreTrainedModel, layer: int,
                        candidates: torch.Tensor | None = None, batch: int = 512, statistic: str = "sorted",
                        order: str = "index", tolerance: float = 0.0) -> tuple[torch.Tensor, int]:
    """(guesses [seq], candidate sequences run through the public model): Hidden No More's search.

    order="logits" tries candidates in the order the public model predicts them after the recovered prefix
    (one extra forward per position) and, with tolerance > 0, stops at the first batch whose best candidate
    lies within `tolerance` * ||target|| (the paper's early exit); tolerance=0 always scans every candidate.
    """
    if statistic not in ("sorted", "raw"):
        raise ValueError(f"statistic must be 'sorted' or 'raw', got {statistic!r}")
    if order not in ("index", "logits"):
        raise ValueError(f"order must be 'index' or 'logits', got {order!r}")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")

    def stat(x: torch.Tensor) -> torch.Tensor:
        return x.float().sort(dim=-1).values if statistic == "sorted" else x.float()

    if candidates is None:
        candidates = torch.arange(embedding_table(public_model).shape[0])
    target = stat(observed)
    guesses: list[int] = []
    forwards = 0
    for t in range(observed.shape[0]):
        prefix = torch.tensor(guesses, dtype=torch.long)
        ranked = candidates
        if order == "logits" and t > 0:
            logits = public_model(input_ids=prefix[None]).logits[0, -1, candidates]
            ranked = candidates[logits.argsort(descending=True)]
            forwards += 1
        best, best_dist = -1, float("inf")
        limit = tolerance * float(target[t].norm())
        for start in range(0, ranked.numel(), batch):
            cand = ranked[start:start + batch]
            ids = torch.cat([prefix.expand(cand.numel(), t), cand[:, None]], dim=1)
            states = stat(states_at(public_model, layer, input_ids=ids)[:, -1])
            forwards += cand.numel()
            dist, idx = (states - target[t]).norm(dim=-1).min(dim=0)
            if float(dist) < best_dist:
                best, best_dist = int(cand[idx]), float(dist)
            if best_dist <= limit:
                break
        guesses.append(best)
    return torch.tensor(guesses, dtype=torch.long), forwards
