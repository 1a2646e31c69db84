"""`protocol=mpc`: the two-party CrypTen baseline as a `protocols.contract.Protocol` returning tidy rows.

Rows (phase = operator class of `protocols.contract.MPC_PHASES`, or `total`), all with `approx=<name>`:
- `latency` (s): measured compute time of the slower party, both parties on this host (loopback link).
- `rounds` (count): communication rounds (the larger per-party count; each collective is one round).
- `bytes` (B): bytes on the wire, half the sum of CrypTen's per-party counts (a transfer counts at both ends).
- `bytes_party0`, `bytes_party1` (B): CrypTen's own per-party count (sent + received).
- `latency_modelled` (s): latency + network.time(rounds, bytes / 2): the link is full duplex and the
  opens of 2PC are symmetric, so each direction carries half of the wire bytes.
- `preprocessing_rounds`, `preprocessing_bytes` (count, B): TTP provider only, rank 0's traffic with the
  third party (kept out of the online numbers above).
- `max_abs_error` (abs), `top1_agreement` (ratio), phase `total`, repeat 0: MPC output (revealed to the
  device) against the plaintext float32 model on unmasked positions; top-1 is the argmax over the last
  dim (vocabulary for logits, features for hidden states).
- `embedding_on_device` (bool, phase `total`): 1 when the device embedded its tokens itself
  (`embedding: device`; the approx label then ends in `+embedding=device`), 0 for one-hot x table in MPC.
Weight and input sharing cost no traffic in CrypTen (pseudo-random zero shares from seeds set at init).
Share randomness is derived from `request.seed` so that runs reproduce exactly: a benchmarking choice,
not a secure deployment (real parties draw their seeds from os.urandom, as CrypTen does by default).
"""
from __future__ import annotations

import logging
from typing import Any

import torch

from protocols.contract import ModelSpec, NetworkProfile, Protocol, Row, RunRequest
from baselines.mpc.approximations import get_approximation
from baselines.mpc.forward import EMBEDDING_MODES
from baselines.mpc.launcher import PROVIDERS
from baselines.mpc.session import MpcResult, run_mpc_forward

log = logging.getLogger(__name__)
UNITS = {"latency": "s", "latency_modelled": "s", "rounds": "count", "bytes": "B", "bytes_party0": "B",
         "bytes_party1": "B", "preprocessing_rounds": "count", "preprocessing_bytes": "B",
         "max_abs_error": "abs", "top1_agreement": "ratio", "embedding_on_device": "bool"}
TRAFFIC_METRICS = ("latency", "rounds", "bytes", "bytes_party0", "bytes_party1")


def accuracy(output: torch.Tensor, reference: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, float]:
    """max |MPC - plaintext| and top-1 agreement over the unmasked positions."""
    keep = attention_mask.bool()
    out, ref = output.double()[keep], reference.double()[keep]
    return {"max_abs_error": (out - ref).abs().max().item(),
            "top1_agreement": (out.argmax(-1) == ref.argmax(-1)).double().mean().item()}


class MpcProtocol(Protocol):
    """CrypTen 2PC: the server (rank 0) shares the weights, the device (rank 1) its tokens."""

    name = "mpc"

    def __init__(self, cfg: dict) -> None:
        super().__init__(cfg)
        self.approx = get_approximation(self.cfg.get("approx", "puma"))
        if self.approx.plaintext_only:
            raise ValueError(f"approx {self.approx.name!r} is plaintext-only; use crypten, puma, nimbus or mpcformer")
        self.embedding = self.cfg.get("embedding", "mpc")
        if self.embedding not in EMBEDDING_MODES:
            raise ValueError(f"unknown embedding {self.embedding!r}; choices: {list(EMBEDDING_MODES)}")
        self.provider = str(self.cfg.get("provider", "TFP")).upper()
        if self.provider not in PROVIDERS:
            raise ValueError(f"unknown provider {self.cfg.get('provider')!r}; choices: {list(PROVIDERS)}")
        self.timeout_s = float(self.cfg.get("timeout_s", 1800))
        self.label = self.approx.name + ("+embedding=device" if self.embedding == "device" else "")

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
            out = net(input_ids=ids, attention_mask=mask)
        result = run_mpc_forward(net, ids, mask, approx=self.approx, embedding=self.embedding,
                                 provider=self.provider, n_runs=request.warmup + request.repeats,
                                 timeout_s=self.timeout_s, seed=request.seed)
        reference = getattr(out, result.output_name)
        return self.rows(result, reference, mask, network, request)

    def rows(self, result: MpcResult, reference: torch.Tensor, mask: torch.Tensor, network: NetworkProfile,
             request: RunRequest) -> list[Row]:
        """Tidy rows of the measured runs (warm-up runs dropped) and of the accuracy."""
        def row(phase: str, metric: str, value: float, repeat: int) -> Row:
            return Row(phase=phase, metric=metric, value=float(value), unit=UNITS[metric], repeat=repeat,
                       approx=self.label, batch_size=request.batch_size, seq_len=request.seq_len)

        rows: list[Row] = []
        for rep, run in enumerate(result.runs[request.warmup:]):
            for phase, st in run.phases.items():
                rows += [row(phase, m, st[m], rep) for m in TRAFFIC_METRICS]
                rows.append(row(phase, "latency_modelled",
                                st["latency"] + network.time(st["rounds"], st["bytes"] / 2.0), rep))
                if self.provider == "TTP":
                    rows += [row(phase, m, st[m], rep) for m in ("preprocessing_rounds", "preprocessing_bytes")]
        acc = accuracy(result.output, reference, mask)
        rows += [row("total", m, v, 0) for m, v in acc.items()]
        rows.append(row("total", "embedding_on_device", float(self.embedding == "device"), 0))
        return rows
