"""`protocol=mpc` as the runner sees it: config -> class -> rows in the tidy schema."""
from __future__ import annotations

from pathlib import Path

import hydra.utils
import pytest
import torch
from omegaconf import OmegaConf

from baselines.mpc.protocol import MpcProtocol
from baselines.mpc.session import MpcResult, RunStats, merge_parties
from bench.protocol_configs import file_values
from protocols.contract import Row, RunRequest
from protocols.vocabulary import MPC_PHASES
from transport.link import NetworkProfile

from helpers.mpc_models import toy_spec

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "protocol" / "mpc.yaml"
LAN = NetworkProfile("lan", bandwidth_bps=3e9, rtt_s=0.8e-3, source="Nimbus appendix")


def _party(seconds: float, rounds: float, n_bytes: float) -> dict[str, float]:
    return {"seconds": seconds, "rounds": rounds, "bytes": n_bytes,
            "preprocessing_rounds": 0.0, "preprocessing_bytes": 0.0}


def test_config_instantiates_the_protocol_like_the_runner_does() -> None:
    cfg = file_values("mpc")
    cls = hydra.utils.get_class(OmegaConf.load(CONFIG)._target_)
    proto = cls(cfg)
    assert isinstance(proto, MpcProtocol) and proto.engine.approximation.name == "puma" and proto.cfg.provider == "TFP"
    assert proto.parallel_safe is False and proto.approx_name() == "puma"


@pytest.mark.parametrize("bad, match", [({"approx": "bolt"}, "choices"), ({"embedding": "cloud"}, "embedding"),
                                        ({"provider": "HE"}, "provider"), ({"approx": "exact"}, "plaintext-only")])
def test_bad_config_values_are_named(bad: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MpcProtocol({"approx": "puma", **bad})


def test_rows_obey_the_one_vocabulary() -> None:
    """latency at total = engine compute + rounds x RTT + critical-path bytes / bandwidth (modelled, labelled);
    bytes = both parties' sends (CrypTen's per-party sent+received, halved); rounds = the larger party count."""
    phase = merge_parties(_party(1.0, 10, 4e6), _party(1.5, 10, 4e6))
    assert phase["bytes"] == 4e6 and phase["latency"] == 1.5
    result = MpcResult(output=torch.zeros(1, 3, 4), output_name="last_hidden_state",
                       runs=[RunStats({"linear": phase, "total": phase}, 1.5e6)] * 3, setup=phase,
                       approx="puma", provider="TFP", embedding="mpc")
    ref = torch.zeros(1, 3, 4)
    ref[..., 1] = 1.0
    proto = MpcProtocol({"approx": "puma"})
    req = RunRequest(batch_size=1, seq_len=3, repeats=2, warmup=1, seed=0, task="forward")
    rows = proto.engine.rows(result, ref, torch.ones(1, 3), LAN, req)
    assert all(isinstance(r, Row) and r.unit for r in rows)
    assert {r.repeat for r in rows if r.metric == "latency"} == {0, 1}  # warm-up run dropped
    got = {(r.phase, r.metric, r.source): r.value for r in rows if r.repeat == 0}
    assert got[("total", "bytes", "engine")] == 4e6 and got[("total", "rounds", "engine")] == 10
    assert got[("compute", "latency", "engine")] == 1.5
    assert got[("total", "latency", "modelled")] == pytest.approx(1.5 + LAN.time(10, 4e6 / 2))
    assert ("total", "latency", "engine") not in got  # phase total is end to end only
    assert got[("weight_open", "bytes", "engine")] == 1.5e6
    assert got[("output", "max_abs_error", "engine")] == 1.0 and got[("output", "top1_agreement", "engine")] == 0.0


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_protocol_run_end_to_end_on_tiny_bert() -> None:
    spec = toy_spec("bert")
    req = RunRequest(batch_size=1, seq_len=6, repeats=1, warmup=0, seed=0, task="forward")
    rows = MpcProtocol({"approx": "puma", "provider": "TTP", "embedding": "device"}).run(spec, LAN, req)
    phases = {r.phase for r in rows}
    assert phases <= set(MPC_PHASES) | {"total", "compute", "output", "weight_open"} and "attention_softmax" in phases
    got = {(r.phase, r.metric): r.value for r in rows}
    assert got[("total", "bytes")] > 0 and got[("total", "preprocessing_bytes")] > 0
    assert got[("output", "top1_agreement")] > 0.8
    with pytest.raises(ValueError, match="generate"):
        MpcProtocol({}).run(spec, LAN, RunRequest(1, 6, 1, 0, 0, task="generate"))
