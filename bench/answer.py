"""The answer, printed: one line per run, one table per (model, sequence length, batch) per sweep.

Every number is a median over the rows a run wrote; the spread is max/min of a run's total latency over its
repeats (and over runs of the same key), flagged when above `NOISY` so a noisy host is never silent.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from bench.results import ROWS, RunReport, git_sha
from protocols.vocabulary import MPC_PHASES, STIP_PHASES

NOISY = 1.5  # max/min of the repeats above which a latency is flagged as noisy
GROUP = ["model", "seq_len", "batch_size"]  # never pool different models, lengths or batches
TOTAL_SOURCES = ("socket", "engine", "host", "modelled")  # the measured total first, the modelled one last
ORDER = [*STIP_PHASES, *MPC_PHASES]  # phases in the order a request goes through them
SKIP_PHASES = {"total", "compute", "output", "generate", "embeddings", "parameters"}


def _seconds(v: float) -> str:
    """A latency with a unit a reader takes in at a glance."""
    return f"{v * 1e3:.3g} ms" if v < 1 else f"{v:.3g} s"


def _bytes(v: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if v >= scale:
            return f"{v / scale:.3g} {unit}"
    return f"{v:.0f} B"


def _short(sha: str | None) -> str:
    """A git sha as people quote it (10 digits, the -dirty mark kept)."""
    return "unknown" if not sha else sha[:10] + ("-dirty" if sha.endswith("-dirty") else "")


def _total(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows of the run's end-to-end latency per repeat: phase total (or generate), best source first."""
    lat = rows[rows.metric == "latency"]
    for phase in ("total", "generate"):
        for source in TOTAL_SOURCES:
            m = lat[(lat.phase == phase) & (lat.source == source)]
            if len(m):
                return m
    return lat.iloc[0:0]


def _median(rows: pd.DataFrame, phase: str, metric: str) -> float | None:
    m = rows[(rows.phase == phase) & (rows.metric == metric)]
    return float(m["value"].median()) if len(m) else None


def run_line(report: RunReport, run_dir: Path) -> str:
    """One line: protocol, model, network: total latency with its phases, bytes up/down, accuracy, run folder."""
    cfg = report.config
    what = " · ".join(str((cfg.get(k) or {}).get("name")) for k in ("protocol", "model", "network"))
    work = cfg.get("run") or {}
    what += f" (seq {work.get('seq_len')}, batch {work.get('batch_size')}, {work.get('task')})"
    if report.status != "ok":
        return f"FAILED {what}: {report.error} · {run_dir}"
    if report.skipped:  # found done: say from which code it came, so an old result is never taken for a new one
        then, now = report.provenance.get("git_sha"), git_sha()
        age = "this commit" if then == now and then and not then.endswith("-dirty") else \
            f"commit {_short(then)}, now {_short(now)}"
        what = f"REUSED ({age}; force=true redoes it) {what}"
    rows = pd.read_parquet(run_dir / ROWS)
    if (cfg.get("model") or {}).get("name") is None and len(rows):  # model=local: named from its folder
        what = what.replace(" · None · ", f" · {rows.model.iloc[0]} · ", 1)
    parts = [what + ":"]
    total = _total(rows)
    if len(total):
        t = total["value"]
        phases = rows[(rows.metric == "latency") & ~rows.phase.isin(SKIP_PHASES) & (rows.source != "modelled")]
        medians = phases.groupby("phase", sort=False)["value"].median()
        medians = medians.reindex(sorted(medians.index, key=lambda p: ORDER.index(p) if p in ORDER else len(ORDER)))
        steps = ", ".join(f"{p} {_seconds(v)}" for p, v in medians.items())
        spread = f", max/min {t.max() / t.min():.2f} over {len(t)} repeats" if len(t) > 1 and t.min() > 0 else ""
        warn = " [NOISY]" if len(t) > 1 and t.min() > 0 and t.max() / t.min() > NOISY else ""
        parts.append(f"{_seconds(float(t.median()))} total{warn}" + (f" ({steps}{spread})" if steps or spread else ""))
    up, down = _median(rows, "uplink", "bytes"), _median(rows, "downlink", "bytes")
    if up is not None or down is not None:
        parts.append(f"· up {_bytes(up or 0)} / down {_bytes(down or 0)}")
    elif (b := _median(rows, "total", "bytes")) is not None:
        parts.append(f"· {_bytes(b)} sent")
    top1, err = _median(rows, "output", "top1_agreement"), _median(rows, "output", "max_abs_error")
    if top1 is not None or err is not None:
        acc = [f"top-1 {top1:.1%}" if top1 is not None else "", f"max|err| {err:.2g}" if err is not None else ""]
        parts.append("· " + ", ".join(a for a in acc if a))
    parts.append(f"· {run_dir}")
    return " ".join(parts)


