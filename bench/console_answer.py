"""The answer, printed: one line per run, one table per (model, sequence length, batch) per sweep.

Every line says which total it shows: `measured` (source socket, engine or host: through the emulated link or the
engine's own clock) and `modelled` (compute + rounds x RTT + bytes / bandwidth), both where both exist. Spread is the
IQR over repeats (protocols.summaries.interval, the one definition), p90 from 10 repeats, and max/min, flagged above
`NOISY`; a run the runner found `noisy` (report.noisy) or `diverged` (report.status) is marked whatever its spread.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bench.protocol_configs import file_values
from bench.results import FINISHED, RunReport, git_sha
from bench.runs_table import join_runs, run_record, runs_frame
from protocols.paths import config_group
from protocols.results_schema import ROWS, typed
from protocols.summaries import interval, workload_keys
from protocols.vocabulary import MPC_PHASES, STIP_PHASES

NOISY = 1.5  # max/min of the repeats above which a latency is flagged as noisy
GROUP = ["model", "seq_len", "batch_size"]  # never pool different models, lengths or batches
MEASURED = ("socket", "engine", "host")  # sources of a measured total, best first
ORDER = [*STIP_PHASES, *MPC_PHASES]  # phases in the order a request goes through them
SKIP_PHASES = {"total", "compute", "output", "generate", "embeddings", "parameters"}
TIME_METRICS = {"latency", "bytes", "rounds", "messages", "throughput"}  # shown as totals, phases and traffic
ACCURACY = {"top1_agreement", "max_abs_error", "cosine_similarity", "sum_abs_error", "diverged_fraction"}


def _seconds(v: float) -> str:
    """A latency with a unit a reader takes in at a glance."""
    return f"{v * 1e3:.3g} ms" if v < 1 else f"{v:.3g} s"


def _bytes(v: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if v >= scale:
            return f"{v / scale:.3g} {unit}"
    return f"{v:.0f} B"


def _value(v: float, unit: str | None) -> str:
    """A quantity in its own unit: bytes as kB/MB/GB, seconds as ms/s, the rest to 3 significant digits."""
    if unit == "B":
        return _bytes(v)
    if unit == "s":
        return _seconds(v)
    return f"{v:.3g}" + (f" {unit}" if unit and unit not in ("ratio", "1", "count") else "")


def _short(sha: str | None) -> str:
    """A git sha as people quote it (10 digits, the -dirty mark kept)."""
    return "unknown" if not sha else sha[:10] + ("-dirty" if sha.endswith("-dirty") else "")


def _total(rows: pd.DataFrame, sources: tuple[str, ...] = MEASURED) -> pd.DataFrame:
    """Rows of one run's end-to-end latency per repeat (phase total, or generate) from the first of `sources`."""
    lat = rows[rows.metric == "latency"]
    for phase in ("total", "generate"):
        for source in sources:
            m = lat[(lat.phase == phase) & (lat.source == source)]
            if len(m):
                return m
    return lat.iloc[0:0]


def _median(rows: pd.DataFrame, phase: str, metric: str, sources: tuple[str, ...] | None = None) -> float | None:
    m = rows[(rows.phase == phase) & (rows.metric == metric)]
    if sources is not None:
        m = m[m.source.isin(sources)]
    return float(m["value"].median()) if len(m) else None


def _spread(values: pd.Series) -> str:
    """'IQR a – b, p90 c, max/min r over n repeats' ('' for one value)."""
    iv = interval(values)
    if iv["n"] < 2:
        return ""
    parts = [f"IQR {_seconds(iv['q25'])} – {_seconds(iv['q75'])}"]
    if pd.notna(iv["p90"]):
        parts.append(f"p90 {_seconds(iv['p90'])}")
    ratio = f", max/min {iv['max'] / iv['min']:.2f}" if iv["min"] > 0 else ""
    return ", ".join(parts) + f"{ratio} over {iv['n']} repeats"


def _noise(values: pd.Series, reasons: list[str]) -> list[str]:
    """The runner's noisy reasons plus the spread's own (max/min above NOISY)."""
    out = [str(r) for r in reasons]
    if len(values) > 1 and values.min() > 0 and values.max() / values.min() > NOISY:
        out.append(f"max/min {values.max() / values.min():.2f} > {NOISY}")
    return out


