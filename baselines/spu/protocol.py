"""`protocol=mpc protocol.engine=spu`: config checks, security labels and rows of the SPU engine.

`SpuEngine` is protocol=mpc's engine object for SPU (baselines.mpc.protocol.ENGINES); runs in the main environment.
Rows (vocabulary of protocols/vocabulary.py), per measured run (warm-up runs dropped):
- `latency` at `compute`, source `engine`: wall time of one forward with every party running on this host
  (threads over SPU's in-memory links; they share its cores); with `parties.hosts` (docs/multi-host.md) each party
  is its own process over SPU's brpc link, and it is the slowest party's wall time, link included;
- `bytes` at `total` (engine): the bytes all parties send, each party's own SPU link counter;
- `rounds` at `total` (engine): send actions per party (all parties' sends / parties): one message per party
  per round in ABY3's ring, so it is the round count there, and an upper bound on rounds for Cheetah;
- `latency` at `total`, source `modelled`: compute + network.time(rounds, bytes / parties) (each party's link
  carries its own sends concurrently, as CrypTen's bytes / 2);
- accuracy (phase `output`, source `engine`) by protocols.accuracy on the revealed output.
No `preprocessing_*` rows: ABY3 draws its correlated randomness from pairwise PRG seeds and Cheetah runs its
OT/HE preprocessing inside the forward, so both are in the online numbers above.
SPU's own per-operator profile (HAL and MPC kernels: calls, seconds, bytes, sends) is written beside the run's
rows as `spu_profile.json`: its operators are SPU kernels, not the operator classes of MPC_PHASES.
"""
from __future__ import annotations

import json
from typing import Any, ClassVar

import torch

from baselines.spu.engine import (
    APPROXIMATIONS,
    EMBEDDINGS,
    PROTOCOLS,
    SpuResult,
    placement_request,
    run_spu_forward,
    runtime_settings,
    spu_bound,
)
from protocols.accuracy import accuracy_rows
from protocols.contract import AccuracyBound, ModelSpec, Row, RunRequest
from transport.link import NetworkProfile

# (RuntimeConfig protocol, beaver_type or None: any) -> protocols.vocabulary.SECURITY. SEMI2K's dealer is its beaver
# type: TrustedFirstParty (0.9.5's default) is rank 0, the server; TrustedThirdParty a beaver service of its own.
SECURITY = {("ABY3", None): "3pc-honest-majority", ("CHEETAH", None): "2pc",
            ("SEMI2K", "TrustedFirstParty"): "2pc-dealer-is-server",
            ("SEMI2K", "TrustedThirdParty"): "2pc-dealer-third-party"}


def security_of(runtime: dict[str, str]) -> str:
    """The security label of the runtime settings SPU ran with (baselines.spu.driver.runtime_settings)."""
    protocol, beaver = runtime.get("protocol"), runtime.get("beaver_type")
    label = SECURITY.get((protocol, None)) or SECURITY.get((protocol, beaver))
    if label is None:
        raise ValueError(f"SPU runtime protocol={protocol!r} beaver_type={beaver!r} has no security label; "
                         f"known: {sorted(SECURITY)} (add it with its definition to protocols/vocabulary.py)")
    return label
DEFAULT_PROTOCOL = "aby3"


def validate(cfg: Any) -> None:
    """Reject what the SPU engine cannot run, naming the value and the choices (cfg: MpcConfig, engine=spu)."""
    cfg.mpc_protocol = str(cfg.mpc_protocol or DEFAULT_PROTOCOL).lower()
    if cfg.mpc_protocol not in PROTOCOLS:
        raise ValueError(f"protocol.mpc_protocol={cfg.mpc_protocol!r}; choices with engine=spu: {sorted(PROTOCOLS)}")
    if not isinstance(cfg.approx, str) or cfg.approx not in APPROXIMATIONS:
        raise ValueError(f"protocol.approx={cfg.approx!r} has no SPU implementation; with engine=spu choose one of "
                         f"{list(APPROXIMATIONS)} (crypten, mpcformer and per-operator dicts are CrypTen-only)")
    if cfg.mode != "mpc":
        raise ValueError(f"protocol.mode={cfg.mode!r} is CrypTen's float simulation; engine=spu runs mode=mpc only")
    if cfg.embedding not in EMBEDDINGS:
        raise ValueError(f"protocol.embedding={cfg.embedding!r}; choices with engine=spu: {list(EMBEDDINGS)}")
    if str(cfg.provider).upper() != "TFP":
        raise ValueError(f"protocol.provider={cfg.provider!r} is a CrypTen provider; engine=spu takes its "
                         "correlated randomness from protocol.mpc_protocol (semi2k: the server deals, "
                         "aby3/cheetah: none)")


