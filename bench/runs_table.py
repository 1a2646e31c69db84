"""The runs table (runs.csv): one line per run from its report.json, and the join that gives tidy rows the
run-level columns (status, noisy, task, variant, link, protocol.*) a summary keys or marks on.
"""
from __future__ import annotations

import json

import pandas as pd

from bench.results import RunReport
from protocols.summaries import WORKLOAD_KEYS

# The runs table (runs.csv): one line per run, from its report.json; protocol parameters as protocol.<key>,
# the host's conditions as conditions.<key> (whatever the runner recorded).
RUN_COLUMNS = ["run_id", "experiment", "status", "status_reason", "noisy", "error", "model", "protocol", "network",
               "bandwidth_bps", "rtt_s", "reference_protocol", "task", "measured", "fits_on_host", "n_rows",
               "git_sha", "started", "duration_s"]
PARAM_PREFIX = "protocol."
CONDITION_PREFIX = "conditions."


def _cell(value: object) -> object:
    """A table cell: dicts and lists as JSON, the rest as it is."""
    return json.dumps(value, sort_keys=True, default=str) if isinstance(value, (dict, list)) else value


def run_record(report: RunReport) -> dict:
    """One line of the runs table from a report: what ran, on which link, how it ended, under which conditions."""
    cfg = report.config
    network = cfg.get("network") or {}
    protocol = cfg.get("protocol") or {}
    params = {f"{PARAM_PREFIX}{k}": _cell(v) for k, v in protocol.items() if k not in ("_target_", "name")}
    conditions = {f"{CONDITION_PREFIX}{k}": _cell(v) for k, v in (report.conditions or {}).items()}
    return {
        "run_id": report.run_id, "experiment": report.experiment, "status": report.status,
        "status_reason": report.status_reason, "noisy": "; ".join(map(str, report.noisy or [])),
        "error": report.error, "model": (cfg.get("model") or {}).get("name"), "protocol": protocol.get("name"),
        "network": network.get("name"), "bandwidth_bps": network.get("bandwidth_bps"), "rtt_s": network.get("rtt_s"),
        "reference_protocol": cfg.get("reference_protocol"),
        "task": (cfg.get("run") or {}).get("task"), "measured": report.measured, "fits_on_host": report.fits_on_host,
        "n_rows": report.n_rows, "git_sha": report.provenance.get("git_sha"), "started": report.started,
        "duration_s": report.duration_s, **params, **conditions,
    }


def runs_frame(records: list[dict]) -> pd.DataFrame:
    """The runs table: fixed columns first, then the protocol parameters and conditions that any run has."""
    extra = sorted({k for r in records for k in r} - set(RUN_COLUMNS))
    return pd.DataFrame.from_records(records, columns=RUN_COLUMNS + extra)


def variants(runs: pd.DataFrame) -> pd.Series:
    """Per run_id, the protocol parameters that differ between the runs of the same protocol ('transform=permutation'),
    '' where none does: two arms of a sweep that share a protocol name are told apart by what they set differently.

    Parameters that are workload keys of their own (approx, engine, security) are left to those columns."""
    params = [c for c in runs.columns if c.startswith(PARAM_PREFIX) and c[len(PARAM_PREFIX):] not in WORKLOAD_KEYS]
    label = pd.Series("", index=runs.index, dtype="object")
    for _, g in runs.groupby("protocol", dropna=False):
        differing = [c for c in params if g[c].astype(str).nunique(dropna=False) > 1]
        if differing:
            label.loc[g.index] = g[differing].astype(str).apply(
                lambda r: ",".join(f"{c[len(PARAM_PREFIX):]}={v}" for c, v in r.items()), axis=1)
    return pd.Series(label.to_numpy(), index=runs["run_id"].to_numpy(), name="variant")


def join_runs(rows: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Rows with the run-level columns a summary keys or marks on: status, status_reason, noisy, task, variant,
    the link's values and protocol.* (values the rows already carry are kept, their gaps filled)."""
    runs = runs.drop_duplicates("run_id").reset_index(drop=True)
    extra = runs.assign(variant=variants(runs).to_numpy())
    cols = ["status", "status_reason", "noisy", "task", "variant", "bandwidth_bps", "rtt_s", "reference_protocol"]
    cols = [c for c in cols if c in extra] + [c for c in extra.columns if c.startswith(PARAM_PREFIX)]
    shared = [c for c in cols if c in rows.columns]  # the rows' own values kept, gaps filled from the runs table
    out = rows.merge(extra[["run_id", *cols]], on="run_id", how="left", suffixes=("", "@runs"))
    for col in shared:
        out[col] = out[col].fillna(out.pop(f"{col}@runs").astype(out[col].dtype))
    return out