def _totals(rows: pd.DataFrame, reasons: list[str]) -> list[str]:
    """'total: measured 47.9 ms (socket; IQR ..) [NOISY: ..], modelled 45.1 ms' (empty when no total)."""
    measured, modelled = _total(rows), _total(rows, ("modelled",))
    main = measured if len(measured) else modelled
    if main.empty:
        return []
    kind = "modelled" if main is modelled else "measured"
    inner = "; ".join(x for x in ((main.source.iloc[0] if kind == "measured" else ""), _spread(main["value"])) if x)
    text = f"total: {kind} {_seconds(float(main['value'].median()))}" + (f" ({inner})" if inner else "")
    noise = _noise(main["value"], reasons)
    if noise:
        text += f" [NOISY: {'; '.join(noise)}]"
    if kind == "measured" and len(modelled):
        text += f", modelled {_seconds(float(modelled['value'].median()))}"
    return [text]


def _phases(rows: pd.DataFrame) -> list[str]:
    """Request phases (STIP, full cloud, ...) and MPC operator classes, labelled as what they are: the steps of the
    measured total, or the engine's compute split by operator class, with the part no class covers."""
    lat = rows[(rows.metric == "latency") & ~rows.phase.isin(SKIP_PHASES) & (rows.source != "modelled")]
    out = []
    steps = lat[~lat.phase.isin(MPC_PHASES)]
    if len(steps):
        med = steps.groupby("phase", sort=False)["value"].median()
        med = med.reindex(sorted(med.index, key=lambda p: ORDER.index(p) if p in ORDER else len(ORDER)))
        src = "/".join(sorted(steps.source.dropna().unique()))
        out.append(f"· phases ({src}, medians): " + ", ".join(f"{p} {_seconds(v)}" for p, v in med.items())
                   + f"; their sum {_seconds(float(med.sum()))}")
    classes = lat[lat.phase.isin(MPC_PHASES)]
    compute = _median(rows, "compute", "latency", ("engine",))
    if compute is not None or len(classes):
        text = f"· compute {_seconds(compute)} (engine)" if compute is not None else "· compute"
        if len(classes):
            per_repeat = classes.groupby(["run_id", "repeat", "phase"])["value"].sum().groupby("phase").median()
            per_repeat = per_repeat.reindex([p for p in MPC_PHASES if p in per_repeat.index])
            text += " by operator class: " + ", ".join(f"{p} {_seconds(v)}" for p, v in per_repeat.items())
            if compute is not None:
                text += f"; outside them {_seconds(max(compute - float(per_repeat.sum()), 0.0))}"
        out.append(text)
    return out


def _traffic(rows: pd.DataFrame) -> list[str]:
    """Bytes (up/down where the protocol has a device-cloud link) and rounds, with their source, for every protocol."""
    parts = []
    up, down = _median(rows, "uplink", "bytes", MEASURED), _median(rows, "downlink", "bytes", MEASURED)
    if up is not None or down is not None:
        parts.append(f"up {_bytes(up or 0)} / down {_bytes(down or 0)}")
    elif (b := _median(rows, "total", "bytes", MEASURED)) is not None:
        parts.append(f"{_bytes(b)} sent")
    rounds = _median(rows, "total", "rounds", MEASURED)
    if rounds is not None:
        parts.append(f"{rounds:.0f} round" + ("" if rounds == 1 else "s"))
    if not parts:
        return []
    srcs = rows[rows.metric.isin(("bytes", "rounds")) & rows.phase.isin(("total", "uplink", "downlink"))
                & rows.source.isin(MEASURED)].source.dropna().unique()
    return ["· " + ", ".join(parts) + (f" ({'/'.join(sorted(srcs))})" if len(srcs) else "")]


def _accuracy(rows: pd.DataFrame) -> list[str]:
    top1, err = _median(rows, "output", "top1_agreement"), _median(rows, "output", "max_abs_error")
    acc = [f"top-1 {top1:.1%}" if top1 is not None else "", f"max|err| {err:.2g}" if err is not None else ""]
    return ["· " + ", ".join(a for a in acc if a)] if top1 is not None or err is not None else []


def quantities(rows: pd.DataFrame) -> str:
    """What rows hold beyond latency, traffic and accuracy (memory, dcor, ...): 'memory: device_embedding 16.5 MB,
    ...; dcor: embeddings 0.12' (medians per metric and phase, '' when none)."""
    other = rows[~rows.metric.isin(TIME_METRICS | ACCURACY)]
    parts = []
    for metric, g in other.groupby("metric", sort=True):
        med = g.groupby(["phase", "unit"], dropna=False, sort=True)["value"].median()
        parts.append(f"{metric}: " + ", ".join(f"{ph} {_value(v, None if pd.isna(u) else str(u))}"
                                               for (ph, u), v in med.items()))
    return "; ".join(parts)


