"""The analysis notebooks run top to bottom on the committed results, and on any results folder set in their
parameter cell (the first code cell, tagged `parameters`, as papermill does).

The committed-results test runs on a frozen copy: `results/` and `notebooks/` as committed at HEAD
(`git archive`), so a local run that rewrote `results/` can neither break nor fake it; outside git, a copy of
the working tree.
"""
import os
import shutil
import subprocess
import sys
import tarfile
import types
from io import BytesIO
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from report import writer
from report.artifacts import Comparison

from helpers.tiny_results import write_tiny_results

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def parameter_cell(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The first code cell, which must be the one tagged `parameters`."""
    first = next(cell for cell in nb.cells if cell.cell_type == "code")
    assert "parameters" in first.get("metadata", {}).get("tags", []), "the first code cell must be tagged parameters"
    return first


def execute(path: Path, checks: str = "", **parameters: object) -> nbformat.NotebookNode:
    """Run the notebook with its parameter cell's values replaced, then `checks` as a last cell; no cell may fail."""
    nb = nbformat.read(path, as_version=4)
    if parameters:
        parameter_cell(nb).source = "\n".join(f"{name} = {value!r}" for name, value in parameters.items())
    if checks:
        nb.cells.append(nbformat.v4.new_code_cell(checks))
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    errors = [f"{o.get('ename')}: {o.get('evalue')}" for o in outputs if o.get("output_type") == "error"]
    assert outputs and not errors, errors
    return nb


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
def test_every_notebook_takes_its_results_folder_as_a_parameter(path):
    nb = nbformat.read(path, as_version=4)
    assert "RESULTS = " in parameter_cell(nb).source
    sources = "\n".join(cell.source for cell in nb.cells)
    assert "results/quick" not in sources and "STIP_RESULTS" not in sources


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes_on_the_committed_results(path, frozen, monkeypatch):
    copy = frozen / "notebooks" / path.name
    shutil.copy(path, copy)  # the working tree's notebook, on the results as committed (its default RESULTS)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    execute(copy)


# Checks run inside the analysis notebook: one table per (experiment, model), each holding one model, and the
# medians of each model's own repeats (pooling the two models, 1000x apart, would change every one of them).
NEVER_POOLED = """
assert set(LATENCY) == {("tiny", "bert-tiny"), ("tiny", "gpt2-124m")}, sorted(LATENCY)
assert all(set(t.model) == {model} for (_, model), t in LATENCY.items())
medians = {m: {p: round(v, 6) for p, v in zip(t.protocol, t.latency_modelled_s)} for (_, m), t in LATENCY.items()}
assert medians == {"bert-tiny": {"full_cloud": 0.009, "stip": 0.011},
                   "gpt2-124m": {"full_cloud": 9.0, "stip": 11.0}}, medians
assert set(PHASES) == set(LATENCY)
"""


def test_analysis_notebook_on_a_results_folder_the_test_writes(tmp_path, monkeypatch):
    """Two models aggregated by bench.aggregate into a fresh folder: every table keeps them apart."""
    results = write_tiny_results(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    execute(ROOT / "notebooks" / "analysis.ipynb", NEVER_POOLED, RESULTS=str(results), EXPERIMENTS=None,
            MAX_FIGURES=2)


def test_analysis_notebook_names_a_folder_without_results(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    with pytest.raises(CellExecutionError, match="no <experiment>/rows.parquet under"):
        execute(ROOT / "notebooks" / "analysis.ipynb", RESULTS=str(tmp_path), EXPERIMENTS=None, MAX_FIGURES=0)


@pytest.mark.slow  # about a minute: four runs through the real device/cloud processes
def test_analysis_notebook_reads_what_make_bench_writes_now(tmp_path, monkeypatch):
    """The `quick` sweep at toy size (bert-tiny, 2 repeats) through the CLI and the aggregator, as make bench does."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    sweep = [sys.executable, "-m", "bench", "-m", "experiment=quick", "model=bert-tiny", "run.repeats=2",
             "run.warmup=0", "run.seq_len=8", f"output_root={tmp_path / 'runs'}", f"hydra.sweep.dir={tmp_path / 'mr'}"]
    proc = subprocess.run(sweep, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    agg = [sys.executable, "-m", "bench.aggregate", "--runs", str(tmp_path / "runs"), "--results", str(tmp_path)]
    proc = subprocess.run(agg, capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    execute(ROOT / "notebooks" / "analysis.ipynb", "assert set(LATENCY) == {('quick', 'bert-tiny')}, sorted(LATENCY)",
            RESULTS=str(tmp_path), EXPERIMENTS=["quick"], MAX_FIGURES=1)


def test_paper_report_notebook_reads_what_bench_report_writes(tmp_path, monkeypatch):
    """The report notebook on a report.csv report.writer wrote (one measured artifact, one module that raises)."""
    def module(name, artifact, compare):
        mod = types.ModuleType(f"report.artifacts.{name}")
        mod.ARTIFACT, mod.EXPERIMENTS, mod.compare = artifact, (), compare
        return mod

    def broken(results):
        raise RuntimeError("corrupt rows")

    writer.write(tmp_path, [module("ok", "fig7b", lambda r: [
        Comparison("fig7b", "largest model served", "params", "not_reproducible", measured=1.2e8, paper=7e10,
                   reason="host memory")]), module("bad", "fig2", broken)])
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    execute(ROOT / "notebooks" / "paper_report.ipynb", RESULTS=str(tmp_path))
