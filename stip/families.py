"""Per-family transformation rules, chosen by `config.model_type` through a registry.

A rule maps a parameter name (regex, `L` = layer index) to the feature space of each tensor
dimension: `h` hidden (`pi`), `c` output (`pi_c`), and per layer `q`/`k` (`pi_i1`, Q and K),
`v` (`pi_i2`, V), `o` (`pi_i2` as seen by the output projection), `f` (`pi_i3`, feed-forward
hidden), `qkv` (fused Q|K|V: GPT-2, Phi-3), `gu` (fused gate|up: Mixtral per expert, Phi-3).
`None` leaves a dimension alone. `DEVICE` marks the modules the data owner runs (the input
embedding; all of RoBERTa's embeddings; LLaVA's vision tower and projector): the cloud copy is
zeroed, since the cloud never needs them.
Every parameter must match a rule; an unmatched one is an error, never a silently wrong model.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Final, Literal, Union

from torch import nn
from transformers import PreTrainedModel

from .llava import LlavaDeviceInputs

DEVICE: Final = "device"
Spaces = Union[tuple[str | None, ...], Literal["device"]]  # per dimension, or DEVICE


class UnsupportedModelError(ValueError):
    """A model type or parameter that has no STIP transform."""


@dataclass(frozen=True)
class Dims:
    """The shapes that key generation needs, read from a transformers config."""

    hidden: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn: int
    n_experts: int = 0
    rope: bool = False


@dataclass(frozen=True)
class Rule:
    pattern: re.Pattern
    spaces: Spaces


def _rules(*pairs: tuple[str, Spaces]) -> tuple[Rule, ...]:
    return tuple(Rule(re.compile(r"(?:^|\.)" + p + r"$"), s) for p, s in pairs)


L = r"(?P<L>\d+)"


def _linear(prefix: str, out_space: str | None, in_space: str | None) -> list[tuple[str, Spaces]]:
    """Rules for an nn.Linear stored (out, in) with an optional bias."""
    return [(prefix + r"\.weight", (out_space, in_space)), (prefix + r"\.bias", (out_space,))]


def _norm(prefix: str) -> list[tuple[str, Spaces]]:
    return [(prefix + r"\.(?:weight|bias)", ("h",))]


def _dims_from_config(config, rope: bool) -> Dims:
    config = config.get_text_config()  # LLaVA: the language model's config; itself elsewhere
    hidden = config.hidden_size
    heads = config.num_attention_heads
    ffn = (getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None)  # GPT-2: n_inner
           or getattr(config, "hidden_dim", None) or 4 * hidden)  # DistilBERT: hidden_dim
    return Dims(
        hidden=hidden,
        n_layers=config.num_hidden_layers,
        n_heads=heads,
        n_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
        head_dim=getattr(config, "head_dim", None) or hidden // heads,
        ffn=ffn,
        n_experts=getattr(config, "num_local_experts", 0) or 0,
        rope=rope,
    )


def _text_embedding(model: PreTrainedModel) -> nn.Module:
    return model.get_input_embeddings()


class GPT2DeviceEmbedding(nn.Module):
    """GPT-2's device side: `wte` on the tokens plus `wte` on the token types, as GPT2Model adds them.

    Addition commutes with a permutation, so the sum is permuted and the types never leave the device.
    """

    def __init__(self, wte: nn.Module) -> None:
        super().__init__()
        self.wte = wte

    def forward(self, input_ids, token_type_ids=None):
        embeddings = self.wte(input_ids)
        return embeddings if token_type_ids is None else embeddings + self.wte(token_type_ids)


def _gpt2_embedding(model: PreTrainedModel) -> nn.Module:
    return GPT2DeviceEmbedding(model.get_input_embeddings())


def _vit_embedding(model: nn.Module) -> nn.Module:
    return model.get_submodule("vit.embeddings" if hasattr(model, "vit") else "embeddings")


def _roberta_embedding(model: nn.Module) -> nn.Module:
    return model.get_submodule("roberta.embeddings" if hasattr(model, "roberta") else "embeddings")


def _roberta_passthrough(input_ids=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                         past_key_values_length=0, cache_length=0):
    """RobertaEmbeddings on the server: the device already ran them (positions from its token ids).

    The cache offset is ignored (the device numbered the positions); transformers 5.24 renamed it from
    `past_key_values_length` to `cache_length`, so both names are taken.
    """
    if input_ids is not None or token_type_ids is not None or position_ids is not None:
        raise ValueError("a RoBERTa STIP server takes inputs_embeds only: token types and positions are "
                         "embedded on the device; pass token_type_ids to DataOwner.request instead")
    return inputs_embeds


def _roberta_prepare_server(model: nn.Module) -> None:
    """Bypass the (zeroed) RobertaEmbeddings module; the encoder and heads run unchanged."""
    _roberta_embedding(model).forward = _roberta_passthrough


def _check_llava_text(config) -> None:
    """LLaVA's rules are the llama-like decoder's: refuse any other language model by name."""
    text_type = config.get_text_config().model_type
    if text_type not in LLAMA_LIKE_TEXT_TYPES:
        raise UnsupportedModelError(f"llava with a '{text_type}' language model has no STIP transform; "
                                    f"supported language models: {', '.join(LLAMA_LIKE_TEXT_TYPES)}")


def _embeddings_passthrough(embeddings, bool_masked_pos=None, interpolate_pos_encoding=None):
    """ViTEmbeddings on the server: the device already ran them and permuted the result."""
    return embeddings


def _vit_prepare_server(model: nn.Module) -> None:
    """Bypass the (zeroed) ViTEmbeddings module; the rest of ViT's forward runs unchanged."""
    _vit_embedding(model).forward = _embeddings_passthrough