PROTOCOL_CONFIGS = config_group("protocol")


def set_params(protocol: dict) -> str:
    """The protocol parameters a run set away from its config group's file ('transform=permutation'), so that two
    arms of a sweep that share a protocol name read apart in their lines ('' when none, or no such file)."""
    try:
        defaults = file_values(str(protocol.get("name")), PROTOCOL_CONFIGS)
    except (ValueError, ImportError, AttributeError):  # a file whose _target_ does not load: nothing to compare
        return ""
    if defaults is None:
        return ""
    return ",".join(f"{k}={v}" for k, v in protocol.items() if k in defaults and k not in ("_target_", "name")
                    and not isinstance(v, (dict, list)) and defaults[k] != v)


def run_line(report: RunReport, run_dir: Path) -> str:
    """One line: what ran; its total (measured and/or modelled, named), phases, bytes and rounds, accuracy, other
    quantities (memory, dcor), status marks, and the run folder."""
    cfg = report.config
    what = " · ".join(str((cfg.get(k) or {}).get("name")) for k in ("protocol", "model", "network"))
    if params := set_params(cfg.get("protocol") or {}):
        what = what.replace(" · ", f"[{params}] · ", 1)
    work = cfg.get("run") or {}
    what += f" (seq {work.get('seq_len')}, batch {work.get('batch_size')}, {work.get('task')})"
    if report.status not in FINISHED:
        return f"FAILED {what}: {report.error} · {run_dir}"
    if report.skipped:  # found done: say from which code it came, so an old result is never taken for a new one
        then, now = report.provenance.get("git_sha"), git_sha()
        age = "this commit" if then == now and then and not then.endswith("-dirty") else \
            f"commit {_short(then)}, now {_short(now)}"
        what = f"REUSED ({age}; force=true redoes it) {what}"
    if report.status == "diverged":
        what = f"DIVERGED ({report.status_reason or 'no reason recorded'}) {what}"
    rows = pd.read_parquet(run_dir / ROWS)
    if (cfg.get("model") or {}).get("name") is None and len(rows):  # model=local: named from its folder
        what = what.replace(" · None · ", f" · {rows.model.iloc[0]} · ", 1)
    parts = [what + ":"]
    parts += _totals(rows, list(report.noisy or []))
    if len(parts) == 1 and report.noisy:
        parts.append(f"[NOISY: {'; '.join(map(str, report.noisy))}]")
    parts += _phases(rows) + _traffic(rows) + _accuracy(rows)
    if q := quantities(rows):
        parts.append("· " + q)
    parts.append(f"· {run_dir}")
    return " ".join(parts)


def _marks(values: pd.Series) -> str:
    return "; ".join(sorted({str(v) for v in values.dropna() if str(v) not in ("", "ok", "nan")}))


def summary_frame(rows: pd.DataFrame) -> pd.DataFrame:
    """Per workload (every WORKLOAD_KEYS column present: model, seq_len, batch, network, protocol, engine, approx,
    security, task, variant): runs, the total's source, its median, IQR, p90, min/max and spread over every repeat
    of every run (each run's total taken on its own first), the modelled median, bytes, rounds, top-1 agreement,
    other quantities, and status marks (diverged, noisy) where the rows carry them (bench.runs_table.join_runs)."""
    records = []
    keys = workload_keys(rows)
    for key, g in rows.groupby(keys, dropna=False, sort=True):
        per_run = [(_total(r), _total(r, ("modelled",))) for _, r in g.groupby("run_id")]
        measured = [m for m, _ in per_run if len(m)]
        totals = pd.concat(measured or [m for _, m in per_run if len(m)] or [g.iloc[0:0]], ignore_index=True)
        modelled = pd.concat([m for _, m in per_run if len(m)] or [g.iloc[0:0]], ignore_index=True)
        iv = interval(totals["value"])
        rec = dict(zip(keys, key))
        rec.update({
            "runs": g.run_id.nunique(), "repeats": iv["n"],
            "source": "/".join(sorted(totals.source.dropna().unique())) if len(totals) else None,
            "latency_s": iv["median"] if iv["n"] else None, "q25_s": iv["q25"], "q75_s": iv["q75"],
            "p90_s": iv["p90"], "min_s": iv["min"] if iv["n"] else None, "max_s": iv["max"] if iv["n"] else None,
            "modelled_s": float(modelled["value"].median()) if len(modelled) else None,
            "uplink_B": _median(g, "uplink", "bytes", MEASURED),
            "downlink_B": _median(g, "downlink", "bytes", MEASURED),
            "bytes_B": _median(g, "total", "bytes", MEASURED), "rounds": _median(g, "total", "rounds", MEASURED),
            "top1": _median(g, "output", "top1_agreement"), "quantities": quantities(g),
        })
        rec["spread"] = rec["max_s"] / rec["min_s"] if iv["n"] > 1 and rec["min_s"] else None
        status = _marks(g["status"]) if "status" in g else ""
        reason = _marks(g["status_reason"]) if "status_reason" in g else ""
        rec["status"], rec["status_reason"] = status or "ok", reason
        rec["noisy"] = _marks(g["noisy"]) if "noisy" in g else ""
        records.append(rec)
    return pd.DataFrame.from_records(records)


