"""Generation prompts: random token ids of run.seq_len, or the shipped prompt suite (stip.prompts).

With `run.inputs=prompt_suite` the passes walk the suite: pass `repeat` generates from prompt
`repeat mod n` (12 repeats cover it once), encoded by the model's own device tokenizer.
"""
from __future__ import annotations

from functools import lru_cache

import torch

from protocols.contract import ModelSpec, RunRequest
from protocols.models import load_tokenizer
from stip.prompts import prompt_suite


@lru_cache(maxsize=4)
def suite_ids(tokenizer_kind: str) -> tuple[tuple[str, torch.Tensor], ...]:
    """(prompt id, [1, n] token ids) of every suite prompt, as the tokenizer encodes its text."""
    tokenizer = load_tokenizer(tokenizer_kind)
    if tokenizer is None:
        raise RuntimeError(f"run.inputs=prompt_suite needs the {tokenizer_kind!r} tokenizer, which did not load "
                           "(see the warning above); use run.inputs=random")
    return tuple((p.id, tokenizer(p.text, return_tensors="pt")["input_ids"]) for p in prompt_suite())


def generation_prompt(model: ModelSpec, request: RunRequest, repeat: int, seed: int) -> torch.Tensor:
    """The [batch, seq] prompt ids of one generation pass (warm-up passes have repeat < 0)."""
    if request.inputs == "random":
        return model.make_inputs(request.batch_size, request.seq_len, seed)["input_ids"]
    if not model.tokenizer:
        raise ValueError(f"run.inputs=prompt_suite needs a model with a tokenizer; {model.name!r} has none "
                         "(model.tokenizer); use run.inputs=random or model=smollm2-135m")
    prompts = suite_ids(model.tokenizer)
    _, ids = prompts[repeat % len(prompts)]
    if model.vocab_size is not None and int(ids.max()) >= model.vocab_size:
        raise ValueError(f"the {model.tokenizer!r} tokenizer gives id {int(ids.max())}, beyond model {model.name!r}'s "
                         f"vocab_size={model.vocab_size}; use a model of that tokenizer's vocabulary")
    return ids
