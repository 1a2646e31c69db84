"""Small config-built models of every STIP family, with non-trivial norms and biases.

Fresh models have LayerNorm gamma=1, beta=0 and zero biases, which hides transforms that
forget them: every 1-D parameter is re-randomised here.
"""
from __future__ import annotations

import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    CLIPVisionConfig,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaConfig,
    LlavaForConditionalGeneration,
    MistralConfig,
    MistralForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
    RobertaConfig,
    RobertaForSequenceClassification,
    ViTConfig,
    ViTForImageClassification,
)


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


# The llama-like decoders: GQA (8 query heads, 2 KV groups), small sliding windows so they act.
_DECODER = dict(hidden_size=64, intermediate_size=112, num_hidden_layers=2, num_attention_heads=8,
                num_key_value_heads=2, vocab_size=103, max_position_embeddings=128, bos_token_id=0,
                eos_token_id=1, pad_token_id=None)


def tiny_mistral(seed: int = 0):
    return _build(MistralForCausalLM, MistralConfig(**_DECODER, sliding_window=5), seed)


def tiny_qwen2(seed: int = 0):
    return _build(Qwen2ForCausalLM, Qwen2Config(**_DECODER), seed)  # Q/K/V biases


def tiny_qwen3(seed: int = 0):
    return _build(Qwen3ForCausalLM, Qwen3Config(**_DECODER, head_dim=16), seed)  # q/k norms


def tiny_gemma2(seed: int = 0):
    cfg = Gemma2Config(**_DECODER, head_dim=16, sliding_window=5, query_pre_attn_scalar=16,
                       attn_logit_softcapping=2.0, final_logit_softcapping=3.0)  # caps that bite
    return _build(Gemma2ForCausalLM, cfg, seed)


def tiny_gemma3(seed: int = 0):
    cfg = Gemma3TextConfig(**_DECODER, head_dim=16, sliding_window=5, query_pre_attn_scalar=16,
                           final_logit_softcapping=3.0)
    return _build(Gemma3ForCausalLM, cfg, seed)


def tiny_phi3(seed: int = 0):
    return _build(Phi3ForCausalLM, Phi3Config(**_DECODER), seed)  # fused qkv_proj and gate_up_proj


def tiny_roberta(seed: int = 0, type_vocab_size: int = 1):
    cfg = RobertaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
                        vocab_size=101, max_position_embeddings=66, type_vocab_size=type_vocab_size,
                        num_labels=3, pad_token_id=1)
    return _build(RobertaForSequenceClassification, cfg, seed)


def tiny_distilbert(seed: int = 0):
    cfg = DistilBertConfig(dim=64, n_layers=2, n_heads=4, hidden_dim=96, vocab_size=101,
                           max_position_embeddings=64, num_labels=3)
    return _build(DistilBertForSequenceClassification, cfg, seed)


def tiny_llava(seed: int = 0):
    """CLIP vision tower (16 patches per 16x16 image) + projector + a llama language model."""
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                              image_size=16, patch_size=4, projection_dim=32)
    text = LlamaConfig(**_DECODER)
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_id=LLAVA_IMAGE_TOKEN,
                      image_seq_length=16, vision_feature_layer=-2)
    return _build(LlavaForConditionalGeneration, cfg, seed)


LLAVA_IMAGE_TOKEN = 102

FACTORIES = {"gpt2": tiny_gpt2, "bert": tiny_bert, "llama": tiny_llama, "mixtral": tiny_mixtral, "vit": tiny_vit,
             "mistral": tiny_mistral, "qwen2": tiny_qwen2, "qwen3": tiny_qwen3, "gemma2": tiny_gemma2,
             "gemma3_text": tiny_gemma3, "phi3": tiny_phi3, "roberta": tiny_roberta,
             "distilbert": tiny_distilbert, "llava": tiny_llava}
DECODERS = ("gpt2", "llama", "mixtral", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3")


def sample_inputs(model, batch: int = 2, seq: int = 12, seed: int = 0) -> dict[str, torch.Tensor]:
    """Inputs for a forward pass: token ids (+ token types) or pixel values."""
    gen = torch.Generator().manual_seed(seed)
    cfg = model.config
    if cfg.model_type == "vit":
        return {"pixel_values": torch.randn(batch, 3, cfg.image_size, cfg.image_size, generator=gen)}
    if cfg.model_type == "llava":  # <bos> <16 image tokens> text: the image comes first, as in LLaVA-1.5
        text = torch.randint(2, LLAVA_IMAGE_TOKEN, (batch, seq), generator=gen)
        image = torch.full((batch, cfg.image_seq_length), LLAVA_IMAGE_TOKEN)
        size = cfg.vision_config.image_size
        return {"input_ids": torch.cat([torch.zeros(batch, 1, dtype=torch.long), image, text], dim=1),
                "pixel_values": torch.randn(batch, 3, size, size, generator=gen)}
    inputs = {"input_ids": torch.randint(0, cfg.get_text_config().vocab_size, (batch, seq), generator=gen)}
    if cfg.model_type == "bert":
        inputs["token_type_ids"] = torch.randint(0, 2, (batch, seq), generator=gen)
    return inputs