def _label(r: pd.Series) -> str:
    """protocol plus whatever else tells its configuration apart (engine, approx, security, variant)."""
    extra = [str(r[k]) for k in ("engine", "approx", "security", "variant") if k in r and pd.notna(r[k]) and r[k]]
    return str(r.protocol) + (f" [{', '.join(extra)}]" if extra else "")


def _reasons(r: pd.Series) -> list[str]:
    """Why a summary line is marked: its runs' status (diverged: the reason), noisy reasons, a wide spread."""
    out = [str(r.status).upper() + (f" ({r.status_reason})" if r.status_reason else "")] if r.status != "ok" else []
    if r.noisy:
        out.append(f"NOISY host: {r.noisy}")
    if r.spread is not None and pd.notna(r.spread) and r.spread > NOISY:
        out.append(f"noisy latency: max/min {r.spread:.2f} > {NOISY}")
    return out


def _mark(r: pd.Series) -> str:
    """The table's short status cell: DIVERGED in red, NOISY in yellow, ok (the reasons are printed below)."""
    out = []
    if r.status != "ok":
        out.append(f"[bold red]{escape(str(r.status).upper())}[/bold red]")
    if r.noisy or (r.spread is not None and pd.notna(r.spread) and r.spread > NOISY):
        out.append("[yellow]NOISY[/yellow]")
    return " ".join(out) or "ok"


def print_answer(rows: pd.DataFrame, failed: list[str], title: str, console: Console | None = None) -> None:
    """Print one rich table per (model, seq_len, batch) (one table of quantities when no row has a latency), a warning
    per noisy line, diverged runs marked, and the failed runs by name."""
    console = console or Console(width=160)
    table = summary_frame(rows) if len(rows) else pd.DataFrame()
    if len(table) and table.latency_s.isna().all():
        _print_quantities(table, title, console)
        table = table.iloc[0:0]
    noisy = []
    for key, g in (table.groupby(GROUP, sort=True) if len(table) else []):
        t = Table(title=f"{title}: {key[0]} · seq {key[1]} · batch {key[2]}", title_justify="left")
        sources = sorted(set(g.source.dropna()))
        one_source = len(sources) == 1
        cols = ["protocol", "network", "runs×repeats",
                f"latency (median, {sources[0]})" if one_source else "latency (median)"]
        cols += [] if one_source else ["source"]
        cols += ["IQR", "p90", "max/min"]
        show_modelled = g.modelled_s.notna().any() and set(sources) != {"modelled"}
        cols += ["modelled"] if show_modelled else []
        cols += ["bytes · rounds", "top-1"]
        show_q = ((g.quantities != "") & g.latency_s.isna()).any()  # rows that hold no latency show theirs
        cols += ["quantities"] if show_q else []
        cols += ["status"]
        for col in cols:
            t.add_column(col, justify="left" if col in ("protocol", "network", "source", "quantities", "status")
                         else "right")
        for _, r in g.iterrows():
            if reasons := _reasons(r):
                noisy.append(f"{_label(r)} · {key[0]} · {r.network}: " + "; ".join(reasons))
            has = pd.notna(r.latency_s)
            traffic = (f"{_bytes(r.uplink_B or 0)} / {_bytes(r.downlink_B or 0)}"
                       if pd.notna(r.uplink_B) or pd.notna(r.downlink_B)
                       else (_bytes(r.bytes_B) if pd.notna(r.bytes_B) else "–"))
            if pd.notna(r.rounds):
                traffic += f" · {r.rounds:.0f}"
            cells = [escape(_label(r)), str(r.network), f"{r.runs}×{r.repeats // max(r.runs, 1)}",
                     _seconds(r.latency_s) if has else "–"]
            cells += [] if one_source else [str(r.source or "–")]
            cells += [f"{_seconds(r.q25_s)} – {_seconds(r.q75_s)}" if has and r.repeats > 1 else "–",
                      _seconds(r.p90_s) if pd.notna(r.p90_s) else "–",
                      f"{r.spread:.2f}" if pd.notna(r.spread) else "–"]
            cells += [_seconds(r.modelled_s) if pd.notna(r.modelled_s) else "–"] if show_modelled else []
            cells += [traffic, f"{r.top1:.1%}" if pd.notna(r.top1) else "–"]
            cells += [(escape(r.quantities) if not has else "") or "–"] if show_q else []
            cells += [_mark(r)]
            t.add_row(*cells)
        console.print(t)
    for n in noisy:
        console.print(f"[yellow]WARNING {escape(n)}[/yellow]", soft_wrap=True)
    if noisy:
        console.print("[yellow]a NOISY line: run more repeats (run.repeats=) or on a quiet host; a DIVERGED one: "
                      "its outputs are not to be trusted (see the reason)[/yellow]", soft_wrap=True)
    if len(table):
        console.print("latency: median over repeats; IQR: 25th–75th percentile; p90 from 10 repeats "
                      "(protocols.summaries.interval)", style="dim")
    if failed:
        console.print(f"[bold red]{len(failed)} run(s) failed:[/bold red]")
        for f in failed:
            console.print(f"  {f}", markup=False)
    elif not len(rows):
        console.print(f"{title}: no rows")


