"""The printed answer: one line per run, a per-(model, seq_len, batch) table, noise and failures flagged;
and the host slot that keeps non-parallel-safe protocols alone on a host."""
from __future__ import annotations

import threading
import time

import pandas as pd
import pytest
from rich.console import Console

from bench.console_answer import print_answer, run_line, summary_frame
from bench.hostslot import host_slot
from bench.results import RunReport, atomic_write_parquet, to_frame
from protocols.contract import Row
from protocols.results_schema import ROWS


def _rows(run_id: str, model: str, protocol: str, totals: list[float]):
    rows = [Row("total", "latency", t, "socket", repeat=i) for i, t in enumerate(totals)]
    rows += [Row("cloud_compute", "latency", t / 2, "socket", repeat=i) for i, t in enumerate(totals)]
    rows += [Row("uplink", "bytes", 1500.0, "socket", repeat=0), Row("downlink", "bytes", 2.5e6, "socket", repeat=0),
             Row("output", "top1_agreement", 1.0, "host", repeat=0)]
    ctx = {"run_id": run_id, "experiment": "t", "protocol": protocol, "approx": "", "model": model, "n_params": 1,
           "network": "lan", "batch_size": 1, "seq_len": 8, "seed": 0}
    return to_frame(rows, ctx)


def _report(tmp_path, status="ok", error=None):
    cfg = {"protocol": {"name": "stip"}, "model": {"name": "bert-tiny"}, "network": {"name": "lan"},
           "run": {"seq_len": 8, "batch_size": 1, "task": "forward"}}
    return RunReport(run_id="r1", experiment="t", config=cfg, status=status, error=error)


def test_run_line_names_everything_a_reader_needs(tmp_path):
    atomic_write_parquet(tmp_path / ROWS, _rows("r1", "bert-tiny", "stip", [0.010, 0.020, 0.012]))
    line = run_line(_report(tmp_path), tmp_path)
    assert line.startswith("stip · bert-tiny · lan (seq 8, batch 1, forward): total: measured 12 ms (socket; IQR ")
    assert "[NOISY: max/min 2.00 > 1.5]" in line and "()" not in line
    assert "cloud_compute 6 ms" in line and "up 1.5 kB / down 2.5 MB" in line and "top-1 100.0%" in line
    assert line.endswith(str(tmp_path))
    old = _report(tmp_path)
    old.skipped, old.provenance = True, {"git_sha": "0123abc"}
    assert run_line(old, tmp_path).startswith("REUSED (commit 0123abc, now ")
    failed = run_line(_report(tmp_path, "failed", "ValueError: bad"), tmp_path)
    assert failed.startswith("FAILED stip") and "ValueError: bad" in failed


def test_summary_never_pools_models_and_flags_noise():
    rows = pd.concat([_rows("a", "m1", "stip", [1.0, 1.1]), _rows("b", "m2", "stip", [3.0, 9.0])])
    table = summary_frame(rows).set_index("model")
    assert table.loc["m1", "latency_s"] == pytest.approx(1.05) and table.loc["m2", "latency_s"] == pytest.approx(6.0)
    assert table.loc["m2", "spread"] == pytest.approx(3.0)
    console = Console(record=True, width=160)
    print_answer(rows, ["FAILED mpc · m1 · lan: boom"], "t", console=console)
    text = console.export_text()
    assert "t: m1 · seq 8 · batch 1" in text and "t: m2 · seq 8 · batch 1" in text
    assert "WARNING stip · m2 · lan: noisy latency: max/min 3.00 > 1.5" in text
    assert "stip · m1" not in text.split("WARNING", 1)[1]  # m1's spread (1.1) is not flagged
    assert "1 run(s) failed" in text and "FAILED mpc · m1 · lan: boom" in text


def test_unsafe_protocol_waits_until_it_is_alone(tmp_path, monkeypatch):
    # flock locks belong to open file descriptions: two threads that each open the file conflict like two
    # processes would (no child process left behind for other tests to find)
    monkeypatch.setenv("STIP_BENCH_HOST_LOCK", str(tmp_path / "host.lock"))
    started, release = threading.Event(), threading.Event()

    def hold():
        with host_slot(True):
            started.set()
            release.wait(10)

    other = threading.Thread(target=hold)
    other.start()
    try:
        assert started.wait(10)
        with host_slot(True):  # two parallel-safe runs share the host
            pass
        release_at = time.monotonic() + 1.0
        threading.Timer(1.0, release.set).start()
        with host_slot(False):  # MPC: waits for the other run to finish
            assert time.monotonic() >= release_at - 0.05
    finally:
        release.set()
        other.join(10)
