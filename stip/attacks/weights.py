"""Weight alignment (ArrowMatch-style): recover the keys from the cloud's weights and the public base.

Assumption: the cloud holds its transformed weights and the public base weights the developer
fine-tuned from (STIP's own scenario); no key, no traffic. First `pi`: each hidden-space slice
of every tensor is fingerprinted by quantiles of its values along the other dims (blind to
their permutations) and assigned to a base slice with scipy's Hungarian solver. Then every
per-layer space: with `pi` undone, slices are matched to base slices directly.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Mapping

import torch
from scipy.optimize import linear_sum_assignment

from ..families import DEVICE, Family
from ..keys import KeySet
from ..transform import _LAYER_KEYS, space_index

ASSUMPTION = "cloud holds its transformed weights and the public base weights; no key, no traffic"


def _assign(cloud: torch.Tensor, base: torch.Tensor, hungarian_limit: int, chunk: int = 512) -> torch.Tensor:
    """index[i] = the base row matched to cloud row i: Hungarian up to hungarian_limit rows, else nearest."""
    if cloud.shape[0] <= hungarian_limit:
        _, cols = linear_sum_assignment(torch.cdist(cloud.double(), base.double()).numpy())
        return torch.as_tensor(cols, dtype=torch.long)
    blocks = [torch.cdist(cloud[i:i + chunk], base).argmin(dim=-1) for i in range(0, cloud.shape[0], chunk)]
    return torch.cat(blocks)


def _quantiles(t: torch.Tensor, dim: int, n: int) -> torch.Tensor:
    """[size of dim, n]: n evenly spaced order statistics of each slice along `dim`."""
    flat = t.movedim(dim, 0).reshape(t.shape[dim], -1).float()
    if flat.shape[1] == 1:
        return flat
    ranks = torch.linspace(0, flat.shape[1] - 1, min(n, flat.shape[1])).round().long()
    return flat.sort(dim=1).values[:, ranks]


def _standardise(block: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return block / scale.clamp_min(1e-12)


def recover_pi(family: Family, cloud: Mapping[str, torch.Tensor], base: Mapping[str, torch.Tensor],
               quantiles: int = 64) -> torch.Tensor:
    """`pi` from every tensor with a hidden (`h`) dimension; cloud slice j = base slice pi[j]."""
    feats_c, feats_b = [], []
    for name, tensor in cloud.items():
        spaces, _ = family.spaces_for(name)
        if spaces == DEVICE or "h" not in spaces or name not in base:
            continue
        dim = spaces.index("h")
        b = _quantiles(base[name], dim, quantiles)
        scale = b.std() if b.numel() > 1 else b.abs().mean()
        feats_c.append(_standardise(_quantiles(tensor, dim, quantiles), scale))
        feats_b.append(_standardise(b, scale))
    if not feats_c:
        raise ValueError(f"no {family.name} tensor has a hidden dimension; nothing to align")
    return _assign(torch.cat(feats_c, 1), torch.cat(feats_b, 1), hungarian_limit=1 << 30)


def _key_name(space: str, where: Mapping[str, int]) -> str:
    if space == "c":
        return "pi_c"
    return f"layers.{where['L']}.{_LAYER_KEYS.get(space, space)}"


def recover_layer_keys(family: Family, cloud: Mapping[str, torch.Tensor], base: Mapping[str, torch.Tensor],
                       pi: torch.Tensor, hungarian_limit: int = 8192) -> dict[str, tuple[torch.Tensor, dict]]:
    """Every other space's index, {key name: (recovered index, where)}, given the recovered `pi`.

    Spaces with one permutation per expert inside a fused 3-D tensor are skipped (not attempted).
    """
    inverse = torch.argsort(pi)
    groups: dict[tuple, list[tuple[torch.Tensor, torch.Tensor]]] = defaultdict(list)
    wheres: dict[tuple, dict] = {}
    for name, tensor in cloud.items():
        spaces, where = family.spaces_for(name)
        if spaces == DEVICE or name not in base or tensor.dim() > 2:
            continue
        aligned = tensor
        if "h" in spaces:
            aligned = tensor.index_select(spaces.index("h"), inverse)
        for dim, space in enumerate(spaces):
            if space in (None, "h"):
                continue
            if any(s not in (None, "h", space) for s in spaces):
                continue  # two private spaces on one tensor: nothing to align against directly
            key = (space, tuple(sorted(where.items())))
            wheres[key] = {"space": space, **where}
            groups[key].append((aligned.movedim(dim, 0).reshape(tensor.shape[dim], -1).float(),
                                base[name].movedim(dim, 0).reshape(tensor.shape[dim], -1).float()))
    out = {}
    for key, pairs in groups.items():
        scales = [b.std() if b.numel() > 1 else b.abs().mean() for _, b in pairs]
        c = torch.cat([_standardise(a, s) for (a, _), s in zip(pairs, scales)], 1)
        b = torch.cat([_standardise(b, s) for (_, b), s in zip(pairs, scales)], 1)
        space = wheres[key]["space"]
        where = {k: v for k, v in wheres[key].items() if k != "space"}
        out[_key_name(space, where)] = (_assign(c, b, hungarian_limit), wheres[key])
    return out


def key_recovery_fractions(recovered: Mapping[str, tuple[torch.Tensor, dict]], pi: torch.Tensor,
                           keys: KeySet) -> dict[str, float]:
    """Fraction of each key's entries recovered (scored against the developer's keys)."""
    fractions = {"pi": float((pi == keys["pi"]).float().mean())}
    for name, (index, where) in recovered.items():
        truth = space_index(keys, where["space"], {k: v for k, v in where.items() if k != "space"})
        if truth.dim() == 1 and truth.numel() == index.numel():
            fractions[name] = float((index == truth).float().mean())
    return fractions
