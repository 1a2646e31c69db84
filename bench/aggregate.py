"""Collect every finished run's rows into results/<experiment>/rows.parquet + rows.csv (and a runs table).

`python -m bench.aggregate [--runs outputs/runs] [--results outputs/results] [--experiment NAME] [--plots]`
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import pandas as pd

from bench.console_answer import print_answer
from bench.results import (
    FINISHED,
    REPORT,
    RunReport,
    atomic_write_bytes,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_parquet,
    safe_name,
)
from bench.runs_table import join_runs, run_record, runs_frame
from protocols.results_schema import ROWS, typed
from protocols.summaries import accuracy_table, latency_table, markdown, workload_keys
from transport.link import NetworkProfile

log = logging.getLogger(__name__)



def collect(runs_root: Path, experiment: str | None = None,
            unreadable: list[Path] | None = None) -> tuple[dict[str, pd.DataFrame], dict[str, pd.DataFrame]]:
    """Rows of ok and diverged runs and the runs table, per experiment; unreadable files (damaged or wrong-typed
    reports, torn or wrong-schema rows) are skipped, logged, listed as status `unreadable` in the runs table and
    appended to `unreadable` (one damaged run folder never stops the others)."""
    if experiment is not None and not safe_name(experiment):
        raise ValueError(f"--experiment {experiment!r} must be one folder name (no '/' or '..'), e.g. quick")
    rows: dict[str, list[pd.DataFrame]] = {}
    runs: dict[str, list[dict]] = {}
    skipped = unreadable if unreadable is not None else []
    for report_path in sorted(runs_root.glob(f"{experiment or '*'}/*/{REPORT}")):
        folder_exp = report_path.parent.parent.name  # a real folder under runs_root: one path component
        try:
            report = RunReport.read(report_path.parent)
            record = run_record(report)
        except Exception as e:  # noqa: BLE001 - any damage (UnreadableReport, OSError, odd nested types) skips it
            log.warning("skipping unreadable %s (%s); rerun that run to redo it", report_path, e)
            skipped.append(report_path)
            runs.setdefault(folder_exp, []).append(run_record(RunReport(
                run_id=report_path.parent.name, experiment=folder_exp, config={}, status="unreadable",
                error=f"{REPORT} unreadable: {e}")))
            continue
        exp = report.experiment  # RunReport.read checked it is one safe folder name
        rows_path = report_path.parent / ROWS
        if report.status in FINISHED and rows_path.exists():
            try:
                df = typed(pd.read_parquet(rows_path))  # typed inside the guard: wrong-schema rows skip this file
                rows.setdefault(exp, []).append(df)
            except Exception as e:  # noqa: BLE001 - pyarrow and pandas raise several types for damaged files
                log.warning("skipping unreadable %s (%s: %s); rerun with force=true to redo it",
                            rows_path, type(e).__name__, e)
                skipped.append(rows_path)
                record.update(status="unreadable", error=f"{ROWS} unreadable: {type(e).__name__}: {e}")
        runs.setdefault(exp, []).append(record)
    if skipped:
        log.warning("%d unreadable file(s) skipped:\n  %s", len(skipped), "\n  ".join(map(str, skipped)))
    tables = {e: typed(pd.concat(dfs, ignore_index=True)) for e, dfs in rows.items()}
    run_tables = {e: runs_frame(r) for e, r in runs.items()}
    return tables, run_tables


def output_folder(results: Path, experiment: str) -> Path:
    """results/<experiment>, refused unless it stays inside `results` (names come from files on disk)."""
    out = (results / experiment).resolve()
    if not safe_name(experiment) or out.parent != results.resolve():
        raise ValueError(f"experiment {experiment!r} would write outside {results}; not written")
    return results / experiment


def _med(df: pd.DataFrame, **eq: object) -> float | None:
    """Median value of the rows matching every column == value (None when none match)."""
    m = df
    for k, v in eq.items():
        m = m[m[k] == v]
    return float(m["value"].median()) if len(m) else None


def _return_label(g: pd.DataFrame) -> pd.Series:
    """return_full / return_topk<k> from the runs' protocol parameters (generation)."""
    mode = g.get("protocol.return_mode", pd.Series("full", index=g.index)).fillna("full")
    k = g.get("protocol.top_k", pd.Series(0, index=g.index)).fillna(0).astype(int).astype(str)
    return ("return_" + mode).where(mode != "topk", "return_topk" + k)


