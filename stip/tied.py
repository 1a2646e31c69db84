"""Tied parameters: the cloud model stores every tied pair as two tensors of its own.

transformers ties `_tied_weights_keys` pairs (target -> source) at load time only when
`tie_word_embeddings` is set; the cloud config clears it (the device keeps the plaintext
embedding), so every target must be written out or a stock reload initialises it fresh.
BERT's masked-LM head has two pairs: the decoder weight (to the word embeddings) and the
decoder bias (to `cls.predictions.bias`).
"""
from __future__ import annotations

from torch import nn
from transformers import PreTrainedModel


def untie_parameters(model: nn.Module) -> list[tuple[str, str]]:
    """Give every parameter reachable under several names a copy of its own, in place.

    Returns (alias, kept name) pairs: each alias now holds its own clone of the kept tensor.
    """
    first_name: dict[int, str] = {}
    untied = []
    for name, param in list(model.named_parameters(remove_duplicate=False)):
        kept = first_name.setdefault(id(param), name)
        if kept == name:
            continue
        owner_name, _, leaf = name.rpartition(".")
        owner = model.get_submodule(owner_name) if owner_name else model
        setattr(owner, leaf, nn.Parameter(param.detach().clone(), requires_grad=param.requires_grad))
        untied.append((name, kept))
    return untied


def loader_tied_pairs(model: PreTrainedModel) -> dict[str, str]:
    """The (target -> source) pairs a stock `from_pretrained` ties for this model and config."""
    return dict(model.get_expanded_tied_weights_keys(all_submodels=True))