@dataclass(frozen=True)
class Family:
    """How one architecture family is transformed, embedded on the device, and served."""

    name: str
    model_types: tuple[str, ...]
    rules: tuple[Rule, ...]
    rope: bool = False
    input_name: str = "input_ids"  # what the device embeds
    device_module: Callable[[PreTrainedModel], nn.Module] = _text_embedding
    prepare_server: Callable[[nn.Module], None] | None = None
    notes: str = ""
    extra_inputs: tuple[str, ...] = field(default_factory=tuple)  # plain, non-secret inputs the cloud gets
    device_inputs: tuple[str, ...] = field(default_factory=tuple)  # further inputs only the device module takes
    check_config: Callable[[object], None] | None = None  # refuses variants the rules do not cover

    def dims(self, config) -> Dims:
        if self.check_config is not None:
            self.check_config(config)
        return _dims_from_config(config, self.rope)

    def spaces_for(self, name: str) -> tuple[Spaces, dict[str, int]]:
        """The rule's spaces for a parameter and its layer (`L`) / expert (`E`) indices."""
        for rule in self.rules:
            m = rule.pattern.search(name)
            if m:
                return rule.spaces, {k: int(v) for k, v in m.groupdict().items() if v is not None}
        raise UnsupportedModelError(
            f"parameter '{name}' of a {self.name} model has no STIP transform rule; "
            "this head or variant is not supported (add a rule in stip/families.py)"
        )


GPT2 = Family(
    name="gpt2",
    model_types=("gpt2",),
    rules=_rules(
        (r"wte\.weight", DEVICE),
        (r"wpe\.weight", (None, "h")),  # positions are added on the cloud, in permuted space
        *_norm(rf"h\.{L}\.ln_1"),
        *_norm(rf"h\.{L}\.ln_2"),
        (rf"h\.{L}\.attn\.c_attn\.weight", ("h", "qkv")),  # Conv1D stores (in, out)
        (rf"h\.{L}\.attn\.c_attn\.bias", ("qkv",)),
        (rf"h\.{L}\.attn\.c_proj\.weight", ("o", "h")),
        (rf"h\.{L}\.attn\.c_proj\.bias", ("h",)),
        (rf"h\.{L}\.mlp\.c_fc\.weight", ("h", "f")),
        (rf"h\.{L}\.mlp\.c_fc\.bias", ("f",)),
        (rf"h\.{L}\.mlp\.c_proj\.weight", ("f", "h")),
        (rf"h\.{L}\.mlp\.c_proj\.bias", ("h",)),
        *_norm(r"ln_f"),
        (r"lm_head\.weight", ("c", "h")),
        (r"score\.weight", ("c", "h")),
    ),
    device_module=_gpt2_embedding,
    device_inputs=("token_type_ids",),  # GPT-2 embeds token types with wte, which only the device holds
    notes="Device runs wte only, on the tokens and on token_type_ids (GPT-2 embeds both with wte; "
    "the sum is permuted, so the cloud never sees token types); wpe is permuted for the cloud "
    "(positions are added there). The tied LM head is untied and transformed; the cloud's wte is zeroed.",
)

