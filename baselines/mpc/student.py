"""A `transformers` BERT whose forward uses MPCFormer's approximations, so a student can be trained with them.

MPCFormer (Li et al., ICLR 2023) replaces GeLU by Quad (0.125 x^2 + 0.25 x + 0.5) and softmax by 2Quad
((x + 5)^2 / sum of (x + 5)^2 over unmasked keys) *during* distillation, so the student's weights adapt to
them. Here the two functions are the same formulas as `baselines.mpc.approximations` (`gelu_quad`,
`softmax_2quad`), in torch autograd: Quad replaces each layer's `intermediate_act_fn`, 2Quad is registered
as a `transformers` attention implementation. LayerNorm stays exact: the MPC forward's range-reduced
inverse square root is accurate to ~2e-7 (approximations.py), and MPCFormer's BatchNorm swap is not
reproduced (BASELINES.md). The patched model saves as a plain BertModel; the MPC forward applies the
approximations again when it runs the checkpoint with `approx=mpcformer`.
"""
from __future__ import annotations

from typing import Any

import torch
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

from baselines.mpc.approximations import gelu_quad
from baselines.mpc.ops import PlainOps

ATTENTION_NAME = "mpcformer_2quad"
TWO_QUAD_SHIFT = 5.0  # the c of (x + c)^2 in MPCFormer's 2Quad
# The MPC forward takes 2Quad's reciprocal of the row mean of (x + 5)^2 with CrypTen's Newton-Raphson start
# 3 exp(1 - 2x) + 0.003, whose exp (1 + z/256)^256 blows up once 1 - 2x < -512: a row mean above ~256 gives
# inf/NaN (undistilled MiniLM reaches 483 in layer 0). Distillation keeps row means below this bound.
RECIPROCAL_SAFE_MAX = 128.0
_PLAIN = PlainOps()


class QuadGelu(torch.nn.Module):
    """MPCFormer's Quad GeLU: the approximations module's formula, differentiable."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gelu_quad(_PLAIN, x)


def _keep_mask(attention_mask: torch.Tensor | None, scores: torch.Tensor) -> torch.Tensor:
    """A 0/1 float mask of the keys to attend, from the boolean or additive mask `transformers` passes."""
    if attention_mask is None:
        return torch.ones_like(scores)
    if attention_mask.dtype == torch.bool:
        keep = attention_mask
    else:  # additive: 0 where attended, the dtype's minimum where masked
        keep = attention_mask > torch.finfo(attention_mask.dtype).min / 2
    return keep.to(scores.dtype).expand_as(scores)


def two_quad_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                       attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                       **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled dot-product attention with 2Quad in place of softmax (an `AttentionInterface` function)."""
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    keep = _keep_mask(attention_mask, scores)
    num = (scores + TWO_QUAD_SHIFT).square() * keep
    row_sum = num.sum(-1, keepdim=True)
    row_mean = row_sum / keep.sum(-1, keepdim=True).clamp(min=1.0)
    module.range_excess = torch.relu(row_mean / RECIPROCAL_SAFE_MAX - 1.0).square().mean()
    probs = num / row_sum
    probs = torch.nn.functional.dropout(probs, p=dropout, training=module.training)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), probs


AttentionInterface.register(ATTENTION_NAME, two_quad_attention)
# Without a mask function of its own, a registered implementation gets no padding mask at all.
AttentionMaskInterface.register(ATTENTION_NAME, ALL_MASK_ATTENTION_FUNCTIONS["eager"])


def range_penalty(model: Any) -> torch.Tensor:
    """Mean over layers of the last forward's squared relative excess of 2Quad row means over the safe bound."""
    bert = model if type(model).__name__ == "BertModel" else model.bert
    return torch.stack([layer.attention.self.range_excess for layer in bert.encoder.layer]).mean()


def mpcformer_student(model: Any) -> Any:
    """Patch a BertModel in place to run Quad GeLU and 2Quad attention; returns it."""
    if getattr(model.config, "model_type", None) != "bert":
        raise ValueError(f"MPCFormer distillation supports BERT models; got model_type "
                         f"{getattr(model.config, 'model_type', None)!r} (use minilm-l6 or a bert-* shape)")
    bert = model if type(model).__name__ == "BertModel" else getattr(model, "bert", None)
    if bert is None:
        raise ValueError(f"model class {type(model).__name__!r} has no BertModel inside; use AutoModel (head: base)")
    for layer in bert.encoder.layer:
        layer.intermediate.intermediate_act_fn = QuadGelu()
    model.set_attn_implementation(ATTENTION_NAME)
    return model


def restore_exact(model: Any) -> Any:
    """Undo `mpcformer_student` (exact GeLU, eager softmax) before saving, so the checkpoint is a plain BERT."""
    from transformers.activations import ACT2FN  # noqa: PLC0415

    bert = model if type(model).__name__ == "BertModel" else model.bert
    for layer in bert.encoder.layer:
        layer.intermediate.intermediate_act_fn = ACT2FN[model.config.hidden_act]
        layer.attention.self.__dict__.pop("range_excess", None)  # the last step's graph: drop it
    model.set_attn_implementation("eager")
    return model
