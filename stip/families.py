"""Per-family transformation rules, chosen by `config.model_type` through a registry.

A rule maps a parameter name (regex, `L` = layer index) to the feature space of each tensor
dimension: `h` hidden (`pi`), `c` output (`pi_c`), and per layer `q`/`k` (`pi_i1`, Q and K),
`v` (`pi_i2`, V), `o` (`pi_i2` as seen by the output projection), `f` (`pi_i3`, feed-forward
hidden), `qkv` (GPT-2's fused Q|K|V), `gu` (Mixtral's fused gate|up per expert). `None`
leaves a dimension alone. `DEVICE` marks the modules the data owner runs (the input
embedding): the cloud copy is zeroed, since the cloud never needs them.
Every parameter must match a rule; an unmatched one is an error, never a silently wrong model.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

from torch import nn

DEVICE = "device"
Spaces = tuple  # tuple[str | None, ...] | DEVICE


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
    hidden = config.hidden_size
    heads = config.num_attention_heads
    ffn = (getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * hidden)
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


def _text_embedding(model: nn.Module) -> nn.Module:
    return model.get_input_embeddings()


def _vit_embedding(model: nn.Module) -> nn.Module:
    return model.vit.embeddings if hasattr(model, "vit") else model.embeddings


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
    device_module: Callable[[nn.Module], nn.Module] = _text_embedding
    prepare_server: Callable[[nn.Module], None] | None = None
    notes: str = ""
    extra_inputs: tuple[str, ...] = field(default_factory=tuple)  # plain, non-secret inputs the cloud gets
    device_inputs: tuple[str, ...] = field(default_factory=tuple)  # embedded by device_module and added

    def dims(self, config) -> Dims:
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
    device_inputs=("token_type_ids",),  # GPT-2 embeds token types with wte, which only the device holds
    notes="Device runs wte only, on the tokens and on token_type_ids (GPT-2 embeds both with wte; "
    "the sum is permuted, so the cloud never sees token types); wpe is permuted for the cloud "
    "(positions are added there). The tied LM head is untied and transformed; the cloud's wte is zeroed.",
)

_BERT_LAYER = rf"encoder\.layer\.{L}"
BERT = Family(
    name="bert",
    model_types=("bert",),
    rules=_rules(
        (r"embeddings\.word_embeddings\.weight", DEVICE),
        (r"embeddings\.position_embeddings\.weight", (None, "h")),
        (r"embeddings\.token_type_embeddings\.weight", (None, "h")),
        *_norm(r"embeddings\.LayerNorm"),
        *_linear(rf"{_BERT_LAYER}\.attention\.self\.query", "q", "h"),
        *_linear(rf"{_BERT_LAYER}\.attention\.self\.key", "k", "h"),
        *_linear(rf"{_BERT_LAYER}\.attention\.self\.value", "v", "h"),
        *_linear(rf"{_BERT_LAYER}\.attention\.output\.dense", "h", "o"),
        *_norm(rf"{_BERT_LAYER}\.attention\.output\.LayerNorm"),
        *_linear(rf"{_BERT_LAYER}\.intermediate\.dense", "f", "h"),
        *_linear(rf"{_BERT_LAYER}\.output\.dense", "h", "f"),
        *_norm(rf"{_BERT_LAYER}\.output\.LayerNorm"),
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


def _llama_like_rules(mlp: list[tuple[str, Spaces]]) -> tuple[Rule, ...]:
    layer = rf"layers\.{L}"
    return _rules(
        (r"embed_tokens\.weight", DEVICE),
        *_linear(rf"{layer}\.self_attn\.q_proj", "q", "h"),
        *_linear(rf"{layer}\.self_attn\.k_proj", "k", "h"),
        *_linear(rf"{layer}\.self_attn\.v_proj", "v", "h"),
        *_linear(rf"{layer}\.self_attn\.o_proj", "h", "o"),
        *_norm(rf"{layer}\.input_layernorm"),
        *_norm(rf"{layer}\.post_attention_layernorm"),
        *mlp,
        *_norm(r"norm"),
        (r"lm_head\.weight", ("c", "h")),
        (r"score\.weight", ("c", "h")),
    )


LLAMA = Family(
    name="llama",
    model_types=("llama",),
    rope=True,
    rules=_llama_like_rules([
        # SwiGLU: gate AND up both get pi^T . pi_i3 (the paper's print omits it for the gate).
        *_linear(rf"layers\.{L}\.mlp\.gate_proj", "f", "h"),
        *_linear(rf"layers\.{L}\.mlp\.up_proj", "f", "h"),
        *_linear(rf"layers\.{L}\.mlp\.down_proj", "h", "f"),
    ]),
    notes="RoPE: only whole heads (KV groups, with their query heads) move; the within-head "
    "order of Q/K is fixed, so the Q/K key space is n_kv! x (group!)^n_kv, not d!.",
)

MIXTRAL = Family(
    name="mixtral",
    model_types=("mixtral",),
    rope=True,
    rules=_llama_like_rules([
        (rf"layers\.{L}\.mlp\.gate\.weight", (None, "h")),  # router: W_g' = pi^T W_g
        (rf"layers\.{L}\.mlp\.experts\.gate_up_proj", (None, "gu", "h")),  # (E, 2I, H)
        (rf"layers\.{L}\.mlp\.experts\.down_proj", (None, "h", "f")),  # (E, H, I)
        # the legacy on-disk layout that save_pretrained writes: one Linear per expert
        (rf"layers\.{L}\.block_sparse_moe\.gate\.weight", (None, "h")),
        (rf"layers\.{L}\.block_sparse_moe\.experts\.(?P<E>\d+)\.w[13]\.weight", ("f", "h")),
        (rf"layers\.{L}\.block_sparse_moe\.experts\.(?P<E>\d+)\.w2\.weight", ("h", "f")),
    ]),
    notes="Each expert gets its own pi_i3; the router output (expert choice) is not permuted.",
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

FAMILIES: dict[str, Family] = {t: f for f in (GPT2, BERT, LLAMA, MIXTRAL, VIT) for t in f.model_types}


def get_family(model_type: str) -> Family:
    """The family for a `config.model_type`, or an error that lists the supported ones."""
    try:
        return FAMILIES[model_type]
    except KeyError:
        raise UnsupportedModelError(
            f"model_type '{model_type}' has no STIP transform; supported: {', '.join(sorted(FAMILIES))}"
        ) from None
