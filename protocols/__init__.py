"""The one contract between the runner and every protocol, the shared device-cloud loop, and STIP.

Layering: stip/ and transport/ below, baselines/ and bench/ above; nothing here imports bench/.
"""
from protocols.contract import METRIC_UNITS, MPC_PHASES, STIP_PHASES, ModelSpec, Protocol, Row, RunRequest
from transport.link import NetworkProfile

__all__ = ["METRIC_UNITS", "MPC_PHASES", "STIP_PHASES", "ModelSpec", "NetworkProfile", "Protocol", "Row",
           "RunRequest"]
