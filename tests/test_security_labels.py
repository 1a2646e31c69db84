"""Security labels are read from each engine's own setting, per engine x protocol (issue 20)."""
from __future__ import annotations

from pathlib import Path

import pytest

from baselines.mpc.compat import import_crypten
from baselines.mpc.launcher import PROVIDER_SECURITY, PROVIDERS, configured_security, provider_security, run_parties
from baselines.mpc.protocol import MpcProtocol
from baselines.spu import protocol as spu_protocol
from baselines.spu.engine import PROTOCOLS, runtime_settings
from protocols.vocabulary import SECURITY

ROOT = Path(__file__).resolve().parents[1]
HAS_SPU = (ROOT / ".venv-spu" / "bin" / "python").exists()


def test_every_label_is_defined_and_the_dealer_cases_are_told_apart() -> None:
    labels = set(PROVIDER_SECURITY.values()) | set(spu_protocol.SECURITY.values())
    assert labels <= set(SECURITY) and len(labels) == 4
    assert PROVIDER_SECURITY["TFP"] != PROVIDER_SECURITY["TTP"]


@pytest.mark.parametrize("provider, label", [("TFP", "2pc-dealer-is-server"), ("TTP", "2pc-dealer-third-party")])
def test_crypten_label_is_read_from_crypten_cfg(provider: str, label: str) -> None:
    crypten = import_crypten()
    with crypten.cfg.temp_override({"mpc.provider": provider}):
        assert provider_security(crypten) == label
    assert configured_security(provider) == label
    assert MpcProtocol({"approx": "puma", "provider": provider}).security_label() == label
    with crypten.cfg.temp_override({"mpc.provider": "HE"}), pytest.raises(ValueError, match="'HE'"):
        provider_security(crypten)


def _read_provider(rank: int, crypten, payload) -> str:
    return provider_security(crypten)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_crypten_party_processes_read_the_provider_they_run_with(provider: str) -> None:
    """What the two parties (and TTP's third process) really configured, read inside each party."""
    labels = run_parties(_read_provider, None, provider=provider, timeout_s=120)
    assert labels == [PROVIDER_SECURITY[provider]] * 2


def test_simulation_runs_no_protocol() -> None:
    assert MpcProtocol({"approx": "puma", "mode": "simulate"}).security_label() is None


@pytest.mark.parametrize("runtime, label", [
    ({"protocol": "SEMI2K", "beaver_type": "TrustedFirstParty"}, "2pc-dealer-is-server"),
    ({"protocol": "SEMI2K", "beaver_type": "TrustedThirdParty"}, "2pc-dealer-third-party"),
    ({"protocol": "ABY3", "beaver_type": "TrustedFirstParty"}, "3pc-honest-majority"),
    ({"protocol": "CHEETAH", "beaver_type": "TrustedFirstParty"}, "2pc")])
def test_spu_label_follows_protocol_and_beaver_type(runtime: dict, label: str) -> None:
    assert spu_protocol.security_of(runtime) == label


def test_spu_unknown_beaver_type_is_refused() -> None:
    with pytest.raises(ValueError, match="MultiParty"):
        spu_protocol.security_of({"protocol": "SEMI2K", "beaver_type": "MultiParty"})


@pytest.mark.skipif(not HAS_SPU, reason="needs .venv-spu (make install creates it): SPU's RuntimeConfig lives there")
@pytest.mark.parametrize("protocol, label", [("aby3", "3pc-honest-majority"), ("cheetah", "2pc"),
                                             ("semi2k", "2pc-dealer-is-server")])
def test_spu_label_is_read_from_the_drivers_runtime_config(protocol: str, label: str) -> None:
    """SPU 0.9.5's SEMI2K default beaver type is TrustedFirstParty (rank 0, the server, deals)."""
    runtime = runtime_settings(protocol)
    assert runtime["protocol"] == PROTOCOLS[protocol]
    if protocol == "semi2k":
        assert runtime["beaver_type"] == "TrustedFirstParty"
    assert spu_protocol.security_of(runtime) == label
