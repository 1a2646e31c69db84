"""Stand-ins for the developer's fine-tune of a public base: how far the cloud's weights drift.

Two ways, named in every row: `perturb` (seeded Gaussian noise of a stated size relative to
each tensor's std) and `finetune` (a few Adam steps of next-token loss on given text).
"""
from __future__ import annotations

import copy
from typing import TypeVar

import torch
from torch import nn

M = TypeVar("M", bound=nn.Module)  # a copy has its original's type


@torch.no_grad()
def perturbed_copy(model: M, relative: float, seed: int = 0) -> M:
    """A copy with every float tensor t replaced by t + relative * std(t) * N(0, 1) (seeded)."""
    if relative < 0:
        raise ValueError(f"relative drift must be >= 0, got {relative}")
    out = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    for p in out.parameters():
        if p.is_floating_point():
            scale = p.float().std() if p.numel() > 1 else p.float().abs().mean()
            p.add_((relative * scale * torch.randn(p.shape, generator=gen)).to(p.dtype))
    return out.eval()


def finetuned_copy(model: M, input_ids: torch.Tensor, steps: int, lr: float = 1e-4,
                   seed: int = 0) -> M:
    """A copy trained for `steps` Adam steps of causal-LM loss on `input_ids` [batch, seq]."""
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    torch.manual_seed(seed)
    out = copy.deepcopy(model).train()
    opt = torch.optim.Adam(out.parameters(), lr=lr)
    with torch.enable_grad():  # callers may measure under no_grad
        for _ in range(steps):
            opt.zero_grad()
            out(input_ids=input_ids, labels=input_ids).loss.backward()
            opt.step()
    return out.eval()


@torch.no_grad()
def relative_weight_change(base: nn.Module, drifted: nn.Module) -> float:
    """||W' - W|| / ||W|| over every float parameter: the drift a row reports."""
    num = den = 0.0
    for (_, a), (_, b) in zip(base.named_parameters(), drifted.named_parameters()):
        if a.is_floating_point():
            num += float((b.double() - a.double()).pow(2).sum())
            den += float(a.double().pow(2).sum())
    return (num / den) ** 0.5
