"""Small config-built models of every STIP family, with non-trivial norms and biases.

Fresh models have LayerNorm gamma=1, beta=0 and zero biases, which hides transforms that
forget them: every 1-D parameter is re-randomised here.
"""
from __future__ import annotations

import torch
from transformers import (BertConfig, BertForSequenceClassification, BertModel, GPT2Config, GPT2LMHeadModel,
                          LlamaConfig, LlamaForCausalLM, MixtralConfig, MixtralForCausalLM, ViTConfig,
                          ViTForImageClassification)


def randomise_vectors(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every 1-D parameter (norm weights, biases) random values around its default."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(0.3 * torch.randn(p.shape, generator=gen))
    return model.eval()


def _build(cls, config, seed: int):
    torch.manual_seed(seed)
    return randomise_vectors(cls(config), seed)


def tiny_gpt2(seed: int = 0):
    return _build(GPT2LMHeadModel, GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=97, n_positions=64,
                                              bos_token_id=0, eos_token_id=0), seed)


def tiny_bert(seed: int = 0, head: bool = True):
    cfg = BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
                     vocab_size=101, max_position_embeddings=64, type_vocab_size=2, num_labels=3)
    return _build(BertForSequenceClassification if head else BertModel, cfg, seed)


def tiny_llama(seed: int = 0, tied: bool = True):
    cfg = LlamaConfig(hidden_size=64, intermediate_size=112, num_hidden_layers=2, num_attention_heads=8,
                      num_key_value_heads=2, vocab_size=103, max_position_embeddings=128,
                      tie_word_embeddings=tied, bos_token_id=0, eos_token_id=1, pad_token_id=None)
    return _build(LlamaForCausalLM, cfg, seed)


def tiny_mixtral(seed: int = 0):
    cfg = MixtralConfig(hidden_size=64, intermediate_size=80, num_hidden_layers=2, num_attention_heads=8,
                        num_key_value_heads=4, vocab_size=89, num_local_experts=4, num_experts_per_tok=2,
                        max_position_embeddings=128, bos_token_id=0, eos_token_id=1)
    return _build(MixtralForCausalLM, cfg, seed)


def tiny_vit(seed: int = 0):
    cfg = ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
                    image_size=32, patch_size=8, num_labels=7)
    return _build(ViTForImageClassification, cfg, seed)


FACTORIES = {"gpt2": tiny_gpt2, "bert": tiny_bert, "llama": tiny_llama, "mixtral": tiny_mixtral, "vit": tiny_vit}


def sample_inputs(model, batch: int = 2, seq: int = 12, seed: int = 0) -> dict[str, torch.Tensor]:
    """Inputs for a forward pass: token ids (+ token types) or pixel values."""
    gen = torch.Generator().manual_seed(seed)
    cfg = model.config
    if cfg.model_type == "vit":
        return {"pixel_values": torch.randn(batch, 3, cfg.image_size, cfg.image_size, generator=gen)}
    inputs = {"input_ids": torch.randint(0, cfg.vocab_size, (batch, seq), generator=gen)}
    if cfg.model_type == "bert":
        inputs["token_type_ids"] = torch.randint(0, 2, (batch, seq), generator=gen)
    return inputs
