"""Issue 24 (reliability, third pass): hostile or damaged result files cannot stop or steer the harness, and a
remote cloud's token never travels in clear or from a readable file. Each test failed on the code before it."""
from __future__ import annotations

import json
import sys

import pandas as pd
import pytest

from bench.aggregate import aggregate
from bench.app import run, run_dir_of
from bench.results import REPORT, ROWS, RunReport
from test_results_safety import fake_ok_run, make_cfg, plain

# --- results and aggregation (items 5-9) ----------------------------------------------------------------------

DAMAGED = {
    "random_bytes": b"\x93\xff\x00garbage\xc3\x28",
    "null": b"null",
    "list": b"[]",
    "string": b'"report"',
    "number": b"42",
    "wrong_types": json.dumps({"run_id": 7, "experiment": "exp", "config": [], "status": "ok"}).encode(),
}


@pytest.mark.parametrize("name", list(DAMAGED))
def test_aggregate_skips_and_lists_a_damaged_report(tmp_path, caplog, name):
    runs = tmp_path / "runs"
    (runs / "exp" / "good").mkdir(parents=True)
    fake_ok_run(runs / "exp" / "good", "good")
    (runs / "exp" / "bad").mkdir()
    (runs / "exp" / "bad" / REPORT).write_bytes(DAMAGED[name])
    assert aggregate(runs, tmp_path / "results") == [tmp_path / "results" / "exp"]
    table = pd.read_csv(tmp_path / "results" / "exp" / "runs.csv").set_index("run_id")
    assert table.loc["good", "status"] == "ok"
    assert table.loc["bad", "status"] == "unreadable" and "report.json" in table.loc["bad", "error"]
    assert set(pd.read_parquet(tmp_path / "results" / "exp" / "rows.parquet").run_id) == {"good"}
    assert str(runs / "exp" / "bad" / REPORT) in caplog.text


@pytest.mark.parametrize("experiment", ["../../escaped", "ABSOLUTE", "a/b", "..", ""])
def test_report_experiment_cannot_steer_where_aggregate_writes(tmp_path, caplog, experiment):
    runs = tmp_path / "a" / "runs"
    (runs / "exp" / "evil").mkdir(parents=True)
    fake_ok_run(runs / "exp" / "evil", "evil")
    experiment = str(tmp_path / "escaped-abs") if experiment == "ABSOLUTE" else experiment
    data = json.loads((runs / "exp" / "evil" / REPORT).read_text())
    (runs / "exp" / "evil" / REPORT).write_text(json.dumps({**data, "experiment": experiment}))
    results = tmp_path / "a" / "b" / "results"
    before = {p for p in tmp_path.rglob("*")}
    aggregate(runs, results)
    new = {p for p in tmp_path.rglob("*")} - before
    outside = [p for p in new if p != results and results not in p.parents and not results.is_relative_to(p)]
    assert not outside, outside  # only results/ (and the folders above it) were created
    assert not (tmp_path / "escaped-abs").exists()
    table = pd.read_csv(results / "exp" / "runs.csv").set_index("run_id")
    assert table.loc["evil", "status"] == "unreadable" and "experiment" in table.loc["evil", "error"]
    assert "experiment" in caplog.text


def test_aggregate_skips_and_lists_rows_of_the_wrong_schema(tmp_path, caplog):
    runs = tmp_path / "runs"
    for rid in ("good", "text_value", "text_seq"):
        (runs / "exp" / rid).mkdir(parents=True)
        fake_ok_run(runs / "exp" / rid, rid)
    for rid, col in (("text_value", "value"), ("text_seq", "seq_len")):
        path = runs / "exp" / rid / ROWS
        df = pd.read_parquet(path).astype({col: "string"})
        df[col] = "not a number"
        df.to_parquet(path, index=False)
    assert aggregate(runs, tmp_path / "results") == [tmp_path / "results" / "exp"]
    assert set(pd.read_parquet(tmp_path / "results" / "exp" / "rows.parquet").run_id) == {"good"}
    table = pd.read_csv(tmp_path / "results" / "exp" / "runs.csv").set_index("run_id")
    assert table.loc["text_value", "status"] == "unreadable" and table.loc["text_seq", "status"] == "unreadable"
    assert "text_value/rows.parquet" in caplog.text and "text_seq/rows.parquet" in caplog.text


