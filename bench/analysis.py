"""Analysis over tidy rows joined with the runs table: tables that compare protocols by one definition.

`latency_table` is what scripts/mpc_vs_stip.py used to compute by hand, now over rows that every
protocol wrote through the runner: STIP measured through the socket transport, MPC by its engine,
both with the link modelled by the same formula (protocols/vocabulary.py).
"""
from __future__ import annotations

import pandas as pd

KEYS = ["model", "seq_len", "batch_size", "network", "protocol", "approx"]


def _median(df: pd.DataFrame, phase: str, metric: str, sources: tuple[str, ...]) -> pd.Series:
    m = df[(df.phase == phase) & (df.metric == metric) & df.source.isin(sources)]
    return m.groupby(KEYS, dropna=False)["value"].median()


def latency_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (model, seq_len, batch, network, protocol, approx): modelled end-to-end latency, its compute part,
    rounds, bytes, max error, and the ratio of each latency to the fastest protocol on that network.

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