def _bert_encoder_rules(layer: str) -> list[tuple[str, Spaces]]:
    """BERT-style post-norm encoder layers (BERT, RoBERTa): Q/K/V/O, two LayerNorms, FFN."""
    return [
        *_linear(rf"{layer}\.attention\.self\.query", "q", "h"),
        *_linear(rf"{layer}\.attention\.self\.key", "k", "h"),
        *_linear(rf"{layer}\.attention\.self\.value", "v", "h"),
        *_linear(rf"{layer}\.attention\.output\.dense", "h", "o"),
        *_norm(rf"{layer}\.attention\.output\.LayerNorm"),
        *_linear(rf"{layer}\.intermediate\.dense", "f", "h"),
        *_linear(rf"{layer}\.output\.dense", "h", "f"),
        *_norm(rf"{layer}\.output\.LayerNorm"),
    ]


_BERT_LAYER = rf"encoder\.layer\.{L}"
BERT = Family(
    name="bert",
    model_types=("bert",),
    rules=_rules(
        (r"embeddings\.word_embeddings\.weight", DEVICE),
        (r"embeddings\.position_embeddings\.weight", (None, "h")),
        (r"embeddings\.token_type_embeddings\.weight", (None, "h")),
        *_norm(r"embeddings\.LayerNorm"),
        *_bert_encoder_rules(_BERT_LAYER),
        *_linear(r"pooler\.dense", "h", "h"),
        *_linear(r"classifier", "c", "h"),
        *_linear(r"cls\.predictions\.transform\.dense", "h", "h"),
        *_norm(r"cls\.predictions\.transform\.LayerNorm"),
        *_linear(r"cls\.predictions\.decoder", "c", "h"),
        (r"cls\.predictions\.bias", ("c",)),
    ),
    extra_inputs=("token_type_ids",),
    notes="Device runs word_embeddings only; position and token-type embeddings and the "
    "embedding LayerNorm are permuted for the cloud. token_type_ids travel in the clear.",
)

ROBERTA = Family(
    name="roberta",
    model_types=("roberta",),
    rules=_rules(
        (r"embeddings\.(?:word_embeddings|position_embeddings|token_type_embeddings)\.weight", DEVICE),
        (r"embeddings\.LayerNorm\.(?:weight|bias)", DEVICE),
        *_bert_encoder_rules(_BERT_LAYER),
        *_linear(r"pooler\.dense", "h", "h"),
        *_linear(r"classifier\.dense", "h", "h"),
        *_linear(r"classifier\.out_proj", "c", "h"),
    ),
    device_module=_roberta_embedding,
    prepare_server=_roberta_prepare_server,
    device_inputs=("token_type_ids",),
    notes="RoBERTa numbers positions from the token ids (padding_idx + 1 + count of non-pad tokens); "
    "from inputs_embeds transformers numbers them 0..n regardless of padding, which the cloud "
    "cannot correct. So the device runs all of RobertaEmbeddings (words, positions, token types, "
    "LayerNorm) exactly as plaintext and the server bypasses that one module.",
)

_DISTILBERT_LAYER = rf"transformer\.layer\.{L}"
DISTILBERT = Family(
    name="distilbert",
    model_types=("distilbert",),
    rules=_rules(
        (r"embeddings\.word_embeddings\.weight", DEVICE),
        (r"embeddings\.position_embeddings\.weight", (None, "h")),  # positions 0..n-1, independent of ids
        *_norm(r"embeddings\.LayerNorm"),
        *_linear(rf"{_DISTILBERT_LAYER}\.attention\.q_lin", "q", "h"),
        *_linear(rf"{_DISTILBERT_LAYER}\.attention\.k_lin", "k", "h"),
        *_linear(rf"{_DISTILBERT_LAYER}\.attention\.v_lin", "v", "h"),
        *_linear(rf"{_DISTILBERT_LAYER}\.attention\.out_lin", "h", "o"),
        *_norm(rf"{_DISTILBERT_LAYER}\.sa_layer_norm"),
        *_linear(rf"{_DISTILBERT_LAYER}\.ffn\.lin1", "f", "h"),
        *_linear(rf"{_DISTILBERT_LAYER}\.ffn\.lin2", "h", "f"),
        *_norm(rf"{_DISTILBERT_LAYER}\.output_layer_norm"),
        *_linear(r"pre_classifier", "h", "h"),
        *_linear(r"classifier", "c", "h"),
    ),
    notes="Device runs word_embeddings only; position embeddings (0..n-1, the same from "
    "inputs_embeds) and the embedding LayerNorm are permuted for the cloud.",
)

