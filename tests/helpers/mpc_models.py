"""Toy ModelSpecs for the MPC engines: a 100-token vocabulary keeps the one-hot embedding cheap in MPC."""
from __future__ import annotations

import torch
from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel

from protocols.contract import ModelSpec


def toy_spec(kind: str) -> ModelSpec:
    """A seeded 1-layer, 32-wide `bert` or `gpt2` with random ids over its 100-token vocabulary."""
    torch.manual_seed(0)
    if kind == "gpt2":
        config = GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=100, n_positions=64)
        model = GPT2LMHeadModel(config).eval()
    else:
        config = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                            vocab_size=100)
        model = BertModel(config).eval()

    def make_inputs(batch: int, seq_len: int, seed: int) -> dict:
        ids = torch.randint(0, 100, (batch, seq_len), generator=torch.Generator().manual_seed(seed))
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    return ModelSpec(f"{kind}-toy", kind, build=lambda: model, make_inputs=make_inputs, config=config,
                     head="causal_lm" if kind == "gpt2" else "base")
