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
`engine` picks the engine object (ENGINES): CrypTen (baselines/mpc/crypten_engine.py: everything described here) or
SecretFlow SPU (baselines/spu: `mpc_protocol` aby3 | cheetah | semi2k, approx puma | nimbus; its own rows and labels).
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
from functools import cached_property
from typing import Any, ClassVar, Optional

from baselines.mpc.crypten_engine import CryptenEngine
from baselines.mpc.engine import MpcEngine
from baselines.spu.protocol import SpuEngine
from protocols.contract import AccuracyBound, ModelSpec, Protocol, ProtocolConfig, Row, RunRequest
from transport.link import NetworkProfile

log = logging.getLogger(__name__)
ENGINES: dict[str, type[MpcEngine]] = {engine.name: engine for engine in (CryptenEngine, SpuEngine)}


@dataclass
class MpcConfig(ProtocolConfig):
    """`protocol=mpc` (configs/protocol/mpc.yaml)."""

    approx: Any = "puma"  # crypten | puma | nimbus | mpcformer, or a dict of per-operator choices
    embedding: str = "mpc"  # mpc (one-hot x table in MPC) | device (the device embeds locally)
    provider: str = "TFP"  # TFP (trusted first party) | TTP (third party; preprocessing reported apart)
    timeout_s: float = 1800  # an int as the yaml had it: committed run ids hash this value as 1800
    mode: str = "mpc"  # mpc (two CrypTen parties) | simulate (float64 plaintext, same approximations, accuracy only)
    engine: str = "crypten"  # crypten | spu (SecretFlow SPU in .venv-spu, baselines/spu)
    mpc_protocol: Optional[str] = None  # SPU only: aby3 (default) | cheetah | semi2k

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"unknown protocol.engine {self.engine!r}; choices: {list(ENGINES)}")
        _ = self.mpc_engine  # the engine checks its own settings, once

    @cached_property
    def mpc_engine(self) -> MpcEngine:
        """The engine object `engine` names, built (and its settings checked) once per config."""
        return ENGINES[self.engine](self)


class MpcProtocol(Protocol[MpcConfig]):
    """Secret-shared inference on the engine the config names (ENGINES); the engine makes the rows."""

    config_class: ClassVar[type[ProtocolConfig]] = MpcConfig
    parallel_safe: ClassVar[bool] = False  # timings of two party processes interfere with other runs

    def __init__(self, cfg: MpcConfig | dict[str, Any]) -> None:
        super().__init__(cfg)
        self.engine = self.cfg.mpc_engine
        self.engine_security: str | None = None  # set by run() from what the engine's parties read

    def approx_name(self) -> str:
        return self.engine.approx_name()

    def security_label(self) -> str | None:
        """Read from the engine: what the parties of the last run read (crypten.cfg.mpc.provider; SPU's RuntimeConfig),
        before a run what they would read; None for mode=simulate (no parties, no protocol)."""
        if self.engine_security is not None:
            return self.engine_security
        return self.engine.configured_security()

    def accuracy_bound(self) -> AccuracyBound | None:
        """The approximation's own bound, beside it (baselines/mpc/approximations.py BOUNDS, baselines/spu)."""
        return self.engine.accuracy_bound()

    def engine_name(self) -> str:
        return self.engine.name

    def run(self, model: ModelSpec, network: NetworkProfile, request: RunRequest) -> list[Row]:
        rows, self.engine_security = self.engine.run(model, network, request)
        return rows
