"""Chaos: kill -9 a 4-run sweep at random points, rerun it, and compare with an undisturbed sweep (slow).

Nothing may be lost, duplicated or left half-written: the same set of ok runs, each with the rows an
undisturbed run writes (same phases, metrics, sources and repeats, once each), and aggregate reads all.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from bench.aggregate import aggregate
from bench.app import CONFIG_DIR

REPO = Path(CONFIG_DIR).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
SWEEP = ["-m", "model=bert-tiny", "protocol=stip,full_cloud", "network=none", "run.seq_len=8,16",
         "run.repeats=2", "run.warmup=0", "experiment_name=chaos", "cloud_timeout_s=60"]
KEY = ["phase", "metric", "source", "repeat", "seq_len"]
KILLS = 4


def sweep(root: Path, *, kill_after: float | None = None) -> int | None:
    """Run the sweep into `root`; with kill_after, SIGKILL its whole process group after that many seconds."""
    cmd = [sys.executable, "-m", "bench", *SWEEP, f"output_root={root / 'runs'}",
           f"hydra.sweep.dir={root / 'multirun'}"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        proc.wait(timeout=kill_after if kill_after is not None else 900)
        return proc.returncode  # finished before the kill
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return None


def ok_runs(root: Path) -> dict[str, pd.DataFrame]:
    """run_id -> rows of every run whose report says ok."""
    out = {}
    for report in (root / "runs" / "chaos").glob("*/report.json"):
        if json.loads(report.read_text())["status"] == "ok":
            out[report.parent.name] = pd.read_parquet(report.parent / "rows.parquet")
    return out


@pytest.mark.slow
def test_kill9_at_random_points_loses_and_duplicates_nothing(tmp_path):
    rng = random.Random(int(os.environ.get("CHAOS_SEED", "9")))
    assert sweep(tmp_path / "calm") == 0
    reference = ok_runs(tmp_path / "calm")
    assert len(reference) == 4
    t_sweep = 60.0
    kills = []
    for _ in range(KILLS):
        after = rng.uniform(1.0, t_sweep)
        t0 = time.perf_counter()
        rc = sweep(tmp_path / "chaos", kill_after=after)
        kills.append((round(after, 1), rc, len(ok_runs(tmp_path / "chaos"))))
        if rc is not None:
            t_sweep = max(5.0, time.perf_counter() - t0)
    assert sweep(tmp_path / "chaos") == 0, kills  # the rerun finishes what the kills left
    chaos = ok_runs(tmp_path / "chaos")
    print("kills (after s, rc, ok runs):", kills)
    assert set(chaos) == set(reference), kills
    for rid, ref in reference.items():
        got = chaos[rid]
        assert not got.duplicated(KEY).any(), rid
        assert sorted(map(tuple, got[KEY].astype(str).values)) == sorted(map(tuple, ref[KEY].astype(str).values))
    leftovers = [p for p in (tmp_path / "chaos" / "runs").rglob("*") if p.name.startswith(("work", ".rows", ".report"))]
    assert not leftovers, leftovers
    assert aggregate(tmp_path / "chaos" / "runs", tmp_path / "results")
    total = pd.read_parquet(tmp_path / "results" / "chaos" / "rows.parquet")
    assert len(total) == sum(len(r) for r in reference.values())
