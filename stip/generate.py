"""Autoregressive generation under STIP: token choice on the device, one round trip per token or
(with `speculate`) per accepted run of drafted tokens."""
from __future__ import annotations

from typing import Callable, Mapping, Protocol

import torch

from .generation_rules import GenerationRules
from .parties import DataOwner
from .sampling import IncompleteCandidates, Sampling
from .sequence import SequenceInputs, eos_ids
from .speculation import SPECULATION_TOPK, Drafter, GenerationStats, check_speculation, generate_speculative


class InferenceServer(Protocol):
    """Anything that serves like ModelServer: local, or a proxy to a remote cloud process."""

    def open_session(self) -> str: ...
    def close_session(self, session: str) -> None: ...
    def infer(self, inputs_embeds: torch.Tensor, **kwargs) -> dict[str, torch.Tensor]: ...


@torch.no_grad()
def generate(
    device: DataOwner,
    server: InferenceServer,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    do_sample: bool = False,
    top_k: int | None = None,
    temperature: float = 1.0,
    top_p: float | None = None,
    return_topk: int | None = None,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int | None = None,
    generator: torch.Generator | None = None,
    on_token: Callable[[int, torch.Tensor], None] | None = None,
    attention_mask: torch.Tensor | None = None,
    device_inputs: Mapping[str, torch.Tensor] | None = None,
    speculate: Drafter | None = None,
    stats: GenerationStats | None = None,
) -> torch.Tensor:
    """Generate `max_new_tokens` tokens; the cloud keeps the KV cache, the device samples.

    The device chooses each token in the permuted vocabulary (DataOwner.next_token): greedy,
    temperature, top_k and top_p give exactly `model.generate`'s tokens, with `generator`
    seeded as torch.manual_seed seeds the global one. Settings are explicit: transformers'
    default top_k=50 and a model's generation_config are not read. `return_topk=k` asks the
    cloud for the top-k permuted logits only (lossless for greedy and for top_k <= k sampling).
    Prompts of different lengths: left-pad them and pass `attention_mask`, as for
    `model.generate` (the server derives position ids from it the same way). `device_inputs`
    go with the prompt to the device's embedding only (LLaVA: pixel_values); GPT-2's
    `token_type_ids` are extended to each new token with their last value, as transformers does.
    `eos_token_id` (an id or a list) finishes a row; finished rows get `pad_token_id` (default:
    the first eos id, as transformers). The cloud returns k+1 candidates for `return_topk=k`; on
    a tie at their boundary the device asks for that step's whole row (one more round trip).
    Where transformers changes behaviour at a length (stip/generation_rules.py: Phi-3's cache
    recompute, dynamic/longrope RoPE), the device re-sends the sequence or limits its drafts.

    `speculate` (e.g. stip.PromptLookup(num_tokens=8)) drafts tokens on the device and sends
    them with the last token in one request; the cloud returns the top-(`return_topk` + 1) (default
    2) permuted scores at each position and keeps the accepted prefix of its cache. Greedy
    only, batch 1; the tokens are exactly those without it. `stats` (a GenerationStats) is
    filled with round trips and drafted/accepted lengths. `on_token(i, ids)` runs per token.
    """
    sampling = Sampling(do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p)
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [batch, seq], got shape {tuple(input_ids.shape)}")
    if attention_mask is not None and tuple(attention_mask.shape) != tuple(input_ids.shape):
        raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, expected "
                         f"{tuple(input_ids.shape)} like input_ids")
    if return_topk and do_sample and not (top_k and top_k <= return_topk):
        raise ValueError(f"return_topk={return_topk} is lossless only for greedy or top_k <= {return_topk} "
                         f"sampling (got do_sample=True, top_k={top_k}); raise return_topk or set top_k")
    eos = eos_ids(eos_token_id)
    pad = pad_token_id if pad_token_id is not None or eos is None else int(eos[0])  # set whenever eos is
    inputs = SequenceInputs(input_ids, attention_mask, device_inputs)
    rules = device.generation or GenerationRules("")
    if speculate is not None:
        check_speculation(speculate, input_ids, sampling, return_topk)
        return generate_speculative(device, server, inputs, max_new_tokens, speculate,
                                    (return_topk or SPECULATION_TOPK - 1) + 1, eos, on_token, rules, stats)
    batch = input_ids.shape[0]
    finished = torch.zeros(batch, dtype=torch.bool)
    top = return_topk + 1 if return_topk else None  # one more: shows a tie at the boundary
    session = server.open_session()
    try:
        last = inputs.prompt_request(device, session, top)
        cached = 0  # tokens the session held before the last request
        for step in range(max_new_tokens):
            out = infer(server, last)
            try:
                next_ids = device.next_token(out, sampling, generator)
            except IncompleteCandidates:  # a tie at the boundary of the top-k: the whole row decides
                full = {**last, "top_k": None, "cache_length": cached}
                next_ids = device.next_token(infer(server, full), sampling, generator)
            if eos is not None and pad is not None:  # transformers: finished rows get pad_token_id, finish on eos
                next_ids = torch.where(finished[:, None], torch.full_like(next_ids, pad), next_ids)
                finished |= torch.isin(next_ids[:, 0], eos)
            cached = inputs.length
            inputs.append(next_ids)
            if stats is not None:
                stats.record(drafted=0, accepted=0, new_tokens=1)
            if on_token is not None:
                on_token(step, next_ids)
            if step + 1 == max_new_tokens or (eos is not None and bool(finished.all())):
                break
            if rules.recomputes(cached, inputs.length):  # transformers drops the cache here: re-send it all
                server.close_session(session)
                session = server.open_session()
                last, cached = inputs.prompt_request(device, session, top), 0
            else:
                last = inputs.step_request(device, next_ids, session, top)
    finally:
        server.close_session(session)
    return inputs.ids


def infer(server: InferenceServer, request: dict) -> dict[str, torch.Tensor]:
    """server.infer on a DataOwner.request dict, which is kept intact for a redo."""
    rest = {k: v for k, v in request.items() if k != "inputs_embeds"}
    return server.infer(request["inputs_embeds"], **rest)