def summary_frame(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (model, seq_len, batch, protocol, network): runs, median total latency, its min/max and spread, bytes,
    top-1 agreement. Rows are the tidy rows of many runs."""
    records = []
    keys = GROUP + ["protocol", "network"]
    for key, g in rows.groupby(keys, dropna=False, sort=True):
        totals = pd.concat([_total(r) for _, r in g.groupby("run_id")], ignore_index=True)
        t = totals["value"]
        rec = dict(zip(keys, key))
        rec.update({
            "runs": g.run_id.nunique(), "repeats": len(t),
            "latency_s": float(t.median()) if len(t) else None,
            "min_s": float(t.min()) if len(t) else None, "max_s": float(t.max()) if len(t) else None,
            "uplink_B": _median(g, "uplink", "bytes"), "downlink_B": _median(g, "downlink", "bytes"),
            "bytes_B": _median(g, "total", "bytes"), "top1": _median(g, "output", "top1_agreement"),
        })
        rec["spread"] = rec["max_s"] / rec["min_s"] if len(t) > 1 and rec["min_s"] else None
        records.append(rec)
    return pd.DataFrame.from_records(records)


def print_answer(rows: pd.DataFrame, failed: list[str], title: str, console: Console | None = None) -> None:
    """Print one rich table per (model, seq_len, batch), a warning per noisy line and the failed runs by name."""
    console = console or Console(width=140)
    table = summary_frame(rows) if len(rows) else pd.DataFrame()
    noisy = []
    for key, g in (table.groupby(GROUP, sort=True) if len(table) else []):
        t = Table(title=f"{title}: {key[0]} · seq {key[1]} · batch {key[2]}", title_justify="left")
        for col in ("protocol", "network", "runs×repeats", "latency (median)", "min – max", "max/min",
                    "up / down", "top-1"):
            t.add_column(col, justify="left" if col in ("protocol", "network") else "right")
        for _, r in g.iterrows():
            loud = r.spread is not None and pd.notna(r.spread) and r.spread > NOISY
            if loud:
                noisy.append(f"{r.protocol} · {key[0]} · {r.network}: max/min {r.spread:.2f}")
            has_lat = pd.notna(r.latency_s)
            bytes_cell = (f"{_bytes(r.uplink_B or 0)} / {_bytes(r.downlink_B or 0)}"
                          if pd.notna(r.uplink_B) or pd.notna(r.downlink_B)
                          else (_bytes(r.bytes_B) if pd.notna(r.bytes_B) else "–"))
            t.add_row(
                str(r.protocol), str(r.network), f"{r.runs}×{r.repeats // max(r.runs, 1)}",
                _seconds(r.latency_s) if has_lat else "–",
                f"{_seconds(r.min_s)} – {_seconds(r.max_s)}" if has_lat else "–",
                ("[bold red]" if loud else "") + (f"{r.spread:.2f}" if pd.notna(r.spread) else "–"),
                bytes_cell, f"{r.top1:.1%}" if pd.notna(r.top1) else "–")
        console.print(t)
    for n in noisy:
        console.print(f"[yellow]WARNING noisy latency (> {NOISY} max/min over repeats): {n}; "
                      "run more repeats (run.repeats=) or on a quiet host[/yellow]", soft_wrap=True)
    if failed:
        console.print(f"[bold red]{len(failed)} run(s) failed:[/bold red]")
        for f in failed:
            console.print(f"  {f}", markup=False)
    elif not len(table):
        console.print(f"{title}: no rows")


def sweep_runs(sweep_dir: Path) -> tuple[pd.DataFrame, list[str]]:
    """The rows of every job of a Hydra sweep folder (via each job's run_dir.txt) and the failed runs, named."""
    frames, failed = [], []
    for job in sorted((p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)):
        pointer = job / RUN_POINTER
        if not pointer.exists():
            failed.append(f"job {job.name}: ended before its run was recorded (see {job})")
            continue
        run_dir = Path(pointer.read_text().strip())
        report = RunReport.from_json(run_dir)
        if report is None or report.status != "ok":
            failed.append(run_line(report, run_dir) if report else f"job {job.name}: no report in {run_dir}")
        elif (run_dir / ROWS).exists():
            frames.append(pd.read_parquet(run_dir / ROWS))
    return (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()), failed


RUN_POINTER = "run_dir.txt"  # written into each Hydra job folder: where that job's run folder is