_LAYER = rf"layers\.{L}"
# Attention and feed-forward pieces of the llama-like decoders, shared by every family below.
_SEPARATE_QKV = [
    *_linear(rf"{_LAYER}\.self_attn\.q_proj", "q", "h"),  # biases too: Qwen2 has Q/K/V biases
    *_linear(rf"{_LAYER}\.self_attn\.k_proj", "k", "h"),
    *_linear(rf"{_LAYER}\.self_attn\.v_proj", "v", "h"),
]
_O_PROJ = _linear(rf"{_LAYER}\.self_attn\.o_proj", "h", "o")
# Per-head q/k RMSNorm over head_dim (Qwen3, Gemma3): one weight shared by every head, so it
# needs no permutation only because RoPE fixes the within-head order of Q/K (identity). Without
# RoPE, the private within-head orders of keys.py (one per KV group) could not all be applied to
# one shared weight: the order would have to be the same for every head, and the norms permuted by it.
_QK_NORM = [(rf"{_LAYER}\.self_attn\.[qk]_norm\.weight", (None,))]
# SwiGLU: gate AND up both get pi^T . pi_i3 (the paper's print omits it for the gate).
_SWIGLU = [
    *_linear(rf"{_LAYER}\.mlp\.gate_proj", "f", "h"),
    *_linear(rf"{_LAYER}\.mlp\.up_proj", "f", "h"),
    *_linear(rf"{_LAYER}\.mlp\.down_proj", "h", "f"),
]
_PRE_POST_NORMS = ("input_layernorm", "post_attention_layernorm")
_GEMMA_NORMS = _PRE_POST_NORMS + ("pre_feedforward_layernorm", "post_feedforward_layernorm")


def _decoder_rules(attention: list, mlp: list, norms: tuple[str, ...] = _PRE_POST_NORMS,
                   prefix: tuple[tuple[str, Spaces], ...] = ()) -> tuple[Rule, ...]:
    """A llama-like decoder: device-side embed_tokens, per-layer attention/MLP/norms, final norm, heads.

    `prefix` rules come first, so they win over the decoder's (LLaVA's vision tower has
    `layers.N.self_attn` names too).
    """
    return _rules(
        *prefix,
        (r"embed_tokens\.weight", DEVICE),
        *attention,
        *_O_PROJ,
        *(rule for name in norms for rule in _norm(rf"{_LAYER}\.{name}")),
        *mlp,
        *_norm(r"norm"),
        (r"lm_head\.weight", ("c", "h")),
        (r"score\.weight", ("c", "h")),
    )


_ROPE_NOTE = ("RoPE: only whole heads (KV groups, with their query heads) move; the within-head "
              "order of Q/K is fixed, so the Q/K key space is n_kv! x (group!)^n_kv, not d!.")


def _llama_like(name: str, model_types: tuple[str, ...], notes: str, attention: list = _SEPARATE_QKV,
                mlp: list = _SWIGLU, norms: tuple[str, ...] = _PRE_POST_NORMS) -> Family:
    return Family(name=name, model_types=model_types, rope=True,
                  rules=_decoder_rules(attention, mlp, norms), notes=f"{_ROPE_NOTE} {notes}".strip())


LLAMA = _llama_like("llama", ("llama",), "")
MISTRAL = _llama_like("mistral", ("mistral",), "Sliding-window attention is a mask over positions: unchanged.")
QWEN2 = _llama_like("qwen2", ("qwen2",), "Q/K/V biases are permuted with their projections.")
QWEN3 = _llama_like("qwen3", ("qwen3",), "q_norm/k_norm (over head_dim, shared by all heads) stay in "
                    "the clear: RoPE keeps the within-head order, so they need no permutation.",
                    attention=[*_SEPARATE_QKV, *_QK_NORM])
_GEMMA_NOTE = ("The device's embedding module multiplies by sqrt(hidden) itself (scaled embedding). "
               "Norms compute x * (1 + w): w is permuted like any norm weight. Pre/post feed-forward "
               "norms are permuted; logit soft-capping (elementwise tanh) and sliding windows (masks "
               "over positions) are unchanged.")
GEMMA2 = _llama_like("gemma2", ("gemma2",), _GEMMA_NOTE, norms=_GEMMA_NORMS)
GEMMA3 = _llama_like("gemma3_text", ("gemma3_text",), f"{_GEMMA_NOTE} q_norm/k_norm stay in the clear "
                     "(see qwen3).", attention=[*_SEPARATE_QKV, *_QK_NORM], norms=_GEMMA_NORMS)
PHI3 = _llama_like("phi3", ("phi3",), "Fused qkv_proj: Q, K and V rows each get their own permutation "
                   "(key space `qkv`); fused gate_up_proj: both halves get pi_i3 (key space `gu`).",
                   attention=[(rf"{_LAYER}\.self_attn\.qkv_proj\.weight", ("qkv", "h"))],
                   mlp=[(rf"{_LAYER}\.mlp\.gate_up_proj\.weight", ("gu", "h")),
                        *_linear(rf"{_LAYER}\.mlp\.down_proj", "h", "f")])
