"""Random-projection privacy baseline (the paper's Fig. 6): a dense Gaussian matrix instead of a permutation.

Privacy only, no serving: it measures dcor (both conventions) between embeddings and their transform
(`transform: random_projection`, or a seeded random permutation of the same data, `transform: permutation`),
and between original and projected weights. The data draw depends only on the seed, so both bars of
Fig. 6 come from the same data. Works for every model size: only the embedding stage is materialised.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

import torch

from protocols.contract import ModelSpec, Protocol, ProtocolConfig, Row, RunRequest
from protocols.memory import materialized_embedding
from protocols.privacy import dcor_both, dcor_parameters, dcor_parameters_samples
from transport.link import NetworkProfile

log = logging.getLogger(__name__)
TRANSFORMS = ("random_projection", "permutation")


@dataclass
class RandomProjectionConfig(ProtocolConfig):
    """`protocol=random_projection` (configs/protocol/random_projection.yaml)."""

    transform: str = "random_projection"  # random_projection | permutation
    dcor_vectors: int = 16
    dcor_samples: int = 256
    param_dcor: bool = False  # parameter dcor rows (Fig. 6a; random_projection only)
    param_tensors: int = 8  # weight matrices compared for the parameter dcor

    def __post_init__(self) -> None:
        if self.transform not in TRANSFORMS:
            raise ValueError(f"protocol.transform={self.transform!r}; choose one of {list(TRANSFORMS)}")
        for name in ("dcor_vectors", "dcor_samples", "param_tensors"):
            if getattr(self, name) < 1:
                raise ValueError(f"protocol.{name}={getattr(self, name)} must be >= 1")


def projection(d: int, seed: int) -> torch.Tensor:
    """A d x d Gaussian matrix scaled to keep norms (the paper's random linear projection)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(d, d, generator=g) / d ** 0.5


def permutation(d: int, seed: int) -> torch.Tensor:
    """A seeded random permutation of d features (what STIP applies to embeddings)."""
    return torch.randperm(d, generator=torch.Generator().manual_seed(seed))


def embeddings(model: ModelSpec, request: RunRequest) -> torch.Tensor:
    """Plaintext token (or patch) embeddings of random inputs, from the materialised embedding stage."""
    emb = materialized_embedding(model, request.seed)
    inputs = model.make_inputs(request.batch_size, request.seq_len, request.seed)
    with torch.no_grad():
        if "pixel_values" in inputs:
            return emb(inputs["pixel_values"]).float()
        table = emb["wte"] if isinstance(emb, torch.nn.ModuleDict) else getattr(emb, "word_embeddings", emb)
        return table(inputs["input_ids"]).float()


class RandomProjectionProtocol(Protocol[RandomProjectionConfig]):
    """dcor of a random projection (or a permutation) of the embeddings and weights."""

    config_class: ClassVar[type[ProtocolConfig]] = RandomProjectionConfig
    parallel_safe: ClassVar[bool] = True

    def run(self, model: ModelSpec, network: NetworkProfile, request: RunRequest) -> list[Row]:
        """One dcor row per convention; parameter dcor when asked and the model fits here."""
        e = embeddings(model, request)
        d = e.shape[-1]
        if self.cfg.transform == "random_projection":
            moved = e @ projection(d, request.seed)
        else:
            moved = e[..., permutation(d, request.seed)]
        vals = dcor_both(e, moved, seed=request.seed, n_vectors=self.cfg.dcor_vectors,
                         n_samples=self.cfg.dcor_samples)
        rows = [Row("embeddings", metric, v, "host") for metric, v in vals.items()]
        if self.cfg.param_dcor and self.cfg.transform == "random_projection" and model.fits_on_host:
            rows += self.parameter_rows(model, request, d)
        return rows

    def parameter_rows(self, model: ModelSpec, request: RunRequest, d: int) -> list[Row]:
        """Per-vector dcor of W vs W R (input side projected) for the first few d-wide weight matrices, and the
        bias-corrected sample-wise dcor of the same pair (metric dcor_samples_u)."""
        plain = model.build()
        r = projection(d, request.seed + 1)
        rows: list[Row] = []
        j = 0  # the tensor's index: the `repeat` of both conventions' rows
        for name, w in plain.state_dict().items():
            if j >= self.cfg.param_tensors or w.ndim != 2 or "emb" in name or "wte" in name:
                continue
            w = w.float()
            if w.shape[1] == d:
                moved = w @ r
            elif w.shape[0] == d:
                moved = r.T @ w
            else:
                continue
            rows.append(Row("parameters", "dcor", dcor_parameters(w, moved, seed=request.seed), "host", repeat=j))
            rows.append(Row("parameters", "dcor_samples_u", dcor_parameters_samples(w, moved, d, seed=request.seed),
                            "host", repeat=j))
            j += 1
        return rows
