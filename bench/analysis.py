"""Analysis over tidy rows joined with the runs table: tables that compare protocols by one definition.

`latency_table` (STIP vs MPC) and `accuracy_table` (the MPC accuracy study) read rows that every protocol wrote
through the runner, no script of their own: STIP measured through the socket transport, MPC by its engine
(or its float64 simulation, source `simulated`), both with the link modelled by the same formula
(protocols/vocabulary.py).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench.results import typed


def read_rows(folder: Path) -> pd.DataFrame:
    """The tidy rows `python -m bench.aggregate` wrote into `folder` (results/<experiment>/rows.parquet)."""
    rows = pd.read_parquet(Path(folder) / "rows.parquet")
    if "source" not in rows:
        raise ValueError(f"{folder}/rows.parquet predates the `source` column (phase suffixes _modelled/_expected); "
                         "regenerate it: make bench, or python -m bench.aggregate over its runs")
    return typed(rows)  # columns added since (e.g. `security`) read as missing


KEYS = ["model", "seq_len", "batch_size", "network", "protocol", "engine", "approx", "security"]


def _median(df: pd.DataFrame, phase: str, metric: str, sources: tuple[str, ...]) -> pd.Series:
    m = df[(df.phase == phase) & (df.metric == metric) & df.source.isin(sources)]
    return m.groupby(KEYS, dropna=False)["value"].median()


def latency_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (model, seq_len, batch, network, protocol, engine, approx, security): modelled end-to-end latency, its
    compute part, rounds, bytes, max error, and the ratio of each latency to the fastest protocol on that network.

    Empty when the rows hold no modelled total latency (forward requests only; generation is apart).
    """
    fwd = rows[~rows.run_id.isin(rows[rows.phase == "generate"].run_id)]
    latency = _median(fwd, "total", "latency", ("modelled",))
    if latency.empty:
        return pd.DataFrame()
    host = fwd[(fwd.metric == "latency") & fwd.source.isin(("host", "socket"))
               & fwd.phase.isin(("device_embed", "device_permute", "cloud_compute", "device_recover"))]
    socket_compute = host.groupby(KEYS + ["repeat"], dropna=False)["value"].sum().groupby(KEYS, dropna=False).median()
    compute = _median(fwd, "compute", "latency", ("engine",)).combine_first(socket_compute)
    table = pd.DataFrame({
        "latency_modelled_s": latency,
        "compute_s": compute,
        "rounds": _median(fwd, "total", "rounds", ("socket", "engine")),
        "bytes": _median(fwd, "total", "bytes", ("socket", "engine")),
        "max_abs_error": _median(fwd, "output", "max_abs_error", ("host", "engine")),
    }).reset_index()
    table = table[table.latency_modelled_s.notna()]
    fastest = table.groupby(["model", "seq_len", "batch_size", "network"])["latency_modelled_s"].transform("min")
    table["over_fastest"] = table.latency_modelled_s / fastest
    return table.sort_values(["model", "seq_len", "network", "latency_modelled_s"]).reset_index(drop=True)


def markdown(table: pd.DataFrame) -> str:
    """A markdown rendering of a table (numbers to 4 significant digits)."""
    cols = list(table.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in table.iterrows():
        cells = [f"{v:.4g}" if isinstance(v, float) else ("" if pd.isna(v) else str(v)) for v in r]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


ACCURACY = ["cosine_similarity", "top1_agreement", "max_abs_error", "diverged_fraction"]


def accuracy_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (model, seq_len, batch, protocol, approx, source): the accuracy metrics of protocols.accuracy, one
    column each (median over repeats); `source` tells an engine's numbers from a simulation's.

    Empty when the rows hold no accuracy at phase `output`.
    """
    acc = rows[(rows.phase == "output") & rows.metric.isin(ACCURACY)]
    if acc.empty:
        return pd.DataFrame()
    keys = ["model", "seq_len", "batch_size", "protocol", "approx", "source"]
    table = acc.pivot_table(index=keys, columns="metric", values="value", aggfunc="median", dropna=False)
    table = table.dropna(how="all").reindex(columns=[m for m in ACCURACY if m in table.columns])
    table.columns.name = None
    return table.reset_index().sort_values(keys).reset_index(drop=True)
