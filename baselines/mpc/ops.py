"""Backends the forward pass and the approximations run on: float64 plaintext or CrypTen shares.

The two share the tensor arithmetic (`mul`, `add`, `square`, `matmul`, `sum`, `view`, ...); a backend
adds what differs: comparisons, the row max, who owns which tensor, and how a result is revealed.
"""
from __future__ import annotations

from typing import Any

import torch

Tensor = Any


class PlainOps:
    """float64 plaintext simulation: comparisons are 0/1 float tensors, as CrypTen's are."""

    is_mpc = False
    rank = None

    def lt(self, x: Tensor, c: float) -> Tensor:
        return (x < c).to(x.dtype)

    def gt(self, x: Tensor, c: float) -> Tensor:
        return (x > c).to(x.dtype)

    def max(self, x: Tensor, dim: int) -> Tensor:
        return x.amax(dim=dim, keepdim=True)

    def argmax(self, x: Tensor, dim: int) -> Tensor:
        return x.argmax(dim=dim, keepdim=True).to(x.dtype)

    def cat(self, xs: list[Tensor], dim: int) -> Tensor:
        return torch.cat(xs, dim=dim)

    def weight(self, t: torch.Tensor) -> Tensor:
        """A server-owned tensor (the model's weights)."""
        return t.detach().to(torch.float64)

    def private_input(self, t: torch.Tensor) -> Tensor:
        """A device-owned tensor (the user's input)."""
        return t.detach().to(torch.float64)

    def public(self, t: torch.Tensor) -> torch.Tensor:
        """A tensor both parties know (masks, RoPE tables), in this backend's float type."""
        return t.detach().to(torch.float64)

    def reveal(self, x: Tensor) -> torch.Tensor | None:
        """The result as the device sees it."""
        return x


class MpcOps:
    """CrypTen backend for party `rank`: rank 0 is the server (weights), rank 1 the device (input)."""

    is_mpc = True
    SERVER, DEVICE = 0, 1

    def __init__(self, crypten: Any, rank: int) -> None:
        self.crypten = crypten
        self.rank = rank

    def lt(self, x: Tensor, c: float | torch.Tensor) -> Tensor:
        return self._fixed_point(x.lt(c))

    def gt(self, x: Tensor, c: float | torch.Tensor) -> Tensor:
        return self._fixed_point(x.gt(c))

    def _fixed_point(self, indicator: Tensor) -> Tensor:
        """Re-encode a 0/1 comparison result (CrypTen gives it scale 1) at the default fixed-point scale.

        Local and exact (shares times the integer scale); without it a public float multiplying or
        added to the indicator would be rounded to an integer by CrypTen's scale-1 encoder.
        """
        encoder = self.crypten.encoder.FixedPointEncoder()
        out = indicator.mul(int(encoder.scale))
        out.encoder = encoder
        return out

    def max(self, x: Tensor, dim: int) -> Tensor:
        """Row max by a plain comparison tree, as PUMA's code does: ceil(log2 n) levels of one comparison
        and one product each, halving the row. CrypTen's `max(dim)` also builds the one-hot argmax (an
        equality test over the whole input) and ends in an O(n^2) pairwise stage, which a softmax never uses;
        its max-only helper (`_max_helper_all_tree_reductions`) keeps that pairwise stage and pays two
        products per level (`crypten.where`), so the tree is written here with one: b + [a > b] (a - b).
        """
        dim = dim % x.dim()
        while x.size(dim) > 1:
            half, odd = divmod(x.size(dim), 2)
            parts = x.split([half, half, 1] if odd else [half, half], dim=dim)
            a, b = parts[0], parts[1]
            top = b.add(a.sub(b).mul(a.gt(b)))  # the indicator has scale 1: the product needs no truncation
            x = self.cat([top, parts[2]], dim=dim) if odd else top
        return x

    def argmax(self, x: Tensor, dim: int) -> Tensor:
        """Index of the row max, still shared: the tree max, one equality test against it, and the sum of
        indicator x index (public integers on the scale-1 indicator: exact). A tie sums the tied indices."""
        dim = dim % x.dim()
        hot = x.eq(self.max(x, dim))
        shape = [1] * x.dim()
        shape[dim] = x.size(dim)
        return hot.mul(torch.arange(x.size(dim), dtype=torch.float32).view(shape)).sum(dim, keepdim=True)

    def cat(self, xs: list[Tensor], dim: int) -> Tensor:
        return self.crypten.cat(xs, dim=dim)

    def _share(self, t: torch.Tensor, owner: int) -> Tensor:
        # The other party passes zeros of the same shape: it never touches the owner's values.
        data = t.detach().float() if self.rank == owner else torch.zeros(t.shape)
        return self.crypten.cryptensor(data, src=owner)

    def weight(self, t: torch.Tensor) -> Tensor:
        return self._share(t, self.SERVER)

    def private_input(self, t: torch.Tensor) -> Tensor:
        return self._share(t, self.DEVICE)

    def public(self, t: torch.Tensor) -> torch.Tensor:
        return t.detach().float()

    def reveal(self, x: Tensor) -> torch.Tensor | None:
        """Open the result to the device only; the server gets None."""
        out = x.get_plain_text(dst=self.DEVICE)
        return out if self.rank == self.DEVICE else None
