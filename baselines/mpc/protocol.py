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
- `bytes` at phase `weight_open` (engine): the part of the bytes above that re-opens the secret-shared
  weights (W - b of each Beaver product with a weight; no rounds of its own), paid again every forward.
- `preprocessing_rounds`, `preprocessing_bytes` (engine): TTP provider only, rank 0's traffic with the
  third party (kept out of the online numbers above).
- accuracy (phase `output`, repeat 0): protocols.accuracy on the output revealed to the device, against the
  plaintext model (`model.reference()`: a distilled student is judged against its teacher).
- `task: generate` (run.max_new_tokens=1): one generated token = the prompt's forward, the LM head on the last
  position and an argmax in MPC; the device learns the token id only. End-to-end rows at phase `generate`;
  accuracy is the token's agreement with plaintext greedy decoding (engine), and the float64 simulation's
  (simulated: what the approximations alone do). No secret-shared KV cache: a second token
  would redo the whole prompt, so more than one is refused.
`engine: spu` runs the forward on SecretFlow SPU instead (baselines/spu: `mpc_protocol` aby3 | cheetah | semi2k,
approx puma | nimbus; its own rows and security labels); everything else here is the CrypTen engine.
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
from typing import Any, ClassVar, Optional

import torch

from baselines.mpc.approximations import Approximation, get_approximation
from baselines.mpc.forward import EMBEDDING_MODES, extract_weights, simulate
from baselines.mpc.launcher import PROVIDERS, configured_security
from baselines.mpc.session import MpcResult, run_mpc_forward
from baselines.spu import protocol as spu_protocol
from baselines.spu.engine import spu_bound
from protocols.accuracy import accuracy_rows, token_agreement_row
from protocols.contract import AccuracyBound, ModelSpec, Protocol, ProtocolConfig, Row, RunRequest
from transport.link import NetworkProfile

log = logging.getLogger(__name__)
MODES = ("mpc", "simulate")
ENGINES = ("crypten", "spu")


@dataclass
class MpcConfig(ProtocolConfig):
    """`protocol=mpc` (configs/protocol/mpc.yaml)."""

    approx: Any = "puma"  # crypten | puma | nimbus | mpcformer, or a dict of per-operator choices
    embedding: str = "mpc"  # mpc (one-hot x table in MPC) | device (the device embeds locally)
    provider: str = "TFP"  # TFP (trusted first party) | TTP (third party; preprocessing reported apart)
    timeout_s: float = 1800.0
    mode: str = "mpc"  # mpc (two CrypTen parties) | simulate (float64 plaintext, same approximations, accuracy only)
    engine: str = "crypten"  # crypten | spu (SecretFlow SPU in .venv-spu, baselines/spu)
    mpc_protocol: Optional[str] = None  # SPU only: aby3 (default) | cheetah | semi2k

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"unknown protocol.engine {self.engine!r}; choices: {list(ENGINES)}")
        if self.engine == "spu":
            spu_protocol.validate(self)
            return
        if self.mpc_protocol is not None:
            raise ValueError(f"protocol.mpc_protocol={self.mpc_protocol!r} selects an SPU protocol; "
                             "set protocol.engine=spu, or leave mpc_protocol unset for CrypTen")
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
        self.engine_security: str | None = None  # set by run() from what the engine's parties read

    def approx_name(self) -> str:
        return self.approx.name

    def security_label(self) -> str | None:
        """Read from the engine: what the parties of the last run read (crypten.cfg.mpc.provider; SPU's RuntimeConfig),
        before a run what they would read; None for mode=simulate (no parties, no protocol)."""
        if self.engine_security is not None:
            return self.engine_security
        if self.cfg.engine == "spu":
            return spu_protocol.configured_security(self.cfg)
        return None if self.cfg.mode == "simulate" else configured_security(self.provider)

    def accuracy_bound(self) -> AccuracyBound | None:
        """The approximation's own bound, beside it (baselines/mpc/approximations.py BOUNDS, baselines/spu)."""
        if self.cfg.engine == "spu":
            return spu_bound(self.cfg.approx)
        return self.approx.bound

    def engine_name(self) -> str:
        return self.cfg.engine

    def run(self, model: ModelSpec, network: NetworkProfile, request: RunRequest) -> list[Row]:
        if self.cfg.engine == "spu":
            rows, self.engine_security = spu_protocol.run(self.cfg, model, network, request)
            return rows
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
        if self.cfg.mode == "simulate":
            weights = extract_weights(net)
            sim = simulate(net, ids, mask, self.approx, embedding=self.embedding, weights=weights)
            return accuracy_rows(sim, getattr(out, weights.output_name), mask, 0, "simulated")
        result = run_mpc_forward(net, ids, mask, approx=self.approx, embedding=self.embedding,
                                 provider=self.provider, n_runs=request.warmup + request.repeats,
                                 timeout_s=self.cfg.timeout_s, seed=request.seed, next_token=generate)
        self.engine_security = result.security
        if generate:
            if not hasattr(out, "logits"):
                raise ValueError(f"task generate needs a causal LM head; model {model.name!r} gives no logits")
            last = mask.sum(-1) - 1
            greedy = out.logits[torch.arange(ids.shape[0]), last].argmax(-1, keepdim=True)
            rows = self.rows(result, None, mask, network, request)
            token = result.output.round().long().view(ids.shape[0], 1)
            # the approximations' own effect, without fixed point: random-weight top logits lie close together
            sim = simulate(net, ids, mask, self.approx, embedding=self.embedding, next_token=True)
            return rows + [token_agreement_row(token, greedy, 0, "engine"),
                           token_agreement_row(sim.long().view(ids.shape[0], 1), greedy, 0, "simulated")]
        reference = getattr(out, result.output_name)
        return self.rows(result, reference, mask, network, request)

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
                if self.provider == "TTP":
                    rows += [Row(name, m, st[m], "engine", rep)
                             for m in ("preprocessing_rounds", "preprocessing_bytes")]
        if reference is not None:
            rows += accuracy_rows(result.output, reference, mask, 0, "engine")
        return rows
