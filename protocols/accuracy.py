"""One accuracy definition for every protocol: the protocol's outputs against the plaintext model's.

Which positions count: every position whose attention mask is 1 (all positions when the output has no
sequence axis, e.g. pooled or image-class outputs, or when there is no mask). Over those positions:
- `max_abs_error`: the largest |output - plaintext| of any element;
- `sum_abs_error`: |output - plaintext| summed over the last axis (the output vector), averaged over
  positions (the paper's Table 5 "sum of absolute differences");
- `top1_agreement`: fraction of positions whose argmax over the last axis (vocabulary for logits,
  features for hidden states) matches; for generation, the fraction of generated tokens equal to
  plaintext greedy decoding;
- `cosine_similarity`: per sample, the cosine between the mean over its counted positions of the output and
  of the plaintext (mean pooling: all-MiniLM-L6-v2's sentence embedding), averaged over the samples whose
  output is finite (NaN when none is);
- `diverged_fraction`: fraction of samples with a non-finite output at a counted position (an
  approximation that overflowed); `max_abs_error`, `sum_abs_error` and `top1_agreement` then read NaN,
  `cosine_similarity` is over the finite samples.
Computed in float64 so the float32 rounding of the protocol is what is measured.
"""
from __future__ import annotations

from typing import Mapping

import torch

from protocols.contract import Row


def output_tensor(outputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The tensor accuracy is judged on: logits if present, else the last hidden state."""
    for key in ("logits", "last_hidden_state"):
        if key in outputs and outputs[key] is not None:
            return outputs[key]
    raise KeyError(f"no logits or last_hidden_state in outputs {sorted(outputs)}")


def accuracy(output: torch.Tensor, reference: torch.Tensor,
             attention_mask: torch.Tensor | None = None) -> dict[str, float]:
    """The accuracy metrics over the counted positions (see the module docstring)."""
    out, ref = output.detach().double(), reference.detach().double()
    if out.shape != ref.shape:
        raise ValueError(f"output shape {tuple(out.shape)} differs from plaintext {tuple(ref.shape)}")
    if out.ndim == 3:
        keep = torch.ones(out.shape[:2], dtype=torch.bool)
        if attention_mask is not None and tuple(attention_mask.shape) == tuple(out.shape[:2]):
            keep = attention_mask.bool()
    else:  # no sequence axis: every row is a sample of one position
        out, ref = out.reshape(-1, 1, out.shape[-1]), ref.reshape(-1, 1, ref.shape[-1])
        keep = torch.ones(out.shape[:2], dtype=torch.bool)
    flat_out, flat_ref = out[keep], ref[keep]
    diff = (flat_out - flat_ref).abs()
    weight = keep.unsqueeze(-1).double()
    pooled_out = (out * weight).sum(1) / weight.sum(1).clamp(min=1.0)
    pooled_ref = (ref * weight).sum(1) / weight.sum(1).clamp(min=1.0)
    cosine = torch.nn.functional.cosine_similarity(pooled_out, pooled_ref, dim=-1)
    finite = torch.stack([torch.isfinite(out[i][keep[i]]).all() for i in range(out.shape[0])])
    return {"max_abs_error": float(diff.max()), "sum_abs_error": float(diff.sum(-1).mean()),
            "top1_agreement": (float((flat_out.argmax(-1) == flat_ref.argmax(-1)).double().mean())
                               if bool(finite.all()) else float("nan")),
            "cosine_similarity": float(cosine[finite].mean()) if bool(finite.any()) else float("nan"),
            "diverged_fraction": float(1.0 - finite.double().mean())}


def accuracy_rows(output: torch.Tensor, reference: torch.Tensor, attention_mask: torch.Tensor | None,
                  repeat: int, source: str) -> list[Row]:
    """Rows of `accuracy` at phase `output`."""
    return [Row("output", m, v, source, repeat=repeat) for m, v in accuracy(output, reference, attention_mask).items()]


def token_agreement_row(generated: torch.Tensor, reference: torch.Tensor, repeat: int, source: str) -> Row:
    """top1_agreement of generated tokens against plaintext greedy decoding (the same definition on tokens)."""
    return Row("output", "top1_agreement", float((generated == reference).double().mean()), source, repeat=repeat)
