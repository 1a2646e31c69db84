"""Results that cannot be lost or corrupted, and bad values refused before any work (issues 9 and 10).

Fast: atomic writes, the run lock (a second writer waits, then skips or gives up, saying so), stale
work folders, `bench.aggregate` over a truncated rows.parquet, and every kind of bad value failing
before a model is built with a message that names the value and its fix.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

import bench.app
from bench.aggregate import aggregate
from bench.app import CONFIG_DIR, run, run_dir_of
from bench.results import LOCK, atomic_write_bytes
from bench.validate import ConfigError
from protocols.results_schema import ROWS

from helpers.bench_runs import fake_ok_run, make_cfg, plain

REPO = Path(CONFIG_DIR).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
BUILD_PLUS_SPAWN_S = 20.0  # what a model build + cloud spawn costs on this host (issue 10); checks must be far faster


# --- atomic writes -------------------------------------------------------------------------------

def test_atomic_write_fsyncs_and_leaves_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "report.json"
    atomic_write_bytes(target, b"old")
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new" and len(synced) >= 1  # the file (and its folder) reached the disk

    def broken_replace(src, dst):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"half")
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]  # no temp file left behind


# --- one writer per run folder ------------------------------------------------------------------

HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from filelock import FileLock
    sys.path.insert(0, {repo!r})
    from tests.helpers.bench_runs import fake_ok_run
    folder = Path({folder!r})
    with FileLock(str(folder / {lock!r})):
        print("locked", flush=True)
        time.sleep({hold})
        if {finish}:
            fake_ok_run(folder, {rid!r})
""")


def hold_lock(folder: Path, rid: str, hold: float, finish: bool) -> subprocess.Popen:
    """Another process holding the run folder's lock for `hold` seconds (then finishing the run or not)."""
    folder.mkdir(parents=True, exist_ok=True)
    code = HOLDER.format(repo=str(REPO), folder=str(folder), lock=LOCK, hold=hold, finish=finish, rid=rid)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=ENV)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_writer_waits_then_skips_the_run_the_first_finished(tmp_path, caplog):
    cfg = make_cfg(tmp_path)
    folder = run_dir_of(plain(cfg))
    holder = hold_lock(folder, folder.name, hold=1.5, finish=True)
    t0 = time.perf_counter()
    report = run(cfg)
    waited = time.perf_counter() - t0
    holder.wait(timeout=30)
    assert report.skipped and report.status == "ok"  # nothing run twice, nothing overwritten
    assert waited >= 1.0, waited
    assert "being written by another process" in caplog.text and "waiting" in caplog.text


def test_second_writer_gives_up_after_lock_timeout_saying_so(tmp_path, caplog):
    cfg = make_cfg(tmp_path, "+lock_timeout_s=0.5")
    folder = run_dir_of(plain(cfg))
    holder = hold_lock(folder, folder.name, hold=5, finish=False)
    try:
        report = run(cfg)
    finally:
        holder.kill()
        holder.wait()
    assert report.status == "failed" and "locked by another writer" in report.error
    assert not (folder / "report.json").exists()  # the holder's folder was not touched
    assert "still locked" in caplog.text and "lock_timeout_s" in caplog.text


def test_stale_work_folders_of_killed_attempts_are_removed(tmp_path):
    cfg = make_cfg(tmp_path, "protocol.return_mode=no_such_mode")  # fails fast, after the lock and the clean-up
    folder = run_dir_of(plain(cfg))
    (folder / "work-4242-deadbeef" / "cloud_checkpoint").mkdir(parents=True)
    report = run(cfg)
    assert report.status == "failed"
    assert not list(folder.glob("work*"))  # neither the stale folder nor this attempt's own


# --- aggregate survives a damaged file ----------------------------------------------------------

def test_aggregate_skips_and_lists_a_truncated_rows_file(tmp_path, caplog):
    runs = tmp_path / "runs"
    for rid in ("good", "bad"):
        (runs / "exp" / rid).mkdir(parents=True)
        fake_ok_run(runs / "exp" / rid, rid)
    bad = runs / "exp" / "bad" / ROWS
    bad.write_bytes(bad.read_bytes()[:40])  # a torn write from an older runner
    (runs / "exp" / "torn").mkdir()
    (runs / "exp" / "torn" / "report.json").write_text('{"run_id": "torn", "sta')
    written = aggregate(runs, tmp_path / "results")
    assert written == [tmp_path / "results" / "exp"]
    rows = pd.read_parquet(tmp_path / "results" / "exp" / "rows.parquet")
    table = pd.read_csv(tmp_path / "results" / "exp" / "runs.csv").set_index("run_id")
    assert set(rows.run_id) == {"good"}
    assert table.loc["bad", "status"] == "unreadable" and table.loc["good", "status"] == "ok"
    assert str(bad) in caplog.text and "torn/report.json" in caplog.text and "2 unreadable" in caplog.text


