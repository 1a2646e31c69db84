"""Fig. 7(b), the improvement summary: the parameter scale STIP runs (70B vs the baselines' 336M, "208-fold")
and GPT2-124m throughput over CipherGPT ("6.7 million times").

What is derivable here: the paper's own arithmetic (70e9 / 336e6 = 208; 45,366 / 6.7e-4 = 6.8e7, not 6.7e6),
the largest model this host ran through STIP end to end and through the 2PC arm (every runner experiment
in results/), and STIP's measured GPT2-124m throughput over CipherGPT's reported 6.7e-4 token/s, the
paper's own method (a measured STIP beside a reported baseline).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

from protocols.paths import config_group
from report import style
from report.artifacts import Comparison, paper_value
from report.artifacts._shared import host_differences, rows_of, runner_experiments, spread
from report.reported import reported_by_id

ARTIFACT = "fig7b"
# Every runner experiment in results/ is scanned; these are the ones that normally hold the largest models.
EXPERIMENTS = ("quick", "fig7a_throughput", "table5_accuracy", "mpc_vs_stip", "mpc_bert_base")
MEASURED = ("socket", "host", "engine")  # measured, not modelled or from shapes
MODEL_DIR = config_group("model")


def _largest(rows: pd.DataFrame, protocol: str, phase: str, metrics: tuple[str, ...]) -> pd.Series | None:
    """The row of the largest model (n_params) with a measured `phase`/`metric` row for `protocol`."""
    if rows.empty:
        return None
    d = rows[(rows.protocol == protocol) & (rows.phase == phase) & rows.metric.isin(metrics)
             & rows.n_params.notna()]
    return None if d.empty else d.loc[d.n_params.idxmax()]


def _streamed(results: Path) -> pd.Series | None:
    """The largest model checked to its logits by layer streaming (results/*/stream.parquet of bench.layer_stream),
    with n_params counted from its configs/model yaml; None when no such rows exist."""
    from protocols.models import count_params  # noqa: PLC0415 - torch, only when stream rows exist

    found = []
    for path in sorted(Path(results).glob("*/stream.parquet")):
        df = pd.read_parquet(path)
        if not {"model", "stage"} <= set(df.columns):
            raise ValueError(f"{path} lacks the model/stage columns bench.layer_stream writes; rerun it")
        for model in df[df.stage == "logits"].model.unique():
            spec = yaml.safe_load((MODEL_DIR / f"{model}.yaml").read_text())
            found.append(pd.Series({"model": model, "n_params": count_params(spec), "experiment": path.parent.name,
                                    "seq_len": df.get("seq_len", pd.Series([None])).iloc[0],
                                    "batch_size": df.get("batch", pd.Series([None])).iloc[0]}))
    return max(found, key=lambda r: r.n_params) if found else None


def _bigger(a: pd.Series | None, b: pd.Series | None) -> pd.Series | None:
    return a if b is None or (a is not None and a.n_params >= b.n_params) else b


def _where(r: pd.Series) -> str:
    return f"{r.model} in results/{r.experiment}/ ({r.seq_len} tokens, batch {r.batch_size})"


def _throughput(rows: pd.DataFrame) -> tuple[float, str, str] | None:
    """STIP's best median GPT2-124m throughput (token/s) over its measured workloads, that workload, its spread."""
    if rows.empty:
        return None
    d = rows[(rows.protocol == "stip") & (rows.model == "gpt2-124m") & (rows.phase == "total")
             & (rows.metric == "throughput") & rows.source.isin(MEASURED)]
    if d.empty:
        return None
    g = d.groupby(["experiment", "batch_size", "seq_len", "network"], dropna=False)["value"]
    med = g.median()
    best = med.idxmax()
    vals = g.get_group(best)
    exp, batch, seq, net = best
    return (float(med[best]), f"gpt2-124m, batch {batch} x {seq} tokens, network {net} (results/{exp}/)",
            spread(vals))


def compare(results: Path) -> list[Comparison]:
    """Parameter scale (measured here and the paper's 208) and throughput gain (derived and measured)."""
    rows = rows_of(results, runner_experiments(results))
    paper_stip, paper_base = paper_value("fig7b-stip-max-params", "params"), \
        paper_value("fig7b-baseline-max-params", "params")
    printed_fold, printed_gain = paper_value("fig7b-param-scale-fold", "x"), \
        paper_value("fig7b-throughput-improvement", "x")
    stip_tp, ciphergpt_tp = paper_value("fig7a-stip-gpt2-124m-throughput", "token/s"), \
        paper_value("fig7a-ciphergpt-throughput", "token/s")
    out = [
        Comparison(ARTIFACT, "largest model / the baselines' largest (paper's arithmetic)", "x", "derived",
                   measured=paper_stip / paper_base, paper=printed_fold, reported_id="fig7b-param-scale-fold",
                   source="derived", reason=f"70e9 / 336e6 = {paper_stip / paper_base:.1f}: the printed 208 is "
                   "consistent (both are the systems' largest models, not a measurement)"),
        Comparison(ARTIFACT, "GPT2-124m throughput over CipherGPT (paper's arithmetic)", "x", "derived",
                   measured=stip_tp / ciphergpt_tp, paper=printed_gain, reported_id="fig7b-throughput-improvement",
                   source="derived", reason=f"45,366 / 6.7e-4 = {stip_tp / ciphergpt_tp:.2g}, ten times the printed "
                   "6.7 million; it sets STIP on 4 A100s beside CipherGPT's reported number on other hardware"),
    ]
    served = _largest(rows, "stip", "total", ("latency", "throughput"))
    checked = _largest(rows, "stip", "output", ("top1_agreement", "sum_abs_error", "max_abs_error"))
    mpc = _largest(rows, "mpc", "total", ("latency",))
    run_all = "python -m bench.profile bench"
    for label, r, paper, rid, why in (
            ("largest model STIP served end to end here", served, paper_stip, "fig7b-stip-max-params",
             "LLaMA2-70b needs 140 GB in fp16 (280 GB fp32), beyond this host's memory"),
            ("largest model whose STIP transform was checked here (accuracy rows)", checked, paper_stip,
             "fig7b-stip-max-params", "a full 70B model does not fit this host's memory"),
            ("largest model the 2PC arm (CrypTen) ran here", mpc, paper_base, "fig7b-baseline-max-params",
             "2PC forwards take minutes per pass on 2 cores; the profile runs the sizes its time allows")):
        if r is None:
            out.append(Comparison(ARTIFACT, label, "params", "not_measured", paper=paper, reported_id=rid,
                                  reason=f"no such rows in results/; run `{run_all}`"))
            continue
        reached = r.n_params >= paper * 0.95
        out.append(Comparison(ARTIFACT, label, "params", "reproduced" if reached else "not_reproducible",
                              measured=float(r.n_params), paper=paper, reported_id=rid, workload=_where(r),
                              differences=host_differences(), source=f"results/{r.experiment}/ rows",
                              scope="host_bound",
                              reason="" if reached else why))
    streamed = _streamed(results)
    if streamed is not None:
        out.append(Comparison(ARTIFACT, "largest model whose STIP transform was checked at full depth by layer "
                              "streaming (one layer in memory at a time)", "params", "not_reproducible",
                              measured=float(streamed.n_params), paper=paper_stip, reported_id="fig7b-stip-max-params",
                              workload=_where(streamed), differences=host_differences(), scope="host_bound",
                              source=f"results/{streamed.experiment}/stream.parquet",
                              reason="the transform is checked at this scale, but serving the model end to end "
                                     "needs its weights in memory, which this host does not have"))
    if served is not None and mpc is not None:
        fold = served.n_params / mpc.n_params
        out.append(Comparison(ARTIFACT, "largest model STIP served / largest the 2PC arm ran, both here", "x",
                              "not_reproducible", measured=float(fold), paper=printed_fold,
                              reported_id="fig7b-param-scale-fold", workload=f"{served.model} / {mpc.model}",
                              scope="host_bound",
                              differences=host_differences("the paper's fold is 70B (4x A100) over the baselines' "
                                                           "own papers' largest model"),
                              reason="both ends are bounded by this host (memory for STIP, time for 2PC), so the "
                                     "fold measures the host, not the protocols"))
    tp = _throughput(rows)
    if tp is None:
        out.append(Comparison(ARTIFACT, "STIP GPT2-124m throughput measured here / CipherGPT's reported 6.7e-4 token/s",
                              "x", "not_measured", paper=printed_gain, reported_id="fig7b-throughput-improvement",
                              reason="no STIP gpt2-124m throughput rows in results/; run "
                                     "`python -m bench -m experiment=fig7a_throughput`"))
    else:
        value, workload, tp_spread = tp
        gain = value / ciphergpt_tp
        out.append(Comparison(
            ARTIFACT, "STIP GPT2-124m throughput measured here / CipherGPT's reported 6.7e-4 token/s", "x",
            "reproduced" if gain >= printed_gain else "not_reproducible", measured=gain, paper=printed_gain,
            reported_id="fig7b-throughput-improvement", spread=f"STIP {value:.4g} token/s, {tp_spread}",
            scope="host_bound",
            workload=workload, differences=host_differences("paper: batch 100 x 100 tokens"),
            source="total/throughput rows (socket)",
            reason="the paper's method (measured STIP / reported CipherGPT) on this host" if gain >= printed_gain
            else f"STIP reaches {value:.3g} token/s here vs 45,366 on 4 A100s: the gap is the hardware"
            + (f"; the gain still exceeds a million ({gain:.2g})" if gain >= 1e6 else "")))
    return out


def figure(results: Path, out: Path) -> list[Path]:
    """Largest model served: the paper's STIP and baselines (hollow) beside what this host ran (filled)."""
    rows = rows_of(results, runner_experiments(results))
    fig, ax = style.figure(width=6)
    cats = ["STIP\nserved end to end", "STIP\ntransform checked\n(incl. layer streaming)",
            "2PC\n(paper: baselines; here: CrypTen)"]
    stip_paper, base_paper = paper_value("fig7b-stip-max-params", "params"), \
        paper_value("fig7b-baseline-max-params", "params")
    style.paper(ax, cats, [stip_paper, stip_paper, base_paper], label="paper: largest model (LLaMA2-70b; BERT-large)",
                system="STIP", marker="D")
    for cat, r, system in ((cats[0], _largest(rows, "stip", "total", ("latency",)), "STIP"),
                           (cats[1], _bigger(_largest(rows, "stip", "output", ("top1_agreement", "sum_abs_error")),
                                             _streamed(results)), "STIP"),
                           (cats[2], _largest(rows, "mpc", "total", ("latency",)), "CrypTen 2PC")):
        if r is not None:
            style.measured(ax, [cat], [r.n_params], label="measured here", system=system, line=False)
            ax.annotate(str(r.model), (cat, r.n_params), textcoords="offset points", xytext=(8, -3), fontsize=7)
    ax.set_yscale("log")
    ax.set_ylim(top=stip_paper * 100)
    style.axes(ax, "system (what ran)", None, "largest model", "parameters")
    entry = reported_by_id()["fig7b-param-scale-fold"]
    style.title(ax, f"Fig. 7(b): parameter scale (paper: {entry.value:g}-fold)", "every runner experiment in results/")
    style.legend(ax, loc="upper right")
    return style.save(fig, out, "fig7b_parameter_scale")