def _shapes_run(tmp_path, *extra):
    cfg = make_cfg(tmp_path, "run.task=shapes", *extra)
    return cfg, run_dir_of(plain(cfg))


@pytest.mark.parametrize("name", ["random_bytes", "null", "list", "string", "wrong_types"])
@pytest.mark.parametrize("force", [False, True])
def test_runner_redoes_a_run_whose_report_is_damaged(tmp_path, name, force):
    cfg, out = _shapes_run(tmp_path, f"force={str(force).lower()}")
    out.mkdir(parents=True)
    (out / REPORT).write_bytes(DAMAGED[name])
    report = run(cfg)
    assert report.status == "ok" and not report.skipped, report.error
    assert RunReport.from_json(out).status == "ok"


def test_runner_redoes_an_ok_run_whose_rows_do_not_read_back(tmp_path):
    cfg, out = _shapes_run(tmp_path)
    assert run(cfg).status == "ok"
    rows = out / ROWS
    rows.write_bytes(rows.read_bytes()[:50])  # truncated under an `ok` report
    report = run(cfg)
    assert report.status == "ok" and not report.skipped
    assert len(pd.read_parquet(rows)) == report.n_rows
    assert run(cfg).skipped  # now it is finished: the next call skips it


def test_sweep_names_every_crashed_job(tmp_path, monkeypatch, capsys):
    """6 jobs, 4 raise outside the protocol (the runner itself): every one is named and recorded `failed`."""
    import bench.app

    real_run = bench.app.run

    def crashing_run(cfg):
        seq = int(cfg.run.seq_len)
        if seq % 2 or seq == 4:  # 4 of the 6
            raise RuntimeError(f"boom at seq {seq}")
        return real_run(cfg)
    monkeypatch.setattr(bench.app, "run", crashing_run)
    monkeypatch.setattr(sys, "argv", [
        "bench", "-m", "model=bert-tiny", "protocol=full_cloud", "run.task=shapes", "run.seq_len=1,2,3,4,5,8",
        f"output_root={tmp_path / 'runs'}", f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    assert bench.app.cli() == 1
    err = capsys.readouterr().err
    assert "4 run(s) failed:" in err, err[-3000:]
    for seq in (1, 3, 4, 5):
        assert f"boom at seq {seq}" in err and f"run.seq_len={seq}" in err
    failed = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob(f"*/*/{REPORT}")]
    assert sorted(r["error"] for r in failed if r["status"] == "failed") == [
        f"RuntimeError: boom at seq {s}" for s in (1, 3, 4, 5)]
    assert sum(r["status"] == "ok" for r in failed) == 2


def test_sweep_runs_names_a_job_whose_rows_do_not_read_back(tmp_path):
    from bench.answer import RUN_POINTER, sweep_runs

    for i, rid in enumerate(("good", "torn")):
        (tmp_path / "runs" / rid).mkdir(parents=True)
        fake_ok_run(tmp_path / "runs" / rid, rid)
        (tmp_path / "sweep" / str(i)).mkdir(parents=True)
        (tmp_path / "sweep" / str(i) / RUN_POINTER).write_text(str(tmp_path / "runs" / rid))
    torn = tmp_path / "runs" / "torn" / ROWS
    torn.write_bytes(torn.read_bytes()[:40])
    (tmp_path / "sweep" / "2").mkdir()
    (tmp_path / "sweep" / "2" / RUN_POINTER).write_text(str(tmp_path / "runs" / "nothing"))
    rows, failed = sweep_runs(tmp_path / "sweep")
    assert set(rows.run_id) == {"good"}
    assert len(failed) == 2 and any("torn" in f and "rows.parquet" in f for f in failed), failed


@pytest.mark.parametrize("name", ["../x", "/abs", "a/b", ""])
def test_an_experiment_name_that_is_not_one_folder_is_refused_before_anything(tmp_path, name):
    from bench.validate import ConfigError

    with pytest.raises(ConfigError, match=r"experiment_name=.* must be one folder name.*experiment_name=adhoc"):
        run(make_cfg(tmp_path, f"experiment_name='{name}'"))
    assert not (tmp_path / "runs").exists() and not (tmp_path / "x").exists()
