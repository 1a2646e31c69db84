"""The CrypTen engine of protocol=mpc: two parties on this host, or the float64 simulation (mode=simulate).

A baselines.mpc.engine.MpcEngine; its rows are described in baselines/mpc/protocol.py; the approximation is resolved
once, when the engine is built.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch

from baselines.mpc.approximations import Approximation, get_approximation
from baselines.mpc.forward import EMBEDDING_MODES, extract_weights, simulate
from baselines.mpc.hosts import placement
from baselines.mpc.launcher import PROVIDERS, configured_security
from baselines.mpc.session import MpcResult, run_mpc_forward
from protocols.accuracy import accuracy_rows, token_agreement_row
from protocols.contract import AccuracyBound, ModelSpec, Row, RunRequest
from transport.link import NetworkProfile

if TYPE_CHECKING:
    from baselines.mpc.protocol import MpcConfig

MODES = ("mpc", "simulate")


class CryptenEngine:
    """CrypTen 2PC: the server (rank 0) shares the weights, the device (rank 1) its tokens."""

    name: ClassVar[str] = "crypten"

    def __init__(self, cfg: MpcConfig) -> None:
        self.cfg = cfg
        if cfg.mpc_protocol is not None:
            raise ValueError(f"protocol.mpc_protocol={cfg.mpc_protocol!r} selects an SPU protocol; "
                             "set protocol.engine=spu, or leave mpc_protocol unset for CrypTen")
        if cfg.mode not in MODES:
            raise ValueError(f"unknown mode {cfg.mode!r}; choices: {list(MODES)}")
        self.approximation: Approximation = get_approximation(cfg.approx)  # the one place it is resolved
        if self.approximation.plaintext_only and cfg.mode == "mpc":
            raise ValueError(f"approx {self.approximation.name!r} is plaintext-only; use crypten, puma, nimbus or "
                             "mpcformer, or mode=simulate")
        if cfg.embedding not in EMBEDDING_MODES:
            raise ValueError(f"unknown embedding {cfg.embedding!r}; choices: {list(EMBEDDING_MODES)}")
        cfg.provider = str(cfg.provider).upper()
        if cfg.provider not in PROVIDERS:
            raise ValueError(f"unknown provider {cfg.provider!r}; choices: {list(PROVIDERS)}")
        if cfg.timeout_s <= 0:
            raise ValueError(f"protocol.timeout_s={cfg.timeout_s} must be > 0")

    def approx_name(self) -> str:
        return self.approximation.name

    def configured_security(self) -> str | None:
        """What crypten.cfg.mpc.provider would be; None for mode=simulate (no parties, no protocol)."""
        return None if self.cfg.mode == "simulate" else configured_security(self.cfg.provider)

    def accuracy_bound(self) -> AccuracyBound | None:
        """The approximation's own bound, beside it (baselines/mpc/approximations.py BOUNDS)."""
        return self.approximation.bound

    def run(self, model: ModelSpec, network: NetworkProfile, request: RunRequest) -> tuple[list[Row], str | None]:
        if request.task not in ("forward", "generate"):
            raise ValueError(f"task {request.task!r} is not supported by protocol=mpc; "
                             "supported: 'forward', 'generate'")
        generate = request.task == "generate"
        if generate and request.max_new_tokens != 1:
            raise ValueError(f"protocol=mpc generates one token (the prompt's forward, then an argmax in MPC; no "
                             f"secret-shared KV cache, so each further token would redo the prompt); got "
                             f"run.max_new_tokens={request.max_new_tokens}: use run.max_new_tokens=1")
        if generate and self.cfg.mode == "simulate":
            raise ValueError("protocol.mode=simulate gives forward accuracy only; task generate needs mode=mpc")
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
        approx, embedding = self.approximation, self.cfg.embedding
        if self.cfg.mode == "simulate":
            weights = extract_weights(net)
            sim = simulate(net, ids, mask, approx, embedding=embedding, weights=weights)
            return accuracy_rows(sim, getattr(out, weights.output_name), mask, 0, "simulated"), None
        place = None if request.parties is None else placement(request.parties, 2, self.cfg.provider)
        result = run_mpc_forward(net, ids, mask, approx=approx, embedding=embedding,
                                 provider=self.cfg.provider, n_runs=request.warmup + request.repeats,
                                 timeout_s=self.cfg.timeout_s, seed=request.seed, next_token=generate, place=place)
        if generate:
            if not hasattr(out, "logits"):
                raise ValueError(f"task generate needs a causal LM head; model {model.name!r} gives no logits")
            last = mask.sum(-1) - 1
            greedy = out.logits[torch.arange(ids.shape[0]), last].argmax(-1, keepdim=True)
            rows = self.rows(result, None, mask, network, request)
            token = result.output.round().long().view(ids.shape[0], 1)
            # the approximations' own effect, without fixed point: random-weight top logits lie close together
            sim = simulate(net, ids, mask, approx, embedding=embedding, next_token=True)
            rows += [token_agreement_row(token, greedy, 0, "engine"),
                     token_agreement_row(sim.long().view(ids.shape[0], 1), greedy, 0, "simulated")]
            return rows, result.security
        reference = getattr(out, result.output_name)
        return self.rows(result, reference, mask, network, request), result.security

    def rows(self, result: MpcResult, reference: torch.Tensor | None, mask: torch.Tensor, network: NetworkProfile,
             request: RunRequest) -> list[Row]:
        """Rows of the measured runs (warm-up runs dropped) and of the accuracy (`reference` None: none).
        A one-token generation reports its end-to-end numbers at phase `generate` instead of `total`."""
        rows: list[Row] = []
        end = "generate" if request.task == "generate" else "total"
        for rep, run in enumerate(result.runs[request.warmup:]):
            for phase, st in run.phases.items():
                modelled = st["latency"] + network.time(st["rounds"], st["bytes"] / 2.0)
                name = end if phase == "total" else phase
                rows += [Row("compute" if phase == "total" else phase, "latency", st["latency"], "engine", rep),
                         Row(name, "latency", modelled, "modelled", rep),
                         Row(name, "rounds", st["rounds"], "engine", rep),
                         Row(name, "bytes", st["bytes"], "engine", rep)]
                if phase == "total":
                    rows.append(Row("weight_open", "bytes", run.weight_open_bytes, "engine", rep))
                if self.cfg.provider == "TTP":
                    rows += [Row(name, m, st[m], "engine", rep)
                             for m in ("preprocessing_rounds", "preprocessing_bytes")]
        if reference is not None:
            rows += accuracy_rows(result.output, reference, mask, 0, "engine")
        return rows
