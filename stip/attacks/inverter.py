"""A learned inverter: the attacker trains a map from layer-l states back to tokens on public text.

The cloud runs the public base model on public text it owns, so it has as many (layer-l state, token) pairs
as it likes; what it sees from users are the same states with their features permuted by the secret `pi`.
Two ways across the permutation (Hidden No More, arXiv 2505.18332, breaks permutation schemes the same two
ways: permutation-invariant statistics, and undoing the permutation):
- `sorted`: train on sorted state values, blind to any feature permutation;
- `aligned`: estimate the permutation first, matching each observed feature's value distribution over the
  users' traffic (quantiles over many positions) to a public feature's (scipy's Hungarian solver), undo it,
  then use a map trained on the plain public states;
- `weights`: the same map, with the permutation the cloud reads off its own weights (weights.recover_pi),
  which holds under noise on the traffic since noise never touches the weights.
The map (`ridge`: closed-form ridge regression; `mlp`: one hidden layer) predicts the token's public input
embedding; the guess is the nearest row of the full public embedding table (cosine), so tokens never seen
in training can still be named.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from scipy.optimize import linear_sum_assignment
from torch import nn
from transformers import PreTrainedModel

from .hidden import states_at

ASSUMPTIONS = {
    "sorted": ("cloud holds the public base model and public text; trains a map from sorted layer-l states "
               "(blind to the feature permutation) to tokens; sees users' permuted layer-l states; no key"),
    "aligned": ("cloud holds the public base model and public text; matches each observed feature's value "
                "distribution over users' traffic to a public feature's (Hungarian) to undo the permutation, "
                "then applies a map trained on public layer-l states; no key"),
    "weights": ("cloud holds the public base model, public text and its transformed weights; recovers pi by "
                "weight alignment (weights.recover_pi), undoes it, then applies a map trained on public layer-l "
                "states; no key"),
}
FEATURES = tuple(ASSUMPTIONS)
KINDS = ("ridge", "mlp")


@torch.no_grad()
def real_states(model: PreTrainedModel, layer: int, mask: torch.Tensor, **inputs: torch.Tensor) -> torch.Tensor:
    """[n_real, d]: the residual stream entering block `layer` at the real positions (mask True), row by row."""
    return states_at(model, layer, attention_mask=mask.long(), **inputs)[mask.bool()].float()


def feature_profiles(states: torch.Tensor, quantiles: int = 32) -> torch.Tensor:
    """[d, quantiles]: each feature's value quantiles over the rows (what a permutation carries along)."""
    q = torch.linspace(0.02, 0.98, quantiles, dtype=states.dtype)
    return torch.quantile(states, q, dim=0).T


def align_features(observed: torch.Tensor, public: torch.Tensor, quantiles: int = 32) -> torch.Tensor:
    """index[j] = the public feature that observed feature j is (observed[:, j] ~ public[:, index[j]])."""
    if observed.shape[1] != public.shape[1]:
        raise ValueError(f"observed has {observed.shape[1]} features, public {public.shape[1]}: use the same layer")
    a, b = feature_profiles(observed.double(), quantiles), feature_profiles(public.double(), quantiles)
    scale = b.std().clamp_min(1e-12)
    _, cols = linear_sum_assignment(torch.cdist(a / scale, b / scale).numpy())
    return torch.as_tensor(cols, dtype=torch.long)


