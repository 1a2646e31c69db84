"""What protocol=mpc asks of an MPC engine (CrypTen, SPU): one object per engine instead of branches on its name.

An engine checks its settings once when built (its approximation resolved there, once), names the rows'
approximation, security label and accuracy bound, and runs the forward. baselines.mpc.protocol.ENGINES maps
`protocol.engine` to the class. A structural interface: baselines/spu implements it without importing baselines/mpc.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Protocol

from protocols.contract import AccuracyBound, ModelSpec, Row, RunRequest
from transport.link import NetworkProfile

if TYPE_CHECKING:
    from baselines.mpc.protocol import MpcConfig


class MpcEngine(Protocol):
    """One MPC engine behind `protocol=mpc`, built from (and checking) the protocol's config: `Engine(cfg)`."""

    name: ClassVar[str]

    def __init__(self, cfg: MpcConfig) -> None: ...

    def approx_name(self) -> str:
        """The rows' `approx` column."""

    def configured_security(self) -> str | None:
        """The security label the parties would run with (protocols.vocabulary.SECURITY; None: no parties)."""

    def accuracy_bound(self) -> AccuracyBound | None:
        """The approximation's accuracy bound (bench/status.py marks a run below it diverged)."""

    def run(self, model: ModelSpec, network: NetworkProfile, request: RunRequest) -> tuple[list[Row], str | None]:
        """The run's rows and the security label the parties really ran with (None: no parties)."""
