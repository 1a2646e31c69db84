"""The runner's figures of one experiment (`python -m bench.aggregate --plots`), each saved as PNG and PDF.

Every function takes the rows DataFrame joined with the runs table (`bench.results.with_runs`: protocol
parameters as `protocol.<key>` columns) and an output folder and returns the written paths ([] when the table holds
nothing for that figure). The paper figures are drawn by protocols.plotting, the one drawing the paper report
(report/artifacts) uses too, in its one style; the report adds the paper's values on top.
"""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from protocols import plotting as pl
from protocols.plotting import plt
from protocols.summaries import workload_keys

log = logging.getLogger(__name__)
FORMATS = ("png", "pdf")


def _values(series: pd.Series) -> str:
    """Distinct values of a column for a title: one value, or 'a, b' (never pandas tuples)."""
    vals = sorted({str(v) for v in series.dropna().unique()})
    return ", ".join(vals) if len(vals) <= 3 else f"{len(vals)} values"


def _title(ax: plt.Axes, what: str, d: pd.DataFrame, keys: tuple[str, ...] = ("model", "seq_len", "network")) -> None:
    """'what' plus what the figure holds fixed: model / sequence length / network."""
    names = {"model": "", "seq_len": "seq ", "batch_size": "batch ", "network": "network "}
    parts = [f"{names[k]}{_values(d[k])}" for k in keys if k in d and d[k].notna().any()]
    ax.set_title(what + ("\n" + " · ".join(parts) if parts else ""))


def fig6_dcor(df: pd.DataFrame, out: Path) -> list[Path]:
    """Fig. 6(b) over this experiment's models: dcor of embeddings and what is sent per transform, both conventions
    (protocols.plotting.embedding_dcor, against the models in order of size)."""
    d = df[(df.phase == "embeddings") & df.metric.isin(["dcor", "dcor_samples"])]
    if d.model.nunique() < 2:  # a line over models needs two of them; the value is in the rows and the table
        return []
    fig, panels = plt.subplots(1, 2, figsize=(10, 4))
    pl.embedding_dcor(panels, d)
    for ax in panels:
        pl.legend(ax, outside="below", ncol=2)
    fig.suptitle("embeddings vs what is sent — " + _values(d["model"]), fontsize=9)
    return pl.save(fig, out, "fig6_dcor", FORMATS)


def fig6a_param_dcor(df: pd.DataFrame, out: Path) -> list[Path]:
    """Fig. 6(a): dcor between original and transformed weights per model (protocols.plotting.param_dcor)."""
    d = df[(df.phase == "parameters") & (df.metric == "dcor")]
    if d.empty:
        return []
    fig, ax = plt.subplots(figsize=(5.5, 4))
    pl.param_dcor(ax, d)
    _title(ax, "original vs transformed parameters", d, ())
    pl.legend(ax, outside="below", ncol=1)
    return pl.save(fig, out, "fig6a_param_dcor", FORMATS)


def table5_accuracy(df: pd.DataFrame, out: Path) -> list[Path]:
    """Table 5 as a CSV beside the figures: error and top-1 agreement of STIP vs plaintext per model."""
    d = df[(df.phase == "output") & df.metric.isin(["max_abs_error", "sum_abs_error", "top1_agreement"])]
    if d.empty:
        return []
    keys = [k for k in workload_keys(d) if d[k].notna().any()] + ["n_params"]  # never pools two configurations
    t = d.pivot_table(index=keys, columns="metric", values="value", aggfunc="median", dropna=False).dropna(how="all")
    out.mkdir(parents=True, exist_ok=True)
    path = out / "table5_accuracy.csv"
    t.reset_index().to_csv(path, index=False)
    return [path]


