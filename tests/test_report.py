"""The paper report and the profile runner: every artifact gets a row, failures are recorded, not fatal."""
import json
import subprocess
import sys
import types
from pathlib import Path

import pandas as pd

import report.artifacts as artifacts
from bench.profile import load_profile
from report import writer
from report.artifacts import Comparison, modules
from report.reported import load_artifacts

ROOT = Path(__file__).resolve().parents[1]


def _module(name: str, artifact: str, compare, figure=None) -> types.ModuleType:
    mod = types.ModuleType(f"report.artifacts.{name}")
    mod.ARTIFACT, mod.EXPERIMENTS, mod.compare = artifact, (), compare
    if figure:
        mod.figure = figure
    return mod


def _raises(results: Path):
    raise RuntimeError("rows.parquet is corrupt")


def test_report_has_every_artifact_even_when_modules_raise(tmp_path):
    good = _module("good", "fig7b", lambda r: [
        Comparison("fig7b", "largest model served", "params", "reproduced", measured=7e10, paper=7e10),
        Comparison("fig7b", "throughput gain", "x", "differs", measured=1e4, paper=6.7e6, reason="host differs")])
    broken = _module("broken", "fig2", _raises, figure=lambda r, o: (_ for _ in ()).throw(ValueError("no rows")))
    md, csv = writer.write(tmp_path, [good, broken])
    table = pd.read_csv(csv)
    declared = set(load_artifacts())
    assert declared <= set(table.artifact) and {f"fig{i}" for i in (2, 8, 9)} <= declared
    assert table.status.isin(["reproduced", "differs", "not_reproducible", "not_measured", "derived"]).all()
    fig2 = table[table.artifact == "fig2"]
    assert fig2.status.tolist() == ["not_measured"] and "RuntimeError: rows.parquet is corrupt" in fig2.reason.iloc[0]
    assert table[table.artifact == "fig7b"].ratio.round(4).tolist() == [1.0, round(1e4 / 6.7e6, 4)]
    text = md.read_text()
    assert "| 9 | [fig7b](#fig7b)" in text and "## The paper's claims" in text  # claims first, artifacts after
    assert "figure() raised ValueError: no rows" in text
    assert "45,366 / 6.7e-4 = 6.8e+07" in text  # the paper's own arithmetic is stated
    assert all(f"## {a}" in text for a in declared)


def test_report_over_the_real_modules_on_an_empty_results_folder(tmp_path):
    """No experiment run yet: every module says not_measured (or derived), none raises."""
    writer.write(tmp_path)
    table = pd.read_csv(tmp_path / "report.csv")
    assert set(load_artifacts()) <= set(table.artifact)
    for mod in modules():
        rows = table[table.artifact == mod.ARTIFACT]
        assert not rows.reason.fillna("").str.contains("raised").any(), rows.reason.tolist()


def test_profile_runner_records_a_failure_runs_the_next_step_and_writes_the_report(tmp_path):
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text("tiny:\n  - {module: bench.no_such_module, name: broken, minutes: 0.1}\n"
                        "  - {module: json.tool, args: '--help', name: next}\n"
                        "  - {module: http.server, args: '0 --bind 127.0.0.1', name: hangs, timeout_min: 0.05}\n")
    assert [s.name for s in load_profile("tiny", profiles)] == ["broken", "next", "hangs"]
    results = tmp_path / "results"
    proc = subprocess.run([sys.executable, "-m", "bench.profile", "tiny", "--profiles", str(profiles), "--results",
                           str(results), "--runs", str(tmp_path / "runs")], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    record = json.loads((results / "profile.json").read_text())
    steps = {s["name"]: s for s in record["steps"]}
    assert list(steps) == ["broken", "next", "hangs", "aggregate", "report"]
    assert record["failed"] == ["broken", "hangs"] and steps["hangs"]["status"] == "timeout"
    assert 0.04 < steps["hangs"]["minutes"] < 0.5
    assert steps["broken"]["status"] == "failed" and "No module named" in steps["broken"]["tail"]
    assert steps["next"]["status"] == steps["report"]["status"] == "ok"
    text = (results / "REPORT.md").read_text()
    assert "profile: `tiny`" in text and "| `python -m bench.no_such_module` | 0.0 | failed |" in text
    assert record["other_load_cores"] >= 0 and "other processes kept" in text


def test_host_load_is_judged_by_other_processes_not_by_the_load_average_the_harness_left():
    """make bench runs bench-micro's busy-core benchmark just before the profile: the load average at start then
    holds the harness's own spinners (2.2 on an idle host), so a recorded other-process load is what is judged."""
    idle = {"cpu_count": 2, "load_average_at_start": [2.2, 1.0, 0.5], "other_load_cores": 0.04}
    busy = {**idle, "other_load_cores": 0.9}
    assert "(host idle)" in writer._host_load(idle) and "pessimistic" not in writer._host_load(idle)
    assert "pessimistic" in writer._host_load(busy)
    assert "pessimistic" in writer._host_load({"cpu_count": 2, "load_average_at_start": [2.2, 1.0, 0.5]})  # older


def test_the_shipped_profiles_parse():
    for name in ("bench", "all"):
        assert load_profile(name)


def test_an_unimportable_module_and_an_undeclared_artifact_are_reported_not_fatal(tmp_path, monkeypatch):
    def broken_modules(errors=None):
        errors.append("report/artifacts/fig9.py: SyntaxError: invalid syntax")
        return [_module("odd", "not_an_artifact", lambda r: [
            Comparison("not_an_artifact", "q", "x", "differs", measured=1.0, paper=2.0, reason="r")])]

    monkeypatch.setattr(writer, "modules", broken_modules)
    md, csv = writer.write(tmp_path)
    table = pd.read_csv(csv)
    assert table[table.artifact == "fig9"].reason.str.contains("SyntaxError").all()
    assert table[table.artifact == "not_an_artifact"].status.tolist() == ["differs"]
    assert "does not declare" in md.read_text()
    assert artifacts.modules(errors=[]) == artifacts.modules()  # the shipped modules all import
