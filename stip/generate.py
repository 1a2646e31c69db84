"""Autoregressive generation under STIP: one round trip per token, token choice on the device."""
from __future__ import annotations

from typing import Callable, Mapping, Protocol

import torch

from .parties import DataOwner


class InferenceServer(Protocol):
    """Anything that serves like ModelServer: local, or a proxy to a remote cloud process."""

    def open_session(self) -> str: ...
    def close_session(self, session: str) -> None: ...
    def infer(self, inputs_embeds: torch.Tensor, **kwargs) -> dict[str, torch.Tensor]: ...


def _choose(scores: torch.Tensor, token_ids: torch.Tensor | None, do_sample: bool, top_k: int | None,
            temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    """Pick the next token per row from (candidate) scores; token_ids maps candidates to ids."""
    if do_sample:
        if top_k:
            kth = scores.topk(min(top_k, scores.shape[-1]), dim=-1).values[..., -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        probs = torch.softmax(scores.float() / temperature, dim=-1)
        choice = torch.multinomial(probs, 1, generator=generator)
    else:
        choice = scores.argmax(dim=-1, keepdim=True)
    return choice if token_ids is None else token_ids.gather(-1, choice)


@torch.no_grad()
def generate(
    device: DataOwner,
    server: InferenceServer,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    do_sample: bool = False,
    top_k: int | None = None,
    temperature: float = 1.0,
    return_topk: int | None = None,
    eos_token_id: int | None = None,
    generator: torch.Generator | None = None,
    on_token: Callable[[int, torch.Tensor], None] | None = None,
    attention_mask: torch.Tensor | None = None,
    device_inputs: Mapping[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Generate `max_new_tokens` tokens; the cloud keeps the KV cache, the device samples.

    `return_topk=k` asks the cloud for the top-k permuted logits only (lossless for greedy and
    for top-k sampling with top_k <= k). Prompts of different lengths: left-pad them and pass
    `attention_mask`, as for `model.generate` (the server derives position ids from it the same way).
    `device_inputs` go with the prompt to the device's embedding only (LLaVA: pixel_values).
    """
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [batch, seq], got shape {tuple(input_ids.shape)}")
    if attention_mask is not None and tuple(attention_mask.shape) != tuple(input_ids.shape):
        raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, expected "
                         f"{tuple(input_ids.shape)} like input_ids")
    if return_topk and do_sample and not (top_k and top_k <= return_topk):
        raise ValueError(f"return_topk={return_topk} is lossless only for greedy or top_k <= {return_topk} "
                         f"sampling (got do_sample=True, top_k={top_k}); raise return_topk or set top_k")
    session = server.open_session()
    tokens = input_ids
    finished = torch.zeros(input_ids.shape[0], dtype=torch.bool)
    try:
        options = {"session": session, "last_only": True, "top_k": return_topk}
        request = device.request(input_ids, attention_mask=attention_mask, **(device_inputs or {}), **options)
        for step in range(max_new_tokens):
            out = device.decode(server.infer(request.pop("inputs_embeds"), **request))
            if "topk_values" in out:
                next_ids = _choose(out["topk_values"], out["topk_indices"], do_sample, top_k, temperature, generator)
            else:
                next_ids = _choose(out["logits"], None, do_sample, top_k, temperature, generator)
            if eos_token_id is not None:
                next_ids = torch.where(finished[:, None], torch.full_like(next_ids, eos_token_id), next_ids)
                finished |= next_ids[:, 0] == eos_token_id
            tokens = torch.cat([tokens, next_ids], dim=-1)
            if on_token is not None:
                on_token(step, next_ids)
            if step + 1 == max_new_tokens or (eos_token_id is not None and bool(finished.all())):
                break
            request = device.request(next_ids, **options)  # new tokens need no mask: the server attends them
    finally:
        server.close_session(session)
    return tokens
