"""A finished run whose outputs are non-finite or below its approximation's bound is `diverged`, rows kept
(issue 20)."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from baselines.full_cloud import FullCloudProtocol
from baselines.mpc.approximations import BOUNDS, FAMILIES, get_approximation
from baselines.mpc.protocol import MpcProtocol
from bench.app import CONFIG_DIR, run
from bench.status import run_status
from protocols.contract import EXACT_BOUND, AccuracyBound

BOUND = AccuracyBound(min_top1=0.9, max_abs_error=10.0, holds="test range; way out: shorter seq")


def frame(*rows: tuple[str, str, float, str]) -> pd.DataFrame:
    return pd.DataFrame([{"phase": p, "metric": m, "value": v, "source": s, "repeat": 0} for p, m, v, s in rows])


def forward_accuracy(top1: float, err: float, div: float = 0.0, source: str = "engine") -> list[tuple]:
    return [("output", "top1_agreement", top1, source), ("output", "max_abs_error", err, source),
            ("output", "diverged_fraction", div, source), ("total", "latency", 1.0, "modelled")]


def test_accurate_run_is_ok() -> None:
    assert run_status(frame(*forward_accuracy(0.95, 0.1)), BOUND) == ("ok", None)


@pytest.mark.parametrize("top1,err,div,check", [(0.012, 4.3e9, 0.0, "max_abs_error 4.3e+09 > bound 10"),
                                                (0.5, 0.1, 0.0, "top1_agreement 0.5 < bound 0.9"),
                                                (math.nan, math.nan, 1.0, "non-finite output")])
def test_each_failed_check_is_named_with_value_bound_and_way_out(top1: float, err: float, div: float,
                                                                 check: str) -> None:
    status, reason = run_status(frame(*forward_accuracy(top1, err, div)), BOUND)
    assert status == "diverged" and check in reason and "way out" in reason, reason


def test_no_bound_still_catches_non_finite_output() -> None:
    assert run_status(frame(*forward_accuracy(math.nan, math.nan, 1.0)), None)[0] == "diverged"
    assert run_status(frame(*forward_accuracy(0.1, 5.0)), None) == ("ok", None)


def test_one_token_agreement_alone_is_not_judged() -> None:
    """A one-token generation's agreement (no max_abs_error row) is one sample per sequence: not a divergence."""
    assert run_status(frame(("output", "top1_agreement", 0.0, "engine")), BOUND) == ("ok", None)


def test_bounds_live_beside_the_approximations() -> None:
    assert all(FAMILIES[n].bound is BOUNDS[n] for n in FAMILIES)
    derived = get_approximation({"base": "puma", "softmax_denominator": "scaled"})
    assert derived.bound is BOUNDS["puma"] and derived.name == "puma+softmax_denominator=scaled"
    assert MpcProtocol({"approx": "nimbus"}).accuracy_bound() is BOUNDS["nimbus"]
    assert MpcProtocol({"approx": "puma", "engine": "spu"}).accuracy_bound().min_top1 == 0.85
    assert FullCloudProtocol({}).accuracy_bound() is EXACT_BOUND and EXACT_BOUND.min_top1 > 0.999  # float rounding


def compose_cfg(tmp_path: Path, *overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("config", overrides=[f"output_root={tmp_path / 'runs'}", "model=bert-tiny", "protocol=mpc",
                                            "protocol.mode=simulate", "network=lan", "run.repeats=1",
                                            "run.warmup=0", *overrides])


def test_puma_at_512_is_diverged_and_the_scaled_denominator_holds(tmp_path: Path) -> None:
    """The issue's reproducer on the float64 simulation: PUMA's CrypTen reciprocal fails at 512 tokens; the
    scaled denominator (the remedy option) holds there. A diverged run keeps its rows and is not redone."""
    report = run(compose_cfg(tmp_path, "run.seq_len=512"))
    assert report.status == "diverged" and "non-finite output" in report.status_reason, report.status_reason
    assert "softmax_denominator: scaled" in report.status_reason
    rows = pd.read_parquet(Path(report.config["output_root"]) / report.experiment / report.run_id / "rows.parquet")
    assert (rows.metric == "diverged_fraction").any()
    again = run(compose_cfg(tmp_path, "run.seq_len=512"))
    assert again.skipped and again.status == "diverged"
    fixed = run(compose_cfg(tmp_path, "run.seq_len=512", "protocol.approx={base:puma,softmax_denominator:scaled}"))
    assert fixed.status == "ok" and fixed.status_reason is None, fixed.status_reason
