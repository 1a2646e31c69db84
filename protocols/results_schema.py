"""The results schema both the runner and the paper report read: the tidy rows' columns and dtypes, the rows
file's name, and how rows are read back and joined with the runs table (results/<experiment>/).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

ROWS = "rows.parquet"  # a run's rows and an experiment's aggregated rows
COLUMNS = [
    "run_id", "experiment", "protocol", "approx", "security", "engine", "model", "n_params", "network", "bandwidth_bps",
    "rtt_s", "batch_size", "seq_len", "phase", "metric", "source", "value", "unit", "seed", "repeat",
]
DTYPES = {
    "run_id": "string", "experiment": "string", "protocol": "string", "approx": "string", "security": "string",
    "engine": "string",
    "model": "string", "n_params": "Int64", "network": "string", "bandwidth_bps": "float64",
    "rtt_s": "float64", "batch_size": "Int64",
    "seq_len": "Int64", "phase": "string", "metric": "string", "source": "string", "value": "float64",
    "unit": "string", "seed": "Int64", "repeat": "Int64",
}


def typed(df: pd.DataFrame) -> pd.DataFrame:
    """Cast to the schema's dtypes so every rows.parquet concatenates cleanly."""
    for col in COLUMNS:
        if col not in df:
            df[col] = None
    return df[COLUMNS].astype(DTYPES)


def with_runs(rows: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Rows with the runs table's link and protocol-parameter columns (bandwidth_bps, rtt_s, protocol.*)."""
    cols = ["run_id"] + [c for c in runs.columns
                         if c in ("bandwidth_bps", "rtt_s", "reference_protocol") or c.startswith("protocol.")]
    shared = [c for c in cols[1:] if c in rows.columns]  # the rows' own link columns: kept, gaps filled from runs
    out = rows.merge(runs[cols].drop_duplicates("run_id"), on="run_id", how="left", suffixes=("", "@runs"))
    for col in shared:
        out[col] = out[col].fillna(out.pop(f"{col}@runs").astype(out[col].dtype))
    return out


def read_rows(folder: Path) -> pd.DataFrame:
    """The tidy rows `python -m bench.aggregate` wrote into `folder` (results/<experiment>/rows.parquet)."""
    rows = pd.read_parquet(Path(folder) / ROWS)
    if "source" not in rows:
        raise ValueError(f"{folder}/{ROWS} predates the `source` column (phase suffixes _modelled/_expected); "
                         "regenerate it: make bench, or python -m bench.aggregate over its runs")
    return typed(rows)  # columns added since (e.g. `security`) read as missing