LLAMA_LIKE_TEXT_TYPES = ("llama", "mistral", "qwen2")  # same rule set: LLaVA's language models

MIXTRAL = Family(
    name="mixtral",
    model_types=("mixtral",),
    rope=True,
    rules=_decoder_rules(_SEPARATE_QKV, [
        (rf"{_LAYER}\.mlp\.gate\.weight", (None, "h")),  # router: W_g' = pi^T W_g
        (rf"{_LAYER}\.mlp\.experts\.gate_up_proj", (None, "gu", "h")),  # (E, 2I, H)
        (rf"{_LAYER}\.mlp\.experts\.down_proj", (None, "h", "f")),  # (E, H, I)
        # the legacy on-disk layout that save_pretrained writes: one Linear per expert
        (rf"{_LAYER}\.block_sparse_moe\.gate\.weight", (None, "h")),
        (rf"{_LAYER}\.block_sparse_moe\.experts\.(?P<E>\d+)\.w[13]\.weight", ("f", "h")),
        (rf"{_LAYER}\.block_sparse_moe\.experts\.(?P<E>\d+)\.w2\.weight", ("h", "f")),
    ]),
    notes="Each expert gets its own pi_i3; the router output (expert choice) is not permuted.",
)

LLAVA = Family(
    name="llava",
    model_types=("llava",),
    rope=True,
    rules=_decoder_rules(_SEPARATE_QKV, _SWIGLU, prefix=(
        (r"vision_tower\..+", DEVICE),
        (r"multi_modal_projector\..+", DEVICE),
    )),
    device_module=LlavaDeviceInputs,
    device_inputs=("pixel_values",),
    check_config=_check_llava_text,
    notes="Vision tower and projector run on the device, which scatters the projected image "
    "features into the image-token rows and permutes the whole sequence; the cloud runs only "
    "the language model (llama/mistral/qwen2 rules) on inputs_embeds. Chosen over a permuted "
    "vision tower because the image then never leaves the device in any form, one key set "
    "(the language model's) suffices, and CLIP has no inputs_embeds entry anyway; the cost is "
    "the vision tower's compute (about 0.3B parameters for LLaVA-1.5) on the device.",
)

_VIT_LAYER = rf"(?:layers|encoder\.layer)\.{L}"  # transformers 5 names | on-disk (legacy) names
VIT = Family(
    name="vit",
    model_types=("vit",),
    rules=_rules(
        (r"embeddings\.(?:cls_token|mask_token|position_embeddings)", DEVICE),
        (r"embeddings\.patch_embeddings\.projection\.(?:weight|bias)", DEVICE),
        *_linear(rf"{_VIT_LAYER}\.attention\.(?:q_proj|attention\.query)", "q", "h"),
        *_linear(rf"{_VIT_LAYER}\.attention\.(?:k_proj|attention\.key)", "k", "h"),
        *_linear(rf"{_VIT_LAYER}\.attention\.(?:v_proj|attention\.value)", "v", "h"),
        *_linear(rf"{_VIT_LAYER}\.attention\.(?:o_proj|output\.dense)", "h", "o"),
        *_norm(rf"{_VIT_LAYER}\.layernorm_before"),
        *_norm(rf"{_VIT_LAYER}\.layernorm_after"),
        *_linear(rf"{_VIT_LAYER}\.(?:mlp\.fc1|intermediate\.dense)", "f", "h"),
        *_linear(rf"{_VIT_LAYER}\.(?:mlp\.fc2|output\.dense)", "h", "f"),
        *_norm(r"layernorm"),
        *_linear(r"pooler\.dense", "h", "h"),
        *_linear(r"classifier", "c", "h"),
    ),
    input_name="pixel_values",
    device_module=_vit_embedding,
    prepare_server=_vit_prepare_server,
    notes="ViT has no inputs_embeds entry: the device runs ViTEmbeddings (patches, CLS, "
    "positions) and the server bypasses exactly that one module.",
)

FAMILIES: dict[str, Family] = {
    t: f
    for f in (GPT2, BERT, ROBERTA, DISTILBERT, LLAMA, MISTRAL, QWEN2, QWEN3, GEMMA2, GEMMA3, PHI3, MIXTRAL, VIT, LLAVA)
    for t in f.model_types
}



def get_family(model_type: str) -> Family:
    """The family for a `config.model_type`, or an error that lists the supported ones."""
    try:
        return FAMILIES[model_type]
    except KeyError:
        raise UnsupportedModelError(
            f"model_type '{model_type}' has no STIP transform; supported: {', '.join(sorted(FAMILIES))}"
        ) from None
