"""The one contract between the runner and every protocol, the shared device-cloud loop, and STIP.

Layering: stip/ and transport/ below, baselines/ and bench/ above; nothing here imports bench/.
"""
from protocols.contract import ModelSpec, Protocol, ProtocolConfig, Row, RunRequest, typed_config
from protocols.vocabulary import METRICS, MPC_PHASES, PHASES, SOURCES, STIP_PHASES
from transport.link import NetworkProfile

__all__ = ["METRICS", "MPC_PHASES", "PHASES", "SOURCES", "STIP_PHASES", "ModelSpec", "NetworkProfile",
           "Protocol", "ProtocolConfig", "Row", "RunRequest", "typed_config"]
