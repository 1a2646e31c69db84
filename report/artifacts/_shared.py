"""What several artifact modules need: reading an experiment's rows, a not_measured row, spreads, the host and
the paper's testbed. The latency and MPC artifacts' own pieces build on these in _latency.py and _mpc.py.

Not an artifact module (the leading underscore keeps `report.artifacts.modules()` from listing it).
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import lru_cache
from pathlib import Path

import pandas as pd

from protocols.results_schema import read_rows, with_runs
from protocols.summaries import interval
from report.artifacts import Comparison, paper_value
from report.reported import reported_by_id

# The paper's testbed (Tab. 3, Sec. 7.2; configs/reported/stip_paper.yaml tab3-testbeds): one server, and a device
# per model family, so the words hold for every artifact's `differences` cell whatever model it compares.
PAPER_HOST = ("paper: cloud 4x A100; devices an 8-core Core i7 PC (GPT-2, LLaMA2), an NVIDIA Orin (ViT, LLaVA), "
              "a 4-core Core i5 MacBook (BERT, Mixtral)")


_RESULTS: ContextVar[Path | None] = ContextVar("report_results", default=None)


@contextmanager
def measured_in(results: Path) -> Iterator[None]:
    """Within this block host() names the host that measured `results` (report.writer wraps each artifact's
    compare() in it), so a row's text is a function of the results folder, not of the machine that rebuilds it."""
    token = _RESULTS.set(Path(results))
    try:
        yield
    finally:
        _RESULTS.reset(token)