def nearest_rows(predicted: torch.Tensor, table: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """The table row (token id) of highest cosine similarity to each predicted embedding, full table."""
    p = nn.functional.normalize(predicted.float(), dim=-1)
    best_sim = torch.full((p.shape[0],), -float("inf"))
    best = torch.zeros(p.shape[0], dtype=torch.long)
    for start in range(0, table.shape[0], chunk):
        sim, idx = (p @ nn.functional.normalize(table[start:start + chunk].float(), dim=-1).T).max(dim=-1)
        better = sim > best_sim
        best_sim, best = torch.where(better, sim, best_sim), torch.where(better, idx + start, best)
    return best


@dataclass
class LearnedInverter:
    """States -> token ids, fitted on the attacker's public (state, token) pairs; `features` says how it
    crosses the permutation, `kind` which map it learns."""

    features: str = "aligned"
    kind: str = "ridge"
    ridge: float = 1e-2
    hidden: int = 256
    epochs: int = 8
    lr: float = 1e-3
    seed: int = 0
    quantiles: int = 32
    _public: torch.Tensor | None = field(default=None, repr=False)
    _map: nn.Module | None = field(default=None, repr=False)
    _table: torch.Tensor | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.features not in FEATURES:
            raise ValueError(f"features must be one of {FEATURES}, got {self.features!r}")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")

    @property
    def undoes_permutation(self) -> bool:
        """Whether the map takes plain (un-permuted) states: every route but `sorted`."""
        return self.features != "sorted"

    def _x(self, states: torch.Tensor) -> torch.Tensor:
        return states.sort(dim=-1).values if self.features == "sorted" else states

    @torch.no_grad()
    def fit(self, states: torch.Tensor, tokens: torch.Tensor, table: torch.Tensor) -> "LearnedInverter":
        """Learn the map from public states [n, d] (plain, as the public model gives them) to table[tokens]."""
        if states.shape[0] != tokens.numel() or states.shape[0] < 2:
            raise ValueError(f"{states.shape[0]} states for {tokens.numel()} tokens; need equal counts >= 2")
        self._public, self._table = states.float(), table.detach().float()
        x, y = self._x(states.float()), self._table[tokens]
        mu, sd = x.mean(0), x.std(0).clamp_min(1e-6)
        z = (x - mu) / sd
        if self.kind == "ridge":
            a = z.double().T @ z.double() + self.ridge * z.shape[0] * torch.eye(z.shape[1], dtype=torch.double)
            w = torch.linalg.solve(a, z.double().T @ (y - y.mean(0)).double()).float()
            linear = nn.Linear(z.shape[1], y.shape[1])
            linear.weight.copy_(w.T)
            linear.bias.copy_(y.mean(0))
            self._map = nn.Sequential(_Standardise(mu, sd), linear)
        else:
            self._map = nn.Sequential(_Standardise(mu, sd), *self._train_mlp(z, y))
        return self

    def _train_mlp(self, z: torch.Tensor, y: torch.Tensor) -> list[nn.Module]:
        torch.manual_seed(self.seed)
        layers = [nn.Linear(z.shape[1], self.hidden), nn.GELU(), nn.Linear(self.hidden, y.shape[1])]
        net = nn.Sequential(*layers)
        opt = torch.optim.Adam(net.parameters(), lr=self.lr)
        gen = torch.Generator().manual_seed(self.seed)
        with torch.enable_grad():
            for _ in range(self.epochs):
                for idx in torch.randperm(z.shape[0], generator=gen).split(256):
                    opt.zero_grad()
                    pred = net(z[idx])
                    loss = 1 - nn.functional.cosine_similarity(pred, y[idx], dim=-1).mean()
                    loss.backward()
                    opt.step()
        return layers

    @torch.no_grad()
    def alignment(self, observed: torch.Tensor) -> torch.Tensor | None:
        """The permutation estimated from the observed states (features="aligned"), else None."""
        if self.features != "aligned":
            return None
        if self._public is None:
            raise RuntimeError("call fit(public states, tokens, table) before alignment()")
        return align_features(observed.float(), self._public, self.quantiles)

    @torch.no_grad()
    def attack(self, observed: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """Token guesses [n] for observed (permuted) states [n, d]; `index` = a known alignment (else estimated)."""
        if self._map is None or self._table is None:
            raise RuntimeError("call fit(public states, tokens, table) before attack()")
        x = observed.float()
        if self.undoes_permutation:
            index = self.alignment(x) if index is None else index
            if index is None:
                raise ValueError("features='weights' needs the index recovered from the weights: attack(observed, pi)")
            plain = torch.empty_like(x)
            plain[:, index] = x  # observed feature j is public feature index[j]
            x = plain
        return nearest_rows(self._map(self._x(x)), self._table)


class _Standardise(nn.Module):
    mu: torch.Tensor  # buffers, registered in __init__
    sd: torch.Tensor

    def __init__(self, mu: torch.Tensor, sd: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mu", mu)
        self.register_buffer("sd", sd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mu) / self.sd