def configured_security(cfg: Any) -> str:
    """The label of the settings the driver would run cfg.mpc_protocol with (read in .venv-spu, nothing run)."""
    return security_of(runtime_settings(cfg.mpc_protocol, cfg.approx))


def run(cfg: Any, model: ModelSpec, network: NetworkProfile, request: RunRequest) -> tuple[list[Row], str]:
    """One SPU forward per warm-up + repeat of `model` on random token ids: the rows (module docstring) and the
    security label read from the RuntimeConfig the driver ran with."""
    if request.task != "forward":
        raise ValueError(f"task {request.task!r} is not supported by protocol=mpc engine=spu; supported: 'forward'")
    if request.parties is not None:  # the placement's errors before the model is built
        placement_request(request.parties, cfg.mpc_protocol)
    net = model.build()
    inputs = model.make_inputs(request.batch_size, request.seq_len, request.seed)
    if "input_ids" not in inputs:
        raise ValueError(f"model {model.name!r} gives inputs {sorted(inputs)}; protocol=mpc needs input_ids")
    ids = inputs["input_ids"]
    mask = torch.ones_like(ids)
    with torch.no_grad():
        out = net(input_ids=ids, attention_mask=mask)
    result = run_spu_forward(net, model.model_type, ids, protocol=cfg.mpc_protocol, approx=cfg.approx,
                             n_runs=request.warmup + request.repeats, workdir=request.workdir,
                             timeout_s=cfg.timeout_s, embedding=cfg.embedding, parties=request.parties)
    write_profile(result, request)
    return rows(result, getattr(out, result.output_name), mask, network, request), security_of(result.runtime)


class SpuEngine:
    """SecretFlow SPU (.venv-spu): ABY3 (PUMA's 3PC), Cheetah or SEMI2K, approx puma | nimbus (an MpcEngine)."""

    name: ClassVar[str] = "spu"

    def __init__(self, cfg: Any) -> None:
        validate(cfg)
        self.cfg = cfg

    def approx_name(self) -> str:
        return str(self.cfg.approx)

    def configured_security(self) -> str | None:
        return configured_security(self.cfg)

    def accuracy_bound(self) -> AccuracyBound | None:
        return spu_bound(self.cfg.approx)

    def run(self, model: ModelSpec, network: NetworkProfile, request: RunRequest) -> tuple[list[Row], str | None]:
        return run(self.cfg, model, network, request)


def rows(result: SpuResult, reference: torch.Tensor, mask: torch.Tensor, network: NetworkProfile,
         request: RunRequest) -> list[Row]:
    """Rows of the measured runs (warm-up runs dropped) and of the accuracy."""
    out: list[Row] = []
    for rep, run in enumerate(result.runs[request.warmup:]):
        rounds, n_bytes = run.rounds_per_party(), float(run.bytes)
        out += [Row("compute", "latency", run.seconds, "engine", rep),
                Row("total", "latency", run.seconds + network.time(rounds, n_bytes / result.parties), "modelled", rep),
                Row("total", "rounds", rounds, "engine", rep),
                Row("total", "bytes", n_bytes, "engine", rep)]
    return out + accuracy_rows(result.output, reference, mask, 0, "engine")


def write_profile(result: SpuResult, request: RunRequest) -> None:
    """SPU's per-operator profile and versions beside the run's rows (the run folder outlives its workdir)."""
    run_dir = request.workdir.parent
    run_dir.mkdir(parents=True, exist_ok=True)
    profile = {"versions": result.versions, "runtime": result.runtime, "parties": result.parties,
               "link": result.link, "addresses": result.addresses,
               "compile_s": result.compile_s,
               "runs": [{"seconds": r.seconds, "links": r.links, "ops": r.ops} for r in result.runs]}
    (run_dir / "spu_profile.json").write_text(json.dumps(profile, indent=1))