def _stamp(folder: Path) -> tuple:
    """(name, mtime_ns, size) of every runs.parquet and profile.json under `folder`: the key of what it records."""
    files = [*sorted(folder.glob("*/runs.parquet")), folder / "profile.json"]
    return tuple((str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in files if f.is_file())


@lru_cache(maxsize=8)
def _recorded_cores(folder: Path, stamp: tuple) -> tuple[frozenset[int], frozenset[int]]:
    """(logical core counts, usable core counts) the runs recorded (bench/conditions.py `conditions.cores`), or the
    bench profile's cpu_count (results/profile.json) as logical counts; empty sets when neither is recorded."""
    import pyarrow.parquet as pq  # noqa: PLC0415 - one column, without reading the rest of the runs table

    logical, usable = set(), set()
    for name, _, _ in stamp:
        path = Path(name)
        if path.name == "profile.json":
            count = json.loads(path.read_text()).get("cpu_count")
            if isinstance(count, int):
                logical.add(count)
        elif "conditions.cores" in pq.read_schema(path).names:
            for cores in pq.read_table(path, columns=["conditions.cores"]).column(0).to_pylist():
                rec = json.loads(cores) if isinstance(cores, str) else cores
                if rec:
                    logical.add(int(rec["logical"]))
                    usable.add(int(rec["usable"]))
    return frozenset(logical), frozenset(usable)


def measured_cpu(results: Path) -> str | None:
    """The CPU the runs in `results` recorded ('2-core CPU'), None when nothing there records it."""
    folder = Path(results)
    logical, usable = _recorded_cores(folder, _stamp(folder))
    if not logical:
        return None
    counts = "-".join(str(n) for n in sorted(logical))
    cpu = f"{counts}-core CPU" if len(logical) == 1 else f"{counts}-core CPUs (the runs' hosts differ)"
    if usable and usable != logical:
        cpu += f" ({'-'.join(str(n) for n in sorted(usable))} usable)"
    return cpu


@lru_cache(maxsize=8)
def _recorded_accelerators(folder: Path, stamp: tuple) -> frozenset[str]:
    """What the runs' clouds computed on (bench/conditions.py `conditions.accelerator`), one phrase each: 'cpu' or
    '1x NVIDIA H100 80GB HBM3'; empty when no run records it (runs before it was recorded, MPC runs: no cloud)."""
    import pyarrow.parquet as pq  # noqa: PLC0415 - one column, without reading the rest of the runs table

    seen = set()
    for name, _, _ in stamp:
        path = Path(name)
        if path.name != "runs.parquet" or "conditions.accelerator" not in pq.read_schema(path).names:
            continue
        for cell in pq.read_table(path, columns=["conditions.accelerator"]).column(0).to_pylist():
            rec = json.loads(cell) if isinstance(cell, str) and cell.startswith("{") else cell
            if isinstance(rec, dict):
                names = rec.get("names") or ["unnamed GPU"]
                seen.add(", ".join(f"{names.count(n)}x {n}" for n in dict.fromkeys(names)))
            elif isinstance(rec, str) and rec:
                seen.add(rec)
    return frozenset(seen)


def measured_accelerator(results: Path) -> str:
    """The cloud's accelerator in the runs of `results`, as the cloud processes reported it: 'cloud on 1x NVIDIA H100
    80GB HBM3', 'no GPU (cloud on the CPU)', both where runs differ; 'GPU not recorded' where no run says."""
    folder = Path(results)
    seen = _recorded_accelerators(folder, _stamp(folder))
    gpus = sorted(seen - {"cpu"})
    if not seen:
        return "GPU not recorded"
    if not gpus:
        return "no GPU (cloud on the CPU)"
    where = f"cloud on {' / '.join(gpus)}"
    return where + (" in some runs, on the CPU in others" if "cpu" in seen else "")


def measured_host(results: Path) -> str:
    """The host that measured `results` in one phrase: '2-core CPU, no GPU (cloud on the CPU), device and cloud on one
    host' (the runner puts both halves on the host it runs on); 'host unknown (...)' when nothing records it. Cores
    and the cloud's accelerator come from the runs' conditions (bench/conditions.py); where no run records the
    accelerator (runs from before it was recorded) the phrase says 'GPU not recorded'."""
    cpu = measured_cpu(results)
    if cpu is None:
        return f"host unknown ({results} records no run conditions and no bench profile)"
    return f"{cpu}, {measured_accelerator(results)}, device and cloud on one host"


def measuring_host() -> str | None:
    """For report.style's titles, short: measured_cpu of the results being reported ('host unknown' when they record
    none), and the cloud's GPUs where runs record one ('16-core CPU, cloud on 1x NVIDIA H100'), inside measured_in;
    None outside it."""
    results = _RESULTS.get()
    if results is None:
        return None
    folder = Path(results)
    gpus = sorted(_recorded_accelerators(folder, _stamp(folder)) - {"cpu"})
    return (measured_cpu(results) or "host unknown") + (f", cloud on {' / '.join(gpus)}" if gpus else "")


def host() -> str:
    """The host that measured the results being reported (measured_in); 'host unknown' outside measured_in, where
    no results folder says which machine measured."""
    results = _RESULTS.get()
    if results is None:
        return "host unknown (no results folder given: report.artifacts._shared.measured_in)"
    return measured_host(results)


def host_differences(extra: str = "") -> str:
    """'here: <host>; paper: <testbed>' plus what else differs."""
    return f"here: {host()}; {PAPER_HOST}" + (f"; {extra}" if extra else "")


def experiment_rows(results: Path, experiment: str, runs: bool = False) -> pd.DataFrame | None:
    """results/<experiment>/rows.parquet in today's schema, or None when the experiment has not been run.

    With `runs`, joined with runs.parquet's link and protocol.* columns (protocols.results_schema.with_runs)
    where it exists."""
    folder = Path(results) / experiment
    if not (folder / "rows.parquet").is_file():
        return None
    stamp = tuple((f.stat().st_mtime_ns, f.stat().st_size) if f.is_file() else None
                  for f in (folder / "rows.parquet", folder / "runs.parquet"))
    return _experiment_rows(folder, runs, stamp).copy()  # a copy: callers add columns to what they get


@lru_cache(maxsize=128)
def _experiment_rows(folder: Path, runs: bool, stamp: tuple) -> pd.DataFrame:
    """experiment_rows, read once per file version (`stamp`): the artifacts read the same experiments ~130 times
    in one report (cProfile of `python -m report`)."""
    rows = read_rows(folder)
    if runs and stamp[1] is not None:
        rows = with_runs(rows, pd.read_parquet(folder / "runs.parquet"))
    return rows


def rows_of(results: Path, experiments: Iterable[str]) -> pd.DataFrame:
    """The rows of every experiment in `experiments` that has been run (empty DataFrame when none)."""
    frames = [df for e in experiments if (df := experiment_rows(results, e)) is not None]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def experiments_matching(results: Path, prefix: str) -> list[str]:
    """The experiments in results/ whose name starts with `prefix` and that hold rows (e.g. 'mpc_gpt2')."""
    return sorted(p.parent.name for p in Path(results).glob(f"{prefix}*/rows.parquet"))


def paper_or_none(reported_id: str | None, unit: str) -> float | None:
    """The reported value in `unit`, None for a qualitative entry (value null)."""
    if reported_id is None:
        return None
    entry = reported_by_id().get(reported_id)
    if entry is None:
        raise KeyError(f"reported entry {reported_id!r} is not in configs/reported/*.yaml")
    return None if entry.value is None else paper_value(reported_id, unit)


def not_measured(artifact: str, quantity: str, unit: str, command: str, reported_id: str | None = None,
                 why: str = "") -> Comparison:
    """A row for a quantity whose experiment is not in results/: the paper's value and the command to run."""
    reason = (f"{why}; " if why else "") + f"run `{command}`"
    return Comparison(artifact=artifact, quantity=quantity, unit=unit, status="not_measured",
                      paper=paper_or_none(reported_id, unit), reported_id=reported_id, reason=reason)


def spread(values: Iterable[float], scale: float = 1.0, fmt: str = ".3g", of: str = "") -> str:
    """A spread column: 'median of n[ <of>], IQR a-b[, p90 c], range d-e' over the values x `scale` (the row's
    unit), NaN left out (IQR and p90 as protocols.summaries.interval defines them); 'one repeat' for a single value,
    '' for none."""
    vals = [float(v) * scale for v in values if pd.notna(v)]
    if not vals:
        return ""
    if len(vals) == 1:
        return "one repeat"
    iv = interval(vals)
    p90 = f", p90 {iv['p90']:{fmt}}" if pd.notna(iv["p90"]) else ""
    return (f"median of {iv['n']}{' ' + of if of else ''}, IQR {iv['q25']:{fmt}}-{iv['q75']:{fmt}}{p90}, "
            f"range {iv['min']:{fmt}}-{iv['max']:{fmt}}")


def runner_experiments(results: Path) -> list[str]:
    """Every results/<experiment>/ whose rows.parquet holds the runner's rows (protocol, phase, metric)."""
    import pyarrow.parquet as pq  # noqa: PLC0415 - the schema alone, without reading the rows

    found = []
    for path in sorted(Path(results).glob("*/rows.parquet")):
        if {"protocol", "phase", "metric", "value"} <= set(pq.read_schema(path).names):
            found.append(path.parent.name)
    return found
