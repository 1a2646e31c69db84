"""The analysis notebooks run top to bottom on the committed results, and on what `make bench` writes today.

The committed-results test runs on a frozen copy: `results/` and `notebooks/` as committed at HEAD
(`git archive`), so a local run that rewrote `results/` can neither break nor fake it; outside git, a copy of
the working tree.
"""
import os
import shutil
import subprocess
import sys
import tarfile
from io import BytesIO
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def execute(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert outputs and not any(o.get("output_type") == "error" for o in outputs)


@pytest.fixture(scope="module")
def frozen(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("frozen")
    archive = subprocess.run(["git", "archive", "--format=tar", "HEAD", "results", "notebooks"], cwd=ROOT,
                             capture_output=True)
    if archive.returncode == 0:
        with tarfile.open(fileobj=BytesIO(archive.stdout)) as tar:
            tar.extractall(out, filter="data")
    else:
        for name in ("results", "notebooks"):
            shutil.copytree(ROOT / name, out / name)
    return out


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path, frozen, monkeypatch):
    copy = frozen / "notebooks" / path.name
    if not copy.exists():  # a notebook not committed yet: run it against the committed results
        shutil.copy(path, copy)
    monkeypatch.delenv("STIP_RESULTS", raising=False)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    execute(copy)


@pytest.mark.slow  # about a minute: four runs through the real device/cloud processes
def test_quick_notebook_reads_what_make_bench_writes_now(tmp_path, monkeypatch):
    """The `quick` sweep at toy size (bert-tiny, 2 repeats) through the CLI and the aggregator, as make bench does."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    sweep = [sys.executable, "-m", "bench", "-m", "experiment=quick", "model=bert-tiny", "run.repeats=2",
             "run.warmup=0", "run.seq_len=8", f"output_root={tmp_path / 'runs'}", f"hydra.sweep.dir={tmp_path / 'mr'}"]
    proc = subprocess.run(sweep, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    agg = [sys.executable, "-m", "bench.aggregate", "--runs", str(tmp_path / "runs"), "--results", str(tmp_path)]
    proc = subprocess.run(agg, capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    monkeypatch.setenv("STIP_RESULTS", str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    execute(ROOT / "notebooks" / "analysis_quick.ipynb")


def test_paper_report_notebook_reads_what_bench_report_writes(tmp_path, monkeypatch):
    """The report notebook on a report.csv report.writer wrote (one measured artifact, one module that raises)."""
    import types

    from report import writer
    from report.artifacts import Comparison

    def module(name, artifact, compare):
        mod = types.ModuleType(f"report.artifacts.{name}")
        mod.ARTIFACT, mod.EXPERIMENTS, mod.compare = artifact, (), compare
        return mod

    def broken(results):
        raise RuntimeError("corrupt rows")

    writer.write(tmp_path, [module("ok", "fig7b", lambda r: [
        Comparison("fig7b", "largest model served", "params", "not_reproducible", measured=1.2e8, paper=7e10,
                   reason="host memory")]), module("bad", "fig2", broken)])
    monkeypatch.setenv("STIP_RESULTS", str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    execute(ROOT / "notebooks" / "paper_report.ipynb")
