"""Summaries of tidy rows, defined once for the runner's aggregate and the paper report: the spread of
repeats (interval) and the tables that compare protocols (latency_table, accuracy_table).

`latency_table` (STIP vs MPC) and `accuracy_table` (the MPC accuracy study) read rows that every protocol wrote
through the runner, no script of their own: STIP measured through the socket transport, MPC by its engine
(or its float64 simulation, source `simulated`), both with the link modelled by the same formula
(protocols/vocabulary.py).
"""
from __future__ import annotations

from collections.abc import Iterable
from math import nan

import pandas as pd

# Every column that says what workload a row measured: a summary never pools rows that differ in any of these
# that exist (`task` and `variant` come from the runs table).
WORKLOAD_KEYS = ["model", "seq_len", "batch_size", "network", "bandwidth_bps", "rtt_s", "protocol", "engine", "approx",
                 "security", "task", "variant"]
KEYS = ["model", "seq_len", "batch_size", "network", "protocol", "engine", "approx", "security"]  # in every row


def workload_keys(df: pd.DataFrame) -> list[str]:
    """The workload keys present as columns of `df`, in WORKLOAD_KEYS order."""
    return [k for k in WORKLOAD_KEYS if k in df.columns]


# The one definition of spread in every table and figure: the interquartile range (25th-75th percentile, linear
# interpolation) of the per-repeat values around their median, and the 90th percentile where there are at least
# P90_MIN values (fewer cannot place a p90 above the maximum's neighbour). min-max is kept beside it.
P90_MIN = 10


def interval(values: Iterable[float]) -> dict[str, float]:
    """median, q25, q75 (the IQR), p90 (NaN below P90_MIN values), min, max and n of the finite values."""
    v = pd.Series([float(x) for x in values], dtype="float64").dropna()
    if v.empty:
        return {"median": nan, "q25": nan, "q75": nan, "p90": nan, "min": nan, "max": nan, "n": 0}
    return {"median": float(v.median()), "q25": float(v.quantile(0.25)), "q75": float(v.quantile(0.75)),
            "p90": float(v.quantile(0.9)) if len(v) >= P90_MIN else nan,
            "min": float(v.min()), "max": float(v.max()), "n": int(len(v))}


def interval_frame(df: pd.DataFrame, by: list[str], value: str = "value") -> pd.DataFrame:
    """interval() of `value` per group of `by`, one column per statistic (median, q25, q75, p90, min, max, n)."""
    def p90(v: pd.Series) -> float:
        return float(v.quantile(0.9)) if v.count() >= P90_MIN else nan

    g = df.groupby(by, dropna=False)[value]
    return g.agg(median="median", q25=lambda v: v.quantile(0.25), q75=lambda v: v.quantile(0.75), p90=p90,
                 min="min", max="max", n="count")


def _median(df: pd.DataFrame, phase: str, metric: str, sources: tuple[str, ...], keys: list[str]) -> pd.Series:
    m = df[(df.phase == phase) & (df.metric == metric) & df.source.isin(sources)]
    return m.groupby(keys, dropna=False)["value"].median()


def latency_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Per workload (every WORKLOAD_KEYS column present): modelled end-to-end latency (median, IQR, p90 from 10
    repeats), its compute part, rounds, bytes, max error, and the ratio of each latency to the fastest protocol on
    that network. Phases are summed within one run and one repeat, never across runs (two seeds are two runs).

    Empty when the rows hold no modelled total latency (forward requests only; generation is apart).
    """
    keys = workload_keys(rows)
    fwd = rows[~rows.run_id.isin(rows[rows.phase == "generate"].run_id)]
    total = fwd[(fwd.phase == "total") & (fwd.metric == "latency") & (fwd.source == "modelled")]
    if total.empty:
        return pd.DataFrame()
    spread = interval_frame(total, keys)
    host = fwd[(fwd.metric == "latency") & fwd.source.isin(("host", "socket"))
               & fwd.phase.isin(("device_embed", "device_permute", "cloud_compute", "device_recover"))]
    per_request = host.groupby([*keys, "run_id", "repeat"], dropna=False)["value"].sum()
    socket_compute = per_request.groupby(keys, dropna=False).median()
    compute = _median(fwd, "compute", "latency", ("engine",), keys).combine_first(socket_compute)
    table = pd.DataFrame({
        "latency_modelled_s": spread["median"], "q25_s": spread["q25"], "q75_s": spread["q75"],
        "p90_s": spread["p90"], "repeats": spread["n"],
        "compute_s": compute,
        "rounds": _median(fwd, "total", "rounds", ("socket", "engine"), keys),
        "bytes": _median(fwd, "total", "bytes", ("socket", "engine"), keys),
        "max_abs_error": _median(fwd, "output", "max_abs_error", ("host", "engine"), keys),
    }).reset_index()
    table = table[table.latency_modelled_s.notna()]
    fastest = table.groupby(["model", "seq_len", "batch_size", "network"], dropna=False)["latency_modelled_s"]
    table["over_fastest"] = table.latency_modelled_s / fastest.transform("min")
    for col in ("status", "noisy"):  # marked, never dropped: a diverged or noisy run is still a number to read
        if col in rows:
            marks = rows.groupby(keys, dropna=False)[col].agg(_marks).rename(col)
            table = table.merge(marks.reset_index(), on=keys, how="left")
    return table.sort_values(["model", "seq_len", "network", "latency_modelled_s"]).reset_index(drop=True)


def _marks(values: pd.Series) -> str:
    """The distinct non-empty, not-ok marks of a group's runs ('' when all are ok and clean)."""
    return "; ".join(sorted({str(v) for v in values.dropna() if str(v) not in ("", "ok")}))


def markdown(table: pd.DataFrame) -> str:
    """A markdown rendering of a table (numbers to 4 significant digits)."""
    cols = list(table.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in table.iterrows():
        cells = ["" if pd.isna(v) else (f"{v:.4g}" if isinstance(v, float) else str(v)) for v in r]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


ACCURACY = ["cosine_similarity", "top1_agreement", "max_abs_error", "diverged_fraction"]


def accuracy_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Per workload (every WORKLOAD_KEYS column present) and source: the accuracy metrics of protocols.accuracy,
    one column each (median over repeats); `source` tells an engine's numbers from a simulation's.

    Empty when the rows hold no accuracy at phase `output`.
    """
    acc = rows[(rows.phase == "output") & rows.metric.isin(ACCURACY)]
    if acc.empty:
        return pd.DataFrame()
    keys = [*workload_keys(acc), "source"]
    table = acc.pivot_table(index=keys, columns="metric", values="value", aggfunc="median", dropna=False)
    table = table.dropna(how="all").reindex(columns=[m for m in ACCURACY if m in table.columns])
    table.columns.name = None
    return table.reset_index().sort_values(keys, na_position="first").reset_index(drop=True)
