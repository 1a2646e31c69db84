"""Speculative STIP generation on real SmolLM2-135M over the shipped prompt suite (slow; prints numbers).

    PYTHONPATH=$PWD HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q -s -m slow tests/test_stip_speculation_smollm2.py

Greedy, 64 new tokens, the device drafter of experiment=speculation: stip.PromptLookup() (latest match,
16 tokens, n-grams 3..1) with the public device corpus (chat template + installed packages' texts).
Prints round trips per generated token per prompt, their median and spread; every prompt's tokens
must equal model.generate's, and the median must meet issue 14's target.
"""
import statistics

import pytest
import torch

import stip
from protocols.models import load_smollm2
from stip.draft_corpus import public_corpus
from stip.prompts import prompt_suite

NEW_TOKENS = 64
# Issue 14's target. Measured 0.578 with the corpus (0.641 without it; 0.648 with transformers'
# earliest-match lookup, 8 tokens, n-grams up to 2): open-ended text stays near 0.9 either way.
MEDIAN_BOUND = 0.6


@pytest.mark.slow
def test_prompt_lookup_round_trips_on_smollm2_with_identical_tokens():
    model, tokenizer = load_smollm2()
    assert tokenizer is not None, "the SmolLM2 tokenizer is needed to encode the prompt suite"
    developer = stip.ModelDeveloper(model, seed=0)
    server, device = stip.ModelServer(developer.cloud_model()), developer.data_owner()
    drafter = stip.PromptLookup(corpus=public_corpus(tokenizer))
    rates, lines = [], []
    for prompt in prompt_suite():
        ids = tokenizer(prompt.text, return_tensors="pt")["input_ids"]
        stats = stip.GenerationStats()
        tokens = stip.generate(device, server, ids, NEW_TOKENS, speculate=drafter, stats=stats)
        expected = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS,
                                  min_new_tokens=0, do_sample=False, eos_token_id=None, pad_token_id=0)
        assert torch.equal(tokens, expected), f"{prompt.id}: speculation changed the tokens"
        assert stats.new_tokens == NEW_TOKENS and sum(stats.accepted) + stats.round_trips == NEW_TOKENS
        rates.append(stats.round_trips_per_token)
        mean_accepted = sum(stats.accepted) / stats.round_trips
        lines.append(f"{prompt.category:14s} {prompt.id:20s} {stats.round_trips:3d} round trips  "
                     f"{stats.round_trips_per_token:.3f} per token  {mean_accepted:.2f} drafts accepted per trip")
    median = statistics.median(rates)
    q1, _, q3 = statistics.quantiles(rates, n=4)
    print("\n" + "\n".join(lines) + f"\nmedian round trips per generated token: {median:.3f} "
          f"(quartiles {q1:.3f}-{q3:.3f}, range {min(rates):.3f}-{max(rates):.3f})")
    assert median <= MEDIAN_BOUND
