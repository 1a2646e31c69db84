"""Figures from the tidy tables, one function per paper figure, each saved as PNG and PDF.

Every function takes the rows DataFrame joined with the runs table (`bench.results.with_runs`: protocol
parameters as `protocol.<key>` columns) and an output folder, draws medians over repeats and returns the
written paths; it returns [] when the table holds nothing for that figure.
"""
from __future__ import annotations

import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from protocols.vocabulary import STIP_PHASES  # noqa: E402

log = logging.getLogger(__name__)
MEASURED = ("socket", "host", "engine")  # what a figure of measured time draws (not modelled, not shapes)


def _param(df: pd.DataFrame, key: str) -> pd.Series:
    """A protocol-parameter column (protocol.<key>), empty where no run has it."""
    return df.get(f"protocol.{key}", pd.Series(pd.NA, index=df.index, dtype="object"))


def _save(fig: plt.Figure, out: Path, name: str) -> list[Path]:
    """Write PNG and PDF; close the figure."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    fig.tight_layout()
    for p in paths:
        fig.savefig(p, dpi=150)
    plt.close(fig)
    return paths


def _median(df: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Median value over repeats per group."""
    return df.groupby(by, dropna=False)["value"].median().reset_index()


def fig6_dcor(df: pd.DataFrame, out: Path) -> list[Path]:
    """Fig. 6(b): per-vector dcor vs hidden size, permutation (STIP) vs random projection; both conventions."""
    d = df[(df.phase == "embeddings") & df.metric.isin(["dcor", "dcor_samples"])]
    if d.empty:
        return []
    d = d.assign(label=_param(d, "transform").fillna(d.protocol))
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), sharey=True)
    for ax, metric in zip(axes, ["dcor", "dcor_samples"]):
        m = _median(d[d.metric == metric], ["label", "model", "n_params"])
        for label, g in m.groupby("label"):
            g = g.sort_values("n_params")
            ax.plot(g["model"], g["value"], marker="o", label=label)
        ax.set_title({"dcor": "per-vector (paper)", "dcor_samples": "sample-wise"}[metric])
        ax.set_xlabel("model (hidden size grows left to right)")
        ax.tick_params(axis="x", rotation=45)
    axes[0].set_ylabel("distance correlation")
    axes[0].legend()
    return _save(fig, out, "fig6_dcor")


def fig6a_param_dcor(df: pd.DataFrame, out: Path) -> list[Path]:
    """Fig. 6(a): dcor between original and transformed weights, STIP vs random projection."""
    d = df[(df.phase == "parameters") & (df.metric == "dcor")]
    if d.empty:
        return []
    d = d.assign(label=_param(d, "transform").fillna(d.protocol))
    fig, ax = plt.subplots(figsize=(5, 3.5))
    labels = sorted(d.label.unique())
    ax.boxplot([d[d.label == lab]["value"] for lab in labels], tick_labels=labels)
    ax.set_ylabel("distance correlation (per weight row)")
    ax.set_title("original vs transformed parameters")
    return _save(fig, out, "fig6a_param_dcor")


def table5_accuracy(df: pd.DataFrame, out: Path) -> list[Path]:
    """Table 5 as a CSV beside the figures: error and top-1 agreement of STIP vs plaintext per model."""
    d = df[(df.phase == "output") & df.metric.isin(["max_abs_error", "sum_abs_error", "top1_agreement"])]
    if d.empty:
        return []
    t = d.pivot_table(index=["protocol", "model", "n_params"], columns="metric", values="value", aggfunc="median")
    out.mkdir(parents=True, exist_ok=True)
    path = out / "table5_accuracy.csv"
    t.reset_index().to_csv(path, index=False)
    return [path]


def fig7a_throughput(df: pd.DataFrame, out: Path) -> list[Path]:
    """Fig. 7(a): end-to-end forward throughput (tokens/s) vs parameter count, per protocol and network."""
    d = df[(df.phase == "total") & (df.metric == "throughput") & df.source.isin(MEASURED)]
    if d.empty:
        return []
    m = _median(d, ["protocol", "network", "model", "n_params"])
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for (proto, net), g in m.groupby(["protocol", "network"]):
        g = g.sort_values("n_params")
        ax.plot(g["n_params"], g["value"], marker="o", label=f"{proto} / {net}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("throughput (tokens/s)")
    ax.legend(fontsize=7)
    return _save(fig, out, "fig7a_throughput")


def fig7c_generation(df: pd.DataFrame, out: Path) -> list[Path]:
    """Fig. 7(c): cumulative generation latency vs generated tokens, per protocol x network."""
    d = df[df.phase.isin(["prefill", "token"]) & (df.metric == "latency")]
    if d.empty:
        return []
    fig, ax = plt.subplots(figsize=(5, 3.5))
    mode = _param(d, "return_mode").fillna("").astype(str)
    d = d.assign(label=d.protocol + " / " + d.network + mode.map(lambda a: f" (return {a})" if a else ""))
    for label, g in d.groupby("label"):
        per_step = g.groupby("seq_len")["value"].median().sort_index()
        ax.plot(range(1, len(per_step) + 1), per_step.cumsum().values, marker=".", label=label)
    ax.set_xlabel("generated tokens")
    ax.set_ylabel("latency (s)")
    ax.legend(fontsize=7)
    return _save(fig, out, "fig7c_generation")


def fig7d_breakdown(df: pd.DataFrame, out: Path) -> list[Path]:
    """Fig. 7(d): stacked per-request latency by phase, per protocol and network (forward passes)."""
    d = df[df.phase.isin(STIP_PHASES) & (df.metric == "latency") & df.source.isin(MEASURED)]
    d = d[~d.run_id.isin(df[df.phase == "generate"].run_id)]
    if d.empty:
        return []
    m = d.groupby(["protocol", "network", "model", "phase"])["value"].median().unstack("phase").fillna(0.0)
    m = m[[p for p in STIP_PHASES if p in m.columns]]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    m.plot(kind="barh", stacked=True, ax=ax)
    ax.set_xlabel("latency per request (s), median over repeats")
    ax.set_ylabel("")
    ax.legend(fontsize=7)
    return _save(fig, out, "fig7d_breakdown")


def fig8_memory(df: pd.DataFrame, out: Path) -> list[Path]:
    """Fig. 8: on-device memory of the tokenizer and the embedding module per model."""
    d = df[(df.metric == "memory") & df.phase.isin(["device_embedding", "device_tokenizer"])]
    if d.empty:
        return []
    m = _median(d, ["model", "n_params", "phase"]).sort_values("n_params")
    t = m.pivot_table(index=["n_params", "model"], columns="phase", values="value").reset_index(level=0, drop=True)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    (t / 2**20).plot(kind="bar", ax=ax)
    ax.set_yscale("log")
    ax.set_ylabel("MiB")
    ax.set_xlabel("")
    return _save(fig, out, "fig8_memory")


def fig9_model_split(df: pd.DataFrame, out: Path) -> list[Path]:
    """Fig. 9: end-to-end latency vs the number of on-device layers (model split)."""
    d = df[(df.phase == "total") & (df.metric == "latency") & (df.source == "socket")]
    d = d.assign(k=_param(d, "device_layers")).dropna(subset=["k"])
    if d.empty:
        return []
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for (model, net), g in d.groupby(["model", "network"]):
        m = g.groupby("k")["value"].median().sort_index()
        ax.plot(m.index, m.values, marker="o", label=f"{model} / {net}")
    ax.set_xlabel("transformer layers on the device (k)")
    ax.set_ylabel("latency per request (s)")
    ax.legend(fontsize=7)
    return _save(fig, out, "fig9_model_split")


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