def fig7a_throughput(df: pd.DataFrame, out: Path) -> list[Path]:
    """Fig. 7(a): end-to-end forward throughput vs parameter count (protocols.plotting.throughput)."""
    d = df[(df.phase == "total") & (df.metric == "throughput") & df.source.isin(pl.MEASURED)]
    if d.n_params.nunique() < 2:  # throughput against size needs two sizes; one point is no figure
        return []
    fig, ax = plt.subplots(figsize=(8, 3.8))
    pl.throughput(ax, d)
    _title(ax, "forward throughput", d, ("seq_len", "batch_size"))
    pl.legend(ax, outside="right")
    return pl.save(fig, out, "fig7a_throughput", FORMATS)


def fig7c_generation(df: pd.DataFrame, out: Path) -> list[Path]:
    """Fig. 7(c): latency since the first token vs generated tokens (protocols.plotting.generation)."""
    d = df[(df.phase == "token") & (df.metric == "latency")]
    if d.empty:
        return []
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    pl.generation(ax, d)
    _title(ax, "generation", d, ("model", "batch_size"))
    pl.legend(ax, outside="right")
    return pl.save(fig, out, "fig7c_generation", FORMATS)


def fig7d_breakdown(df: pd.DataFrame, out: Path) -> list[Path]:
    """Fig. 7(d): stacked per-request latency by phase of the forward passes (protocols.plotting.breakdown)."""
    d = df[df.phase.isin(pl.STIP_PHASES) & (df.metric == "latency") & df.source.isin(pl.MEASURED)]
    d = d[~d.run_id.isin(df[df.phase == "generate"].run_id)]
    if d.empty:
        return []
    n = len(d.groupby(["model", "seq_len", "protocol", "network", *pl.line_keys(d, ("model", "seq_len"))],
                      dropna=False))
    fig, ax = plt.subplots(figsize=(8, 0.5 * n + 1.8))
    pl.breakdown(ax, d)
    _title(ax, "where a request's time goes", d, ("seq_len", "batch_size"))
    pl.legend(ax, outside="right")
    return pl.save(fig, out, "fig7d_breakdown", FORMATS)


def fig8_memory(df: pd.DataFrame, out: Path) -> list[Path]:
    """Fig. 8: on-device memory of the embedding module per model and of each tokenizer once
    (protocols.plotting.memory)."""
    d = df[(df.metric == "memory") & df.phase.isin(["device_embedding", "device_tokenizer"])]
    if d.empty:
        return []
    if (d.phase == "device_tokenizer").any():
        fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [3, 1.3]})
        pl.memory(ax, bx, d)
        bx.set_title("tokenizer, once per tokenizer")
    else:  # a run that measured the embedding only
        fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * d.model.nunique() + 2.5), 4))
        pl.memory(ax, None, d)
    ax.set_title("embedding module per model")
    return pl.save(fig, out, "fig8_memory", FORMATS)


def fig9_model_split(df: pd.DataFrame, out: Path) -> list[Path]:
    """Fig. 9: end-to-end latency vs the number of on-device layers (protocols.plotting.model_split)."""
    d = df[(df.phase == "total") & (df.metric == "latency") & (df.source == "socket")]
    if pl.param(d, "device_layers").dropna().nunique() < 2:  # latency against k needs two values of k
        return []
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    pl.model_split(ax, d)
    _title(ax, "model split", d, ("seq_len", "batch_size"))
    pl.legend(ax, outside="right")
    return pl.save(fig, out, "fig9_model_split", FORMATS)


FIGURES = (fig6_dcor, fig6a_param_dcor, table5_accuracy, fig7a_throughput, fig7c_generation, fig7d_breakdown,
           fig8_memory, fig9_model_split)


def plot_experiment(df: pd.DataFrame, out: Path) -> list[Path]:
    """Every figure the table has data for; a figure that fails is logged, the rest still drawn."""
    paths: list[Path] = []
    for fig in FIGURES:
        try:
            paths += fig(df, out)
        except Exception as e:  # noqa: BLE001 - one bad figure must not lose the others
            log.error("figure %s failed: %s", fig.__name__, e)
    return paths