def headline(df: pd.DataFrame) -> dict:
    """Headline numbers from rows joined with the runs table (medians over repeats; measured, not modelled)."""
    out: dict = {}
    df = df[df.source.isin(["socket", "host", "engine"])]
    fwd = df[~df.run_id.isin(df[df.phase == "generate"].run_id)]
    refs = df["reference_protocol"].dropna().unique() if "reference_protocol" in df else []
    ref = str(refs[0]) if len(refs) == 1 else None  # the run config's efficiency reference
    others = sorted(p for p in fwd.protocol.dropna().unique() if p != ref) if ref else []
    # Never pool different workloads: one ratio per (model, seq_len, batch, network) and per configuration of each
    # protocol (approx, engine, security, task, variant: _configs), never over all networks (a link is a workload key).
    for (model, seq_len, batch, net), g in fwd.groupby(["model", "seq_len", "batch_size", "network"], sort=True):
        key = f"{model},seq{seq_len},batch{batch},{net}"
        for ref_label, ref_rows in _configs(g, ref):
            f = _med(ref_rows, phase="cloud_compute", metric="latency")
            for p in others:
                for label, rows in _configs(g, p):
                    s = _med(rows, phase="cloud_compute", metric="latency")
                    if s and f:
                        name = p + (f"[{label}]" if label else "") + "_over_" + ref + (f"[{ref_label}]" if ref_label
                                                                                        else "")
                        out[f"cloud_compute_ratio_{name}[{key}]"] = {f"{p}_s": s, f"{ref}_s": f, "ratio": s / f}
    gen_all = df[df.run_id.isin(df[df.phase == "generate"].run_id)]
    for p in sorted(gen_all.protocol.dropna().unique()):
        out.update(_generation_headline(p, gen_all[gen_all.protocol == p]))
    return rounded(out)


def _configs(df: pd.DataFrame, protocol: str | None) -> list[tuple[str, pd.DataFrame]]:
    """The rows of `protocol` split by every other workload key that varies among them: (label, rows) per
    configuration, label '' when the protocol ran one configuration ('approx=puma,variant=return_mode=topk')."""
    rows = df[df.protocol == protocol]
    fixed = ("model", "seq_len", "batch_size", "network", "bandwidth_bps", "rtt_s", "protocol")
    keys = [k for k in workload_keys(rows) if k not in fixed]
    keys = [k for k in keys if rows[k].astype(str).nunique(dropna=False) > 1]
    if not keys:
        return [("", rows)] if len(rows) else []
    return [(",".join(f"{k}={v}" for k, v in zip(keys, vals)), g)
            for vals, g in rows.groupby(keys, dropna=False, sort=True)]


def rounded(obj: object, digits: int = 4) -> object:
    """Floats to `digits` significant digits (a headline is read, not recomputed: the rows keep full precision)."""
    if isinstance(obj, dict):
        return {k: rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, float):
        return float(f"{obj:.{digits}g}")
    return obj


def _generation_headline(protocol: str, gen: pd.DataFrame) -> dict:
    """Per-token link cost (against the run with no link) and the top-k downlink saving of one protocol."""
    out: dict = {}
    gen = gen.assign(mode=_return_label(gen))
    for approx in sorted(gen["mode"].dropna().unique()):
        g = gen[gen["mode"] == approx]
        base = _med(g, network="none", phase="per_token", metric="latency")
        for net in sorted(set(g.network.dropna()) - {"none"}):
            per_token = _med(g, network=net, phase="per_token", metric="latency")
            if base is None or per_token is None:
                continue
            prof = g[g.network == net].iloc[0]
            n_bytes = (_med(g, network=net, phase="uplink", metric="bytes") or 0) + (
                _med(g, network=net, phase="downlink", metric="bytes") or 0)
            bandwidth = None if pd.isna(prof["bandwidth_bps"]) else float(prof["bandwidth_bps"])
            physical = NetworkProfile(str(net), bandwidth, float(prof["rtt_s"])).time(1, n_bytes)
            # Link time measured inside the same run (uplink + downlink per token): immune to compute drift
            # between runs; the difference to the no-link run is reported too.
            link = (_med(g, network=net, phase="uplink", metric="latency") or 0) + (
                _med(g, network=net, phase="downlink", metric="latency") or 0)
            out[f"{protocol}_extra_per_token[{net},{approx}]"] = {
                "per_token_s": per_token, "per_token_no_link_s": base, "extra_vs_no_link_run_s": per_token - base,
                "link_time_measured_s": link, "link_physical_cost_s": physical,
                "link_measured_over_physical": link / physical,
                "extra_vs_no_link_over_physical": (per_token - base) / physical,
                "bytes_per_token": n_bytes, "rtt_s": float(prof["rtt_s"]), "bandwidth_bps": bandwidth,
            }
    full = gen[gen["mode"] == "return_full"]
    for approx in sorted(a for a in gen["mode"].dropna().unique() if str(a).startswith("return_topk")):
        t = gen[gen["mode"] == approx]
        for net in sorted(set(t.network.dropna()) & set(full.network.dropna())):
            d_full = _med(full, network=net, phase="downlink", metric="bytes")
            d_topk = _med(t, network=net, phase="downlink", metric="bytes")
            if d_full and d_topk is not None:
                out[f"{protocol}_topk_downlink_saving[{net},{approx}]"] = {
                    "downlink_bytes_per_token_full": d_full, "downlink_bytes_per_token_topk": d_topk,
                    "saved_bytes_per_token": d_full - d_topk, "saving_fraction": 1 - d_topk / d_full,
                    "model": ",".join(sorted(t.model.dropna().unique())),
                }
    return out


