"""Random-projection privacy baseline (the paper's Fig. 6): a dense Gaussian matrix instead of a permutation.

Privacy only, no serving: it measures dcor (both conventions) between embeddings and their random
projection, and between original and projected weights. The same rows are produced for a seeded
random permutation of the same data (approx = "permutation"), so both bars of Fig. 6 come from one
run and one data draw. Works for every model size: only the embedding stage is materialised.
"""
from __future__ import annotations

import logging

import torch

from protocols.contract import ModelSpec, NetworkProfile, Protocol, Row, RunRequest
from protocols.memory import materialized_embedding
from protocols.privacy import dcor_both, dcor_parameters

log = logging.getLogger(__name__)


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


class RandomProjectionProtocol(Protocol):
    """dcor of random projection vs permutation on the same embeddings and weights."""

    name = "random_projection"

    def run(self, model: ModelSpec, network: NetworkProfile, request: RunRequest) -> list[Row]:
        """One dcor row per convention and transform; parameter dcor when the model fits here."""
        e = embeddings(model, request)
        d = e.shape[-1]
        transforms = {
            "random_projection": lambda x: x @ projection(d, request.seed),
            "permutation": lambda x: x[..., permutation(d, request.seed)],
        }
        rows: list[Row] = []
        nv, ns = int(self.cfg.get("dcor_vectors", 16)), int(self.cfg.get("dcor_samples", 256))
        for approx, f in transforms.items():
            for metric, v in dcor_both(e, f(e), seed=request.seed, n_vectors=nv, n_samples=ns).items():
                rows.append(Row("embeddings", metric, v, approx=approx))
        if request.options.get("param_dcor") and model.extra.get("fits_on_host", True):
            rows += self.parameter_rows(model, request, d)
        return rows

    def parameter_rows(self, model: ModelSpec, request: RunRequest, d: int) -> list[Row]:
        """Per-vector dcor of W vs W R (input side projected) for the first few d-wide weight matrices."""
        plain = model.build()
        r = projection(d, request.seed + 1)
        rows: list[Row] = []
        n = 0
        for name, w in plain.state_dict().items():
            if n >= int(self.cfg.get("param_tensors", 8)) or w.ndim != 2 or "emb" in name or "wte" in name:
                continue
            w = w.float()
            if w.shape[1] == d:
                moved = w @ r
            elif w.shape[0] == d:
                moved = r.T @ w
            else:
                continue
            rows.append(Row("parameters", "dcor", dcor_parameters(w, moved, seed=request.seed), repeat=n,
                            approx="random_projection"))
            n += 1
        return rows
