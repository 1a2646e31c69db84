"""What the MPC artifact modules (fig2, mpc_reported) share beyond _shared.py: an experiment's rows with the MPC
run columns, one line per MPC or STIP run configuration (median and range over repeats, a check that bytes and
rounds are deterministic), and the modelled latency of a configuration on another link.

Not an artifact module (the leading underscore keeps `report.artifacts.modules()` from listing it).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from protocols.catalog import shipped_network
from report.artifacts._shared import experiment_rows
from transport.link import NetworkProfile

GROUP = ["experiment", "model", "n_params", "seq_len", "batch_size", "protocol", "engine", "mpc_protocol", "approx",
         "embedding", "security", "network", "task"]


def network(name: str) -> NetworkProfile:
    """A network profile of configs/network/ by name (lan, wan, puma_lan, ...)."""
    return shipped_network(name)


def mpc_rows(results: Path, experiment: str) -> pd.DataFrame | None:
    """results/<experiment>/rows.parquet joined with its runs.csv (task, protocol.mpc_protocol, ...) and the engine,
    mpc_protocol, approx and security columns filled for every protocol; None if not run."""
    rows = experiment_rows(results, experiment)
    if rows is None:
        return None
    runs_path = Path(results) / experiment / "runs.csv"
    runs = pd.read_csv(runs_path) if runs_path.is_file() else pd.DataFrame({"run_id": rows.run_id.unique()})
    keep = ["run_id"] + [c for c in ("task", "protocol.engine", "protocol.mpc_protocol", "protocol.embedding")
                         if c in runs]
    rows = rows.merge(runs[keep].drop_duplicates("run_id"), on="run_id", how="left")
    if "task" not in rows:
        rows["task"] = "forward"
    engine = rows["engine"].astype(object)  # rows written before the column: the run's config, else CrypTen
    if "protocol.engine" in rows:
        engine = engine.where(engine.notna(), rows["protocol.engine"])
    rows["engine"] = engine.where(engine.notna(), rows.protocol.map({"mpc": "crypten"})).fillna("")
    mpc_proto = rows["protocol.mpc_protocol"] if "protocol.mpc_protocol" in rows else pd.Series(pd.NA, index=rows.index)
    rows["mpc_protocol"] = mpc_proto.where(mpc_proto.notna(), rows.engine.map({"crypten": "beaver-tfp"})).fillna("")
    embedding = rows["protocol.embedding"] if "protocol.embedding" in rows else pd.Series(pd.NA, index=rows.index)
    rows["embedding"] = embedding.where(embedding.notna(), rows.protocol.map({"mpc": "mpc"})).fillna("")
    for col in ("approx", "security"):
        if col not in rows:
            rows[col] = ""
        rows[col] = rows[col].fillna("")
    return rows


def _values(g: pd.DataFrame, phase: str, metric: str, sources: tuple[str, ...]) -> pd.Series:
    sel = g[(g.phase == phase) & (g.metric == metric) & g.source.isin(sources)]
    return sel.sort_values("repeat").value


def summarise(rows: pd.DataFrame) -> pd.DataFrame:
    """One line per run configuration: compute (engine) and modelled end-to-end latency as median/min/max/n and
    their per-repeat values (compute_values_s, modelled_values_s: for _shared.spread), bytes, rounds and weight
    re-opening bytes (median), and whether bytes and rounds are equal in every repeat."""
    out = []
    for key, g in rows.groupby(GROUP, dropna=False, sort=True):
        end = "generate" if (g.phase == "generate").any() else "total"
        rec = dict(zip(GROUP, key))
        compute = _values(g, "compute", "latency", ("engine",))
        if compute.empty:  # socket protocols: the request's time without the link is not one row; use the socket total
            compute = _values(g, end, "latency", ("socket",))
        modelled = _values(g, end, "latency", ("modelled",))
        n_bytes = _values(g, end, "bytes", ("engine", "socket"))
        rounds = _values(g, end, "rounds", ("engine", "socket"))
        weight = _values(g, "weight_open", "bytes", ("engine",))
        top1 = _values(g, "output", "top1_agreement", ("engine", "host", "socket"))
        rec.update({
            "repeats": int(len(modelled)),
            "compute_s": compute.median(), "compute_min_s": compute.min(), "compute_max_s": compute.max(),
            "modelled_s": modelled.median(), "modelled_min_s": modelled.min(), "modelled_max_s": modelled.max(),
            "compute_values_s": tuple(compute), "modelled_values_s": tuple(modelled),
            "bytes": n_bytes.median(), "rounds": rounds.median(),
            "weight_open_bytes": weight.median() if not weight.empty else float("nan"),
            "deterministic": bool(n_bytes.nunique() <= 1 and rounds.nunique() <= 1),
            "top1_agreement": top1.median() if not top1.empty else float("nan"),
            "parties": 3 if str(rec["security"]).startswith("3pc") else 2,
        })
        out.append(rec)
    return pd.DataFrame(out)


def modelled(compute_s: float, rounds: float, n_bytes: float, profile: NetworkProfile, parties: int = 2) -> float:
    """The vocabulary's modelled latency on another link: compute + rounds x RTT + (bytes / parties) / bandwidth
    (each party's link carries its own sends concurrently, as the engines' own `modelled` rows)."""
    return float(compute_s + profile.time(rounds, n_bytes / parties))