def test_aggregate_writes_the_rows_of_every_experiment_not_only_the_first(tmp_path):
    """Regression: the table writers once rebound the per-experiment rows, so only the first experiment got rows."""
    runs = tmp_path / "runs"
    for exp in ("alpha", "beta"):
        (runs / exp / f"{exp}-run").mkdir(parents=True)
        fake_ok_run(runs / exp / f"{exp}-run", f"{exp}-run", experiment=exp)
    aggregate(runs, tmp_path / "results")
    for exp in ("alpha", "beta"):
        assert pd.read_parquet(tmp_path / "results" / exp / "rows.parquet").run_id.tolist() == [f"{exp}-run"]


# --- validation before work ---------------------------------------------------------------------

BAD_VALUES = [
    (["run.seq_len=0"], "run.seq_len=0", "run.seq_len=32"),
    (["run.seq_len=-1"], "run.seq_len=-1", "run.seq_len=32"),
    (["run.seq_len=600"], "run.seq_len=600", "run.seq_len<=512"),
    (["run.task=generate", "run.max_new_tokens=20", "run.seq_len=500"], "run.max_new_tokens=20",
     "run.seq_len<=492"),
    (["run.batch_size=0"], "run.batch_size=0", "run.batch_size=1"),
    (["run.repeats=0"], "run.repeats=0", "run.repeats=3"),
    (["run.task=fowrard"], "run.task='fowrard'", "run.task=forward"),
    (["network=wired", "network.bandwidth_bps=-1e8"], "network.bandwidth_bps=-100000000.0", "network=wired"),
    (["network.bandwidth_bps=0"], "network.bandwidth_bps=0", "network.bandwidth_bps=1e8"),
    (["network.rtt_s=-0.01"], "network.rtt_s=-0.01", "network.rtt_s=0.01"),
]


@pytest.mark.parametrize("overrides,named,fix", BAD_VALUES, ids=[" ".join(b[0]) for b in BAD_VALUES])
def test_bad_value_fails_before_the_model_is_built(tmp_path, monkeypatch, overrides, named, fix):
    def no_build(*a, **k):
        raise AssertionError("a model was built for an invalid config")
    monkeypatch.setattr(bench.app, "build_spec", no_build)
    cfg = make_cfg(tmp_path, *overrides)
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        run(cfg)
    assert time.perf_counter() - t0 < 2.0
    assert named in str(err.value) and fix in str(err.value), str(err.value)
    assert not (tmp_path / "runs").exists()  # no run folder, no report for a run that never was


def test_gpt2_seq_len_beyond_positions_names_the_limit(tmp_path):
    with pytest.raises(ConfigError, match=r"run.seq_len=2048 needs 2048 positions but model 'gpt2-124m' has 1024"):
        run(make_cfg(tmp_path, "model=gpt2-124m", "run.seq_len=2048"))


def bench_cli(tmp_path, *args, timeout=120):
    cmd = [sys.executable, "-m", "bench", *args, f"output_root={tmp_path / 'runs'}",
           f"hydra.run.dir={tmp_path / 'hydra'}", f"hydra.sweep.dir={tmp_path / 'multirun'}"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV, cwd=REPO)
    return proc, time.perf_counter() - t0


def test_cli_exits_1_naming_bad_values_without_building(tmp_path):
    proc, took = bench_cli(tmp_path, "model=bert-tiny", "protocol=full_cloud", "run.batch_size=0",
                           "network.rtt_s=-1")
    assert proc.returncode == 1
    assert "run.batch_size=0 must be an integer >= 1" in proc.stderr and "network.rtt_s=-1" in proc.stderr
    assert "1 run(s) failed:" in proc.stderr
    assert took < BUILD_PLUS_SPAWN_S, took  # interpreter start + imports only
    assert not (tmp_path / "runs").exists()


def test_cli_sweep_with_a_bad_job_exits_1_listing_it(tmp_path):
    proc, _ = bench_cli(tmp_path, "-m", "model=bert-tiny", "protocol=full_cloud", "run.seq_len=0,-3",
                        "run.task=shapes")
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "2 run(s) failed:" in proc.stderr and "run.seq_len=0" in proc.stderr and "run.seq_len=-3" in proc.stderr


def test_experiment_without_multirun_is_refused_with_the_hint(tmp_path):
    proc, took = bench_cli(tmp_path, "experiment=quick")
    assert proc.returncode == 1
    assert "launched without -m" in proc.stderr and "python -m bench -m experiment=quick" in proc.stderr
    assert "protocol: stip,full_cloud" in proc.stderr
    assert took < BUILD_PLUS_SPAWN_S and not (tmp_path / "runs").exists()


def test_cli_single_ok_run_exits_0(tmp_path):
    proc, _ = bench_cli(tmp_path, "model=bert-tiny", "protocol=full_cloud", "run.task=shapes")
    assert proc.returncode == 0, proc.stderr[-2000:]
    reports = list((tmp_path / "runs").glob("*/*/report.json"))
    assert len(reports) == 1 and json.loads(reports[0].read_text())["status"] == "ok"