def aggregate(runs_root: Path, results: Path, experiment: str | None = None, plots: bool = False) -> list[Path]:
    """Write the per-experiment tables (atomically); optionally draw the figures. Returns folders written."""
    tables, run_tables = collect(runs_root, experiment)
    written = []
    for exp, runs in run_tables.items():
        out = output_folder(results, exp)
        df = tables.get(exp, typed(pd.DataFrame()))
        atomic_write_parquet(out / "rows.parquet", df)
        atomic_write_csv(out / "rows.csv", df)
        atomic_write_csv(out / "runs.csv", runs)
        n_failed = int((~runs["status"].isin(FINISHED)).sum())
        log.info("%s: %d rows from %d runs (%d not ok) -> %s", exp, len(df), len(runs), n_failed, out)
        atomic_write_parquet(out / "runs.parquet", runs)
        joined = join_runs(df, runs)
        summary = headline(joined) if not df.empty else {}
        writers = {
            "latency_table": (latency_table, "modelled end-to-end latency per request",
                              "latency = measured compute + rounds x RTT + bytes / bandwidth of the run's network "
                              "(protocols/vocabulary.py), median over every repeat of the workload's runs; q25_s-q75_s:"
                              " its IQR, p90_s from 10 repeats (protocols.summaries.interval); compute_s: "
                              "phases summed within one run and repeat; over_fastest = latency / the fastest "
                              "protocol's on that network; status/noisy: marks of the workload's runs "
                              "(diverged, noisy host)."),
            "accuracy_table": (accuracy_table, "accuracy against the plaintext model",
                               "Definitions in protocols/accuracy.py (counted positions: attention mask 1); source "
                               "`engine`: the protocol's real output, `simulated`: the float64 simulation of the "
                               "same approximations."),
        }
        for name, (build, title, explanation) in writers.items():
            table = build(joined) if not df.empty else pd.DataFrame()
            if not table.empty:
                atomic_write_csv(out / f"{name}.csv", table)
                atomic_write_bytes(out / f"{name}.md", (
                    f"# {exp}: {title} (`python -m bench.aggregate`)\n\n{explanation}\n\n" + markdown(table)).encode())
        if summary:
            atomic_write_json(out / "summary.json", summary)
            log.info("%s headline numbers (%s):\n%s", exp, out / "summary.json", json.dumps(summary, indent=2))
        failed = [f"FAILED {r.protocol} · {r.model} · {r.network}: {r.error} · run {r.run_id}"
                  for r in runs.itertuples() if r.status not in FINISHED]
        print_answer(joined, failed, title=exp)
        if plots and not df.empty:
            from bench.plots import plot_experiment  # noqa: PLC0415 - matplotlib only when figures are asked for

            plot_experiment(joined, out)
        written.append(out)
    if not written:
        log.warning("no runs under %s", runs_root)
    return written


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runs", default="outputs/runs", help="root of the per-run folders")
    p.add_argument("--results", default="outputs/results",
                   help="where the tables go (`make bench` passes --results results: the committed reference)")
    p.add_argument("--experiment", default=None, help="only this experiment")
    p.add_argument("--plots", action="store_true", help="also draw each experiment's figures")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for out in aggregate(Path(args.runs), Path(args.results), args.experiment, args.plots):
        print(out)


if __name__ == "__main__":
    main()
