"""Real multi-job sweeps under the parallel launchers: the job (callbacks included) must pickle, every run
must write rows, and the sweep must end with the per-model answer table."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOY = ["model=bert-tiny", "network=none", "run.repeats=1", "run.warmup=0", "run.seq_len=8", "cloud_timeout_s=60"]


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["local_parallel", "submitit_local"])
def test_parallel_launcher_runs_every_job(tmp_path, launcher):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
           "STIP_BENCH_HOST_LOCK": str(tmp_path / "host.lock")}
    cmd = [sys.executable, "-m", "bench", "-m", *TOY, "protocol=stip,full_cloud", f"hydra/launcher={launcher}",
           f"output_root={tmp_path / 'runs'}", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = sorted((tmp_path / "runs" / "adhoc").glob("*/rows.parquet"))
    assert len(rows) == 2, (out.stdout[-2000:], out.stderr[-2000:])
    pointers = sorted((tmp_path / "sweep").glob("*/run_dir.txt"))
    assert {Path(p.read_text().strip()) for p in pointers} == {r.parent for r in rows}
    assert "bert-tiny · seq 8 · batch 1" in out.stdout and "full_cloud" in out.stdout and "failed" not in out.stdout