def _print_quantities(table: pd.DataFrame, title: str, console: Console) -> None:
    """A sweep whose rows hold no latency (memory, dcor): one table of what they do hold, one line per workload."""
    t = Table(title=f"{title}: quantities (medians)", title_justify="left")
    for col in ("model", "seq", "batch", "protocol", "network", "quantities", "top-1", "status"):
        t.add_column(col, justify="right" if col in ("seq", "batch", "top-1") else "left")
    for _, r in table.iterrows():
        t.add_row(str(r.model), str(r.seq_len), str(r.batch_size), escape(_label(r)), str(r.network),
                  escape(r.quantities) or "–", f"{r.top1:.1%}" if pd.notna(r.top1) else "–", _mark(r))
    console.print(t)
    for _, r in table.iterrows():
        if reasons := _reasons(r):
            console.print(f"[yellow]WARNING {escape(_label(r))} · {r.model}: {escape('; '.join(reasons))}[/yellow]",
                          soft_wrap=True)


def sweep_runs(sweep_dir: Path) -> tuple[pd.DataFrame, list[str]]:
    """The rows of every job of a Hydra sweep folder (via each job's run_dir.txt), joined with the runs' status,
    noisy reasons, task and variant (bench.runs_table.join_runs), and the failed runs, named."""
    frames, records, failed = [], [], []
    for job in sorted((p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)):
        pointer = job / RUN_POINTER
        if not pointer.exists():
            failed.append(f"job {job.name}: ended before its run was recorded (see {job})")
            continue
        run_dir = Path(pointer.read_text().strip())
        report = RunReport.from_json(run_dir)
        if report is None or report.status not in FINISHED:
            failed.append(run_line(report, run_dir) if report else f"job {job.name}: no report in {run_dir}")
        elif (run_dir / ROWS).exists():
            try:  # one torn or wrong-schema rows file is named, never stops the sweep's answer
                frames.append(typed(pd.read_parquet(run_dir / ROWS)))
            except Exception as e:  # noqa: BLE001 - pyarrow and pandas raise several types for damaged files
                failed.append(f"job {job.name}: {run_dir / ROWS} unreadable ({type(e).__name__}: {e}); "
                              "rerun with force=true to redo it")
                continue
            records.append(run_record(report))
    if not frames:
        return pd.DataFrame(), failed
    return join_runs(pd.concat(frames, ignore_index=True), runs_frame(records)), failed


RUN_POINTER = "run_dir.txt"  # written into each Hydra job folder: where that job's run folder is
