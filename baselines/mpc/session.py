"""One MPC forward run end to end: share the weights once, run the forward at both parties, and merge
their per-party counters into per-party and on-the-wire numbers per operator class.

Bytes: CrypTen counts at each party what it sends plus what it receives, so a transfer is counted at
both ends; the bytes on the wire are half the sum over parties. Rounds: the larger party count.
Latency: the slower party's time (it bounds the run).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from baselines.mpc.approximations import Approximation, get_approximation
from baselines.mpc.forward import (
    EMBEDDING_MODES,
    PUBLIC_KEYS,
    ModelWeights,
    TransformerForward,
    extract_weights,
    share_weights,
)
from baselines.mpc.hosts import Placement
from baselines.mpc.launcher import Launch, provider_security, run_parties
from baselines.mpc.meter import Meter, WeightOpenings, crypten_comm_reader, hook_ttp_requests, hook_weight_openings
from baselines.mpc.ops import MpcOps

STAT_KEYS = ("seconds", "rounds", "bytes", "preprocessing_rounds", "preprocessing_bytes")


@dataclass
class Job:
    """What both parties run (handed over by fork, never pickled)."""

    weights: ModelWeights
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    approx: Approximation
    embedding: str
    provider: str
    n_runs: int
    next_token: bool = False

    def for_rank(self, rank: int) -> "Job":
        """What `rank` may hold when it runs elsewhere: the server (0) its weights and zeros for the device's
        input, the device (1) the input, zeros for the weights (their shapes are public) and, with
        embedding=device, its own embedding tables; a third party (TTP) neither. Outputs match (ops._share
        ignores a non-owner's values), which tests/test_mpc_hosts.py checks to the byte."""
        keep = set(PUBLIC_KEYS) | ({"wte", "wpe", "tte"} if rank == 1 and self.embedding == "device" else set())
        tensors = {k: v if rank == 0 or k in keep else torch.zeros_like(v) for k, v in self.weights.tensors.items()}
        ids = self.input_ids if rank == 1 else torch.zeros_like(self.input_ids)
        return replace(self, weights=replace(self.weights, tensors=tensors), input_ids=ids)


def party(rank: int, crypten: Any, job: Job) -> dict[str, Any]:
    """What one party does: share weights and input, run the forward `n_runs` times, report counters
    (per run: the operator classes, the whole forward, and the bytes that re-open the weights)."""
    ops = MpcOps(crypten, rank)
    meter = Meter(crypten_comm_reader(crypten))
    unhooks = [hook_ttp_requests(crypten, meter)] if job.provider == "TTP" and rank == 0 else []
    try:
        start = meter.snapshot()
        shared = share_weights(job.weights, ops, job.embedding)
        setup = Meter.span(start, meter.snapshot())
        openings = WeightOpenings()
        unhooks.append(hook_weight_openings(crypten, shared.values(), openings))
        runs, output = [], None
        for _ in range(job.n_runs):
            meter.reset()
            openings.bytes = 0.0
            fwd = TransformerForward(job.weights, shared, ops, job.approx, meter, job.embedding, job.next_token)
            start = meter.snapshot()
            out = fwd(job.input_ids, job.attention_mask)
            runs.append({"phases": meter.as_dict(), "total": Meter.span(start, meter.snapshot()),
                         "weight_open_bytes": openings.bytes})
            if out is not None:
                output = out.double().numpy()
        return {"rank": rank, "setup": setup, "runs": runs, "output": output, "security": provider_security(crypten)}
    finally:
        for unhook in unhooks:
            unhook()


@dataclass
class RunStats:
    """Merged numbers of one forward: phase -> metric -> value (per party and wire)."""

    phases: dict[str, dict[str, float]] = field(default_factory=dict)
    weight_open_bytes: float = 0.0  # part of phases' bytes: Beaver openings of the shared weights (W - b)


@dataclass
class MpcResult:
    """Output revealed to the device, and per-run merged statistics."""

    output: torch.Tensor
    output_name: str
    runs: list[RunStats]
    setup: dict[str, float]
    approx: str
    provider: str
    embedding: str
    security: str | None = None  # protocols.vocabulary.SECURITY, as the parties read crypten.cfg.mpc.provider


def merge_parties(p0: dict[str, float], p1: dict[str, float]) -> dict[str, float]:
    """Per-party counters -> the reported metrics of one phase."""
    return {
        "latency": max(p0["seconds"], p1["seconds"]),
        "rounds": max(p0["rounds"], p1["rounds"]),
        "bytes": (p0["bytes"] + p1["bytes"]) / 2.0,
        "bytes_party0": p0["bytes"],
        "bytes_party1": p1["bytes"],
        "preprocessing_rounds": p0["preprocessing_rounds"] + p1["preprocessing_rounds"],
        "preprocessing_bytes": p0["preprocessing_bytes"] + p1["preprocessing_bytes"],
    }


def _zero() -> dict[str, float]:
    return {k: 0.0 for k in STAT_KEYS}


def run_mpc_forward(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                    approx: str | dict | Approximation = "puma", embedding: str = "mpc", provider: str = "TFP",
                    n_runs: int = 1, timeout_s: float = 1800.0, weights: ModelWeights | None = None,
                    seed: int | None = None, next_token: bool = False, place: Placement | None = None,
                    launch: Launch | None = None) -> MpcResult:
    """Run the two-party forward of `model` on `input_ids` and return the device's output and the counters
    (`next_token`: the output is each row's greedy next token id, computed in MPC; see TransformerForward;
    `place`/`launch`: parties on other hosts, baselines.mpc.hosts and launcher.run_parties)."""
    if embedding not in EMBEDDING_MODES:
        raise ValueError(f"unknown embedding mode {embedding!r}; choices: {list(EMBEDDING_MODES)}")
    if n_runs < 1:
        raise ValueError(f"n_runs must be >= 1, got {n_runs}")
    approx = get_approximation(approx)
    if approx.plaintext_only:
        raise ValueError(f"approx {approx.name!r} is plaintext-only; MPC needs one of puma, crypten, nimbus, mpcformer")
    weights = weights or extract_weights(model)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    job = Job(weights, input_ids, attention_mask, approx, embedding, provider, n_runs, next_token)
    r0, r1 = run_parties(party, job, provider=provider, timeout_s=timeout_s, seed=seed, place=place, launch=launch)
    runs = []
    for run0, run1 in zip(r0["runs"], r1["runs"]):
        names = list(dict.fromkeys([*run0["phases"], *run1["phases"]]))
        phases = {n: merge_parties(run0["phases"].get(n, _zero()), run1["phases"].get(n, _zero())) for n in names}
        phases["total"] = merge_parties(run0["total"], run1["total"])
        runs.append(RunStats(phases, (run0["weight_open_bytes"] + run1["weight_open_bytes"]) / 2.0))
    output_name = "next_token" if next_token else weights.output_name
    if r0["security"] != r1["security"]:
        raise RuntimeError(f"the parties read different CrypTen providers: {r0['security']!r} vs {r1['security']!r}")
    return MpcResult(torch.from_numpy(np.asarray(r1["output"])), output_name, runs,
                     merge_parties(r0["setup"], r1["setup"]), approx.name, provider, embedding, r0["security"])
