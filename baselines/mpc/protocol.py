"""`protocol=mpc`: the two-party CrypTen baseline as a `protocols.contract.Protocol` returning rows.

Rows, in the vocabulary of protocols/vocabulary.py (phase = operator class of `MPC_PHASES`, or a request phase):
- `latency`, source `engine`: compute of the slower party, both parties on this host (loopback), per
  operator class; phase `compute` holds the whole forward's.
- `latency`, source `modelled`: engine latency + network.time(rounds, bytes / 2); at phase `total` it is the
  request end to end. The link is full duplex and the opens of 2PC are symmetric, so each direction
  carries half of the bytes on the critical path.
- `rounds` (engine): sequential communication rounds (the larger per-party count of CrypTen collectives).
- `bytes` (engine): total bytes both parties send, half the sum of CrypTen's per-party counts (CrypTen
  counts a transfer at both ends: sent + received).
- `preprocessing_rounds`, `preprocessing_bytes` (engine): TTP provider only, rank 0's traffic with the
  third party (kept out of the online numbers above).
- accuracy (phase `output`, repeat 0): protocols.accuracy on the output revealed to the device, against the
  plaintext model (`model.reference()`: a distilled student is judged against its teacher).
`mode: simulate` runs no parties: the same forward with the same approximations in float64 plaintext
(baselines.mpc.forward.simulate), giving only the accuracy rows, source `simulated` (fast accuracy studies
on many inputs; `mode: mpc` on a few checks that the engine agrees with the simulation).
The approximation is the rows' `approx` column; embedding placement and provider are runs-table columns.
Weight and input sharing cost no traffic in CrypTen (pseudo-random zero shares from seeds set at init).
Share randomness is derived from `request.seed` so that runs reproduce exactly: a benchmarking choice,
not a secure deployment (real parties draw their seeds from os.urandom, as CrypTen does by default).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from baselines.mpc.approximations import Approximation, get_approximation
from baselines.mpc.forward import EMBEDDING_MODES, extract_weights, simulate
from baselines.mpc.launcher import PROVIDERS
from baselines.mpc.session import MpcResult, run_mpc_forward
from protocols.accuracy import accuracy_rows
from protocols.contract import ModelSpec, Protocol, ProtocolConfig, Row, RunRequest
from transport.link import NetworkProfile

log = logging.getLogger(__name__)
MODES = ("mpc", "simulate")


@dataclass
class MpcConfig(ProtocolConfig):
    """`protocol=mpc` (configs/protocol/mpc.yaml)."""

    approx: Any = "puma"  # crypten | puma | nimbus | mpcformer, or a dict of per-operator choices
    embedding: str = "mpc"  # mpc (one-hot x table in MPC) | device (the device embeds locally)
    provider: str = "TFP"  # TFP (trusted first party) | TTP (third party; preprocessing reported apart)
    timeout_s: float = 1800.0
    mode: str = "mpc"  # mpc (two CrypTen parties) | simulate (float64 plaintext, same approximations, accuracy only)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; choices: {list(MODES)}")
        approx = get_approximation(self.approx)
        if approx.plaintext_only and self.mode == "mpc":
            raise ValueError(f"approx {approx.name!r} is plaintext-only; use crypten, puma, nimbus or mpcformer, "
                             "or mode=simulate")
        if self.embedding not in EMBEDDING_MODES:
            raise ValueError(f"unknown embedding {self.embedding!r}; choices: {list(EMBEDDING_MODES)}")
        self.provider = str(self.provider).upper()
        if self.provider not in PROVIDERS:
            raise ValueError(f"unknown provider {self.provider!r}; choices: {list(PROVIDERS)}")
        if self.timeout_s <= 0:
            raise ValueError(f"protocol.timeout_s={self.timeout_s} must be > 0")

    @property
    def approximation(self) -> Approximation:
        return get_approximation(self.approx)


class MpcProtocol(Protocol):
    """CrypTen 2PC: the server (rank 0) shares the weights, the device (rank 1) its tokens."""

    config_class: ClassVar[type[ProtocolConfig]] = MpcConfig
    parallel_safe: ClassVar[bool] = False  # timings of two party processes interfere with other runs

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.approx = self.cfg.approximation
        self.embedding, self.provider = self.cfg.embedding, self.cfg.provider

    def approx_name(self) -> str:
        return self.approx.name

    def security_label(self) -> str:
        """CrypTen's TFP and TTP providers are both trusted dealers (TFP: the server is the dealer)."""
        return "2pc-dealer"

    def run(self, model: ModelSpec, network: NetworkProfile, request: RunRequest) -> list[Row]:
        if request.task != "forward":
            raise ValueError(f"task {request.task!r} is not supported by protocol=mpc; supported: 'forward'")
        net = model.build()
        inputs = model.make_inputs(request.batch_size, request.seq_len, request.seed)
        if "input_ids" not in inputs:
            raise ValueError(f"model {model.name!r} gives inputs {sorted(inputs)}; protocol=mpc needs input_ids")
        ids = inputs["input_ids"]
        tt = inputs.get("token_type_ids")
        if tt is not None and bool(tt.any()):
            raise ValueError("protocol=mpc embeds segment 0 only; got non-zero token_type_ids")
        mask = inputs.get("attention_mask")
        mask = torch.ones_like(ids) if mask is None else mask
        with torch.no_grad():
            out = model.reference(net)(input_ids=ids, attention_mask=mask)
        if self.cfg.mode == "simulate":
            weights = extract_weights(net)
            sim = simulate(net, ids, mask, self.approx, embedding=self.embedding, weights=weights)
            return accuracy_rows(sim, getattr(out, weights.output_name), mask, 0, "simulated")
        result = run_mpc_forward(net, ids, mask, approx=self.approx, embedding=self.embedding,
                                 provider=self.provider, n_runs=request.warmup + request.repeats,
                                 timeout_s=self.cfg.timeout_s, seed=request.seed)
        reference = getattr(out, result.output_name)
        return self.rows(result, reference, mask, network, request)

    def rows(self, result: MpcResult, reference: torch.Tensor, mask: torch.Tensor, network: NetworkProfile,
             request: RunRequest) -> list[Row]:
        """Rows of the measured runs (warm-up runs dropped) and of the accuracy."""
        rows: list[Row] = []
        for rep, run in enumerate(result.runs[request.warmup:]):
            for phase, st in run.phases.items():
                modelled = st["latency"] + network.time(st["rounds"], st["bytes"] / 2.0)
                rows += [Row("compute" if phase == "total" else phase, "latency", st["latency"], "engine", rep),
                         Row(phase, "latency", modelled, "modelled", rep),
                         Row(phase, "rounds", st["rounds"], "engine", rep),
                         Row(phase, "bytes", st["bytes"], "engine", rep)]
                if self.provider == "TTP":
                    rows += [Row(phase, m, st[m], "engine", rep)
                             for m in ("preprocessing_rounds", "preprocessing_bytes")]
        rows += accuracy_rows(result.output, reference, mask, 0, "engine")
        return rows
