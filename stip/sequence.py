"""The device's view of a sequence during generation: ids, mask and per-token inputs, grown as transformers grows
them."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .parties import DataOwner

EXTENDED_INPUTS = ("token_type_ids",)  # transformers extends these to each new token with their last value


def eos_ids(eos_token_id: int | list[int] | tuple[int, ...] | torch.Tensor | None) -> torch.Tensor | None:
    """eos_token_id as a 1-D tensor of ids (an int, or a list as Llama-3 configs ship it), None for none."""
    if eos_token_id is None:
        return None
    ids = torch.as_tensor(eos_token_id).reshape(-1)
    if ids.numel() == 0 or ids.is_floating_point() or ids.dtype == torch.bool:
        raise ValueError(f"eos_token_id must be an int or a non-empty list of ints, got {eos_token_id!r}")
    return ids.long()


class SequenceInputs:
    """Prompt + generated ids, the attention mask and token types as transformers extends them, and
    the prompt-only device inputs (LLaVA's pixels); builds the requests of stip.generate."""

    def __init__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                 device_inputs: Mapping[str, torch.Tensor] | None) -> None:
        device_inputs = dict(device_inputs or {})
        self.ids = input_ids
        self.mask = attention_mask
        self.extended = {k: device_inputs.pop(k) for k in EXTENDED_INPUTS if device_inputs.get(k) is not None}
        for name, value in self.extended.items():
            if tuple(value.shape) != tuple(input_ids.shape):
                raise ValueError(f"{name} has shape {tuple(value.shape)}, expected {tuple(input_ids.shape)} "
                                 "like input_ids")
        self.prompt_only = {k: v for k, v in device_inputs.items() if v is not None}

    @property
    def length(self) -> int:
        return int(self.ids.shape[1])

    def append(self, new_ids: torch.Tensor) -> None:
        """Grow by new tokens [batch, n]: the mask with ones, extended inputs with their last value."""
        n = new_ids.shape[1]
        self.ids = torch.cat([self.ids, new_ids.to(self.ids.dtype)], dim=-1)
        if self.mask is not None:
            self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], n)], dim=-1)
        for name, value in self.extended.items():
            self.extended[name] = torch.cat([value, value[:, -1:].expand(-1, n)], dim=-1)

    def last_values(self, n: int) -> dict[str, torch.Tensor]:
        """Extended inputs for n more tokens (drafts or a new token): the last value repeated."""
        return {k: v[:, -1:].expand(-1, n).contiguous() for k, v in self.extended.items()}

    def prompt_request(self, device: DataOwner, session: str, top_k: int | None,
                       drafts: torch.Tensor | None = None, upto: int | None = None) -> dict[str, Any]:
        """The whole sequence (its first `upto` tokens) + drafts in a fresh session, as the prompt is sent."""
        end = self.length if upto is None else upto
        ids, mask = self.ids[:, :end], None if self.mask is None else self.mask[:, :end]
        plain = {k: v[:, :end] for k, v in self.extended.items()}
        d = 0 if drafts is None else int(drafts.numel())
        if drafts is not None and d:
            ids = torch.cat([ids, drafts.to(ids.dtype)[None]], dim=-1)
            mask = None if mask is None else torch.cat([mask, mask.new_ones(1, d)], dim=-1)
            plain = {k: torch.cat([v, v[:, -1:].expand(-1, d)], dim=-1) for k, v in plain.items()}
        options: dict[str, Any] = {"last_n": d + 1} if drafts is not None else {"last_only": True}
        return device.request(ids, attention_mask=mask, session=session, top_k=top_k,
                              **{**options, **self.prompt_only, **plain})  # disjoint names: options, then inputs

    def step_request(self, device: DataOwner, new_ids: torch.Tensor, session: str, top_k: int | None,
                     **options: Any) -> dict[str, Any]:
        """New tokens [batch, n] through the session's cache (they need no mask: the server attends them)."""
        if "last_n" not in options:
            options["last_only"] = True
        return device.request(new_ids, session=session, top_k=top_k,
                              **{**options, **self.last_values(new_ids.shape[1])})  # disjoint names
