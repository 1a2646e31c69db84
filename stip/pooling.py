"""Last-token pooling of decoder sequence classifiers, done by the device, which knows the ids.

transformers' GPT2ForSequenceClassification and GenericForSequenceClassification (LLaMA,
Mixtral and every decoder built on it) score every position and keep the rightmost token that
is not `pad_token_id`, found from `input_ids`. The cloud only gets `inputs_embeds` and would
fall back to the last position, so the server returns the per-position scores and the device
gathers the right one: exact, and the cloud learns nothing new.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .errors import StipInputError


@dataclass(frozen=True)
class LastTokenPooling:
    """Where a decoder classifier pools: the rightmost token that is not the pad token."""

    pad_token_id: int | None

    def positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The pooled position of each row, computed exactly as transformers does."""
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.is_floating_point():
            raise StipInputError(f"pooling needs the token ids [batch, seq], got {type(input_ids).__name__} "
                                 f"{tuple(getattr(input_ids, 'shape', ()))}")
        batch, seq = input_ids.shape
        if self.pad_token_id is None:
            if batch != 1:
                raise StipInputError(f"a batch of {batch} needs config.pad_token_id to find each row's last "
                                     "token (transformers refuses it too); set pad_token_id or send one row "
                                     "at a time")
            return torch.full((batch,), seq - 1, dtype=torch.long)
        non_pad = (input_ids != self.pad_token_id).to(torch.int32)
        token_indices = torch.arange(seq, dtype=torch.int32)
        return (token_indices * non_pad).argmax(-1).long()

    def pool(self, scores: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """scores [batch, seq, labels] -> [batch, labels] at each row's pooled position."""
        if scores.dim() != 3 or tuple(scores.shape[:2]) != tuple(input_ids.shape):
            raise StipInputError(f"per-position scores have shape {tuple(scores.shape)} but the ids have "
                                 f"shape {tuple(input_ids.shape)}: pass the ids this request was built from")
        positions = self.positions(input_ids).to(scores.device)
        return scores[torch.arange(scores.shape[0], device=scores.device), positions]


def last_token_pooling(model: nn.Module) -> LastTokenPooling | None:
    """The pooling rule of a decoder sequence classifier; None for any other model."""
    from transformers import GPT2ForSequenceClassification  # noqa: PLC0415 - model classes only for a classifier
    from transformers.modeling_layers import GenericForSequenceClassification  # noqa: PLC0415

    if not isinstance(model, (GPT2ForSequenceClassification, GenericForSequenceClassification)):
        return None
    return LastTokenPooling(model.config.get_text_config().pad_token_id)
