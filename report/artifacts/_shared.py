"""What several artifact modules need: reading an experiment's rows, a not_measured row, spreads, the host and
the paper's testbed. The latency and MPC artifacts' own pieces build on these in _latency.py and _mpc.py.

Not an artifact module (the leading underscore keeps `report.artifacts.modules()` from listing it).
"""
from __future__ import annotations

import os
from collections.abc import Iterable
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


def host() -> str:
    """This host in one phrase: '2-core CPU, no GPU, device and cloud on one host'; a GPU is named as the cloud's
    (protocol.cloud_device=auto puts the cloud on it, the device stays on the CPU)."""
    try:
        import torch  # noqa: PLC0415 - a GPU changes the phrase; the report runs without one

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        gpu = None
    return f"{os.cpu_count()}-core CPU, " + (f"cloud on GPU {gpu}" if gpu else "no GPU") + \
        ", device and cloud on one host"


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
    rows = read_rows(folder)
    if runs and (folder / "runs.parquet").is_file():
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
