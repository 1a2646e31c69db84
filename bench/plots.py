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
from matplotlib.ticker import MaxNLocator  # noqa: E402

from protocols import palette  # noqa: E402
from protocols.summaries import P90_MIN, interval_frame, workload_keys  # noqa: E402
from protocols.vocabulary import STIP_PHASES  # noqa: E402

log = logging.getLogger(__name__)
MEASURED = ("socket", "host", "engine")  # what a figure of measured time draws (not modelled, not shapes)
# One style for every figure: a fixed colour per protocol (and per transform of the dcor figures), a line
# style per network, a fixed colour per request phase; error bars span the IQR over the repeats (the one definition:
# protocols.summaries.interval), p90 drawn as a small cross where a point has at least 10 repeats.
PROTOCOL_COLORS = {**palette.PROTOCOL_COLORS,  # the dcor figures' transforms in their protocol's colour
                   "permutation": palette.PROTOCOL_COLORS["stip"],
                   "projection": palette.PROTOCOL_COLORS["random_projection"]}
NETWORK_STYLES = ["-", "--", ":", "-."]
MARKERS = "os^Dv<>pP*"
PHASE_COLORS = dict(zip(STIP_PHASES, ["#aec7e8", "#1f77b4", "#ffbb78", "#7f7f7f", "#ff7f0e", "#98df8a"]))
plt.rcParams.update({"font.size": 9, "axes.titlesize": 9, "legend.fontsize": 7, "axes.grid": True,
                     "grid.alpha": 0.3, "axes.spines.top": False, "axes.spines.right": False})


def _color(name: str) -> str:
    """The protocol's fixed colour (unknown names: a stable pick from the default cycle)."""
    if name in PROTOCOL_COLORS:
        return PROTOCOL_COLORS[name]
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return cycle[sum(map(ord, name)) % len(cycle)]


def _style(network: str, networks: list[str]) -> str:
    """A line style per network, stable within a figure."""
    return NETWORK_STYLES[sorted(networks).index(network) % len(NETWORK_STYLES)]


def _values(series: pd.Series) -> str:
    """Distinct values of a column for a title: one value, or 'a, b' (never pandas tuples)."""
    vals = sorted({str(v) for v in series.dropna().unique()})
    return ", ".join(vals) if len(vals) <= 3 else f"{len(vals)} values"


def _title(ax: plt.Axes, what: str, d: pd.DataFrame, keys: tuple[str, ...] = ("model", "seq_len", "network")) -> None:
    """'what' plus what the figure holds fixed: model / sequence length / network."""
    names = {"model": "", "seq_len": "seq ", "batch_size": "batch ", "network": "network "}
    parts = [f"{names[k]}{_values(d[k])}" for k in keys if k in d and d[k].notna().any()]
    ax.set_title(what + (" — " + " · ".join(parts) if parts else ""))


def _spread(df: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Median, IQR (lo, hi) and p90 over repeats per group of `by` plus every other workload key present (a figure
    never pools runs whose workload differs; the extra keys become part of the line's label: `_line_label`)."""
    keys = [*by, *(k for k in workload_keys(df) if k not in by)]
    m = interval_frame(df, keys).reset_index()
    return m.rename(columns={"median": "value", "q25": "lo", "q75": "hi"})


LINK_VALUES = ("bandwidth_bps", "rtt_s")


def _line_label(r: pd.Series, keys: list[str]) -> str:
    """The values of `keys` that tell a figure's lines apart, named ('batch 10 · return_mode=topk')."""
    names = {"batch_size": "batch ", "seq_len": "seq ", "task": "task ", "bandwidth_bps": "bandwidth_bps=",
             "rtt_s": "rtt_s="}
    extra = [names.get(k, f"{k}=" if k.startswith("protocol.") else "") + str(r[k]) for k in keys
             if k in r and pd.notna(r[k]) and str(r[k])]
    return " · ".join(e.removeprefix("protocol.") for e in extra)


def _line_keys(df: pd.DataFrame, fixed: tuple[str, ...], x_param: str | None = None) -> list[str]:
    """The workload keys that vary in `df` beyond `fixed` (what a figure's lines are keyed and labelled by). With
    `x_param` (a protocol parameter on the x axis) the variant is replaced by the other varying protocol.* columns."""
    keys = [k for k in workload_keys(df) if k not in fixed and not (x_param and k == "variant")]
    if x_param:
        keys += [c for c in df.columns if c.startswith("protocol.") and c != f"protocol.{x_param}"]
    return _varying(df, keys)


def _varying(df: pd.DataFrame, keys: list[str]) -> list[str]:
    """The keys among `keys` whose value differs between rows of `df`; the link's values (bandwidth_bps, rtt_s) only
    where they differ within one network label (the label already names them otherwise)."""
    out = []
    for k in keys:
        if k not in df:
            continue
        within = df.groupby("network", dropna=False)[k] if k in LINK_VALUES and "network" in df else None
        n = within.agg(lambda v: v.astype(str).nunique(dropna=False)).max() if within is not None else \
            df[k].astype(str).nunique(dropna=False)
        if n > 1:
            out.append(k)
    return out


def _p90(ax: plt.Axes, x: pd.Series, m: pd.DataFrame, color: str) -> None:
    """p90 as a small cross above the IQR bar where the point has at least P90_MIN repeats."""
    has = m["n"] >= P90_MIN
    if has.any():
        ax.plot(x[has], m.loc[has, "p90"], linestyle="none", marker="x", color=color, markersize=4)


def request_totals(d: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """interval_frame of one request's total per group of `keys`: its phases summed within one run and one repeat,
    never across runs (two seeds of one workload are two runs, not one request twice as long)."""
    per_request = d.groupby([*keys, "run_id", "repeat"], dropna=False)["value"].sum().reset_index()
    return interval_frame(per_request, keys)


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
    if d.model.nunique() < 2:  # a line over models needs two of them; the value is in the rows and the table
        return []
    d = d.assign(label=_param(d, "transform").fillna(d.protocol))
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), sharey=True)
    for ax, metric in zip(axes, ["dcor", "dcor_samples"]):
        m = _median(d[d.metric == metric], ["label", "model", "n_params"])
        for label, g in m.groupby("label"):
            g = g.sort_values("n_params")
            ax.plot(g["model"], g["value"], marker="o", label=label, color=_color(str(label)))
        ax.set_title({"dcor": "per-vector (paper)", "dcor_samples": "sample-wise"}[metric])
        ax.set_xlabel("model (hidden size grows left to right)")
        ax.tick_params(axis="x", rotation=30)
        for t in ax.get_xticklabels():
            t.set_horizontalalignment("right")
    axes[0].set_ylabel("distance correlation")
    axes[0].legend()
    fig.suptitle("embeddings vs what is sent — " + _values(d["model"]), fontsize=9)
    return _save(fig, out, "fig6_dcor")


def fig6a_param_dcor(df: pd.DataFrame, out: Path) -> list[Path]:
    """Fig. 6(a): dcor between original and transformed weights, STIP vs random projection."""
    d = df[(df.phase == "parameters") & (df.metric == "dcor")]
    if d.empty:
        return []
    d = d.assign(label=_param(d, "transform").fillna(d.protocol))
    fig, ax = plt.subplots(figsize=(5, 3.5))
    labels = sorted(d.label.unique())
    box = ax.boxplot([d[d.label == lab]["value"] for lab in labels], tick_labels=labels, patch_artist=True)
    for patch, lab in zip(box["boxes"], labels):
        patch.set_facecolor(_color(str(lab)))
        patch.set_alpha(0.6)
    ax.set_ylabel("distance correlation (per weight row)")
    _title(ax, "original vs transformed parameters", d, ("model",))
    return _save(fig, out, "fig6a_param_dcor")


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
    """Fig. 7(a): end-to-end forward throughput (tokens/s) vs parameter count, per protocol and network."""
    d = df[(df.phase == "total") & (df.metric == "throughput") & df.source.isin(MEASURED)]
    if d.n_params.nunique() < 2:  # throughput against size needs two sizes; one point is no figure
        return []
    m = _spread(d, ["protocol", "network", "model", "n_params"])
    lines = ["protocol", "network", *_line_keys(m, ("model", "network", "protocol"))]
    nets = sorted(m.network.dropna().unique())
    fig, ax = plt.subplots(figsize=(8, 3.8))
    extras = sorted({_line_label(r, lines[2:]) for _, r in m.iterrows()})
    for key, g in m.groupby(lines, dropna=False):
        proto, net = key[0], key[1]
        g = g.sort_values("n_params")
        extra = _line_label(g.iloc[0], lines[2:])
        marker = MARKERS[extras.index(extra) % len(MARKERS)]  # a marker per configuration, a colour per protocol
        ax.errorbar(g["n_params"], g["value"], yerr=[g["value"] - g["lo"], g["hi"] - g["value"]], marker=marker,
                    capsize=3, color=_color(proto), linestyle=_style(net, nets),
                    label=f"{proto} / {net}" + (f" · {extra}" if extra else ""))
        _p90(ax, g["n_params"], g, _color(proto))
    ax.set_xscale("log")  # lines over orders of magnitude of model size: log axes, never for bars
    ax.set_yscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("throughput (tokens/s), median;\nbars: IQR over repeats, x: p90 (n ≥ 10)")
    _title(ax, "forward throughput", d, ("seq_len", "batch_size"))
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)  # beside the lines, never over them
    return _save(fig, out, "fig7a_throughput")


def fig7c_generation(df: pd.DataFrame, out: Path) -> list[Path]:
    """Fig. 7(c): cumulative generation latency vs generated tokens, per protocol x network."""
    d = df[df.phase.isin(["prefill", "token"]) & (df.metric == "latency")]
    if d.empty:
        return []
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    mode = _param(d, "return_mode").fillna("").astype(str)
    d = d.assign(mode=mode.map(lambda a: f" (return {a})" if a else ""))
    nets = sorted(d.network.dropna().unique())
    for (proto, net, mode_label), g in d.groupby(["protocol", "network", "mode"]):
        per_step = g.groupby("seq_len")["value"].median().sort_index()
        ax.plot(range(1, len(per_step) + 1), per_step.cumsum().values, marker=".", color=_color(proto),
                linestyle=_style(net, nets), label=f"{proto} / {net}{mode_label}")
    ax.set_xlabel("generated tokens")
    ax.set_ylabel("cumulative latency (s), median over repeats")
    _title(ax, "generation", d, ("model", "batch_size"))
    ax.legend()
    return _save(fig, out, "fig7c_generation")


def fig7d_breakdown(df: pd.DataFrame, out: Path) -> list[Path]:
    """Fig. 7(d): stacked per-request latency by phase, per protocol and network (forward passes)."""
    d = df[df.phase.isin(STIP_PHASES) & (df.metric == "latency") & df.source.isin(MEASURED)]
    d = d[~d.run_id.isin(df[df.phase == "generate"].run_id)]
    if d.empty:
        return []
    keys = ["model", "seq_len", "protocol", "network"]
    keys += _line_keys(d, tuple(keys))
    m = d.groupby([*keys, "phase"], dropna=False)["value"].median().unstack("phase").fillna(0.0)
    m = m[[p for p in STIP_PHASES if p in m.columns]]
    totals = request_totals(d, keys).reindex(m.index)
    many = len(m.index.unique(0)) > 1 or len(m.index.unique(1)) > 1
    m.index = [f"{k[2]} / {k[3]}" + "".join(f" · {v}" for v in k[4:] if pd.notna(v) and str(v))
               + (f"\n{k[0]} · seq {k[1]}" if many else "") for k in m.index]
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(m) + 1.8))
    left = pd.Series(0.0, index=m.index)
    for phase in m.columns:
        ax.barh(m.index, m[phase] * 1e3, left=left * 1e3, color=PHASE_COLORS.get(phase), label=phase)
        left += m[phase]
    # the bar's length is the sum of per-phase medians; the error bar is the IQR of the per-request total
    ax.errorbar(totals["median"].values * 1e3, range(len(m)), xerr=[
        (totals["median"].values - totals["q25"].values).clip(min=0) * 1e3,
        (totals["q75"].values - totals["median"].values).clip(min=0) * 1e3], fmt="|", color="black", capsize=3)
    has = (totals["n"] >= P90_MIN).to_numpy()
    if has.any():
        ax.plot(totals["p90"].to_numpy()[has] * 1e3, [i for i in range(len(m)) if has[i]], "x", color="black",
                markersize=4)
    ax.set_xlabel("latency per request (ms): bars, median per phase;\n"
                  "black: median and IQR of the request's total over repeats, x: p90 (n ≥ 10)")
    _title(ax, "where a request's time goes", d, ("seq_len", "batch_size"))
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)  # beside the bars, never over them
    return _save(fig, out, "fig7d_breakdown")


def fig8_memory(df: pd.DataFrame, out: Path) -> list[Path]:
    """Fig. 8: on-device memory of the tokenizer and the embedding module per model."""
    d = df[(df.metric == "memory") & df.phase.isin(["device_embedding", "device_tokenizer"])]
    if d.empty:
        return []
    m = _median(d, ["model", "n_params", "phase"]).sort_values("n_params")
    t = m.pivot_table(index=["n_params", "model"], columns="phase", values="value").reset_index(level=0, drop=True)
    t.columns = [str(c).replace("device_", "") for c in t.columns]
    fig, ax = plt.subplots(figsize=(7, 3.8))
    (t / 2**20).plot(kind="bar", ax=ax, color=["#1f77b4", "#ff7f0e"][: len(t.columns)], rot=30)
    for lab in ax.get_xticklabels():
        lab.set_horizontalalignment("right")
    ax.set_ylabel("MiB on the device (linear)")
    ax.set_xlabel("")
    _title(ax, "on-device memory: embedding module and tokenizer", d, ())
    return _save(fig, out, "fig8_memory")


def fig9_model_split(df: pd.DataFrame, out: Path) -> list[Path]:
    """Fig. 9: end-to-end latency vs the number of on-device layers (model split)."""
    d = df[(df.phase == "total") & (df.metric == "latency") & (df.source == "socket")]
    d = d.assign(k=_param(d, "device_layers")).dropna(subset=["k"])
    if d.k.nunique() < 2:  # latency against k needs two values of k
        return []
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    nets = sorted(d.network.dropna().unique())
    lines = ["model", "network", *_line_keys(d, ("model", "network"), x_param="device_layers")]
    for key, g in d.groupby(lines, dropna=False):
        model, net = key[0], key[1]
        m = interval_frame(g, ["k"]).sort_index()
        extra = _line_label(g.iloc[0], lines[2:])
        ax.errorbar(m.index, m["median"], yerr=[m["median"] - m["q25"], m["q75"] - m["median"]], marker="o",
                    capsize=3, color=_color(str(model)), linestyle=_style(net, nets),
                    label=f"{model} / {net}" + (f" · {extra}" if extra else ""))
        _p90(ax, pd.Series(m.index, index=m.index), m, _color(str(model)))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # k counts layers
    ax.set_xlabel("transformer layers on the device (k)")
    ax.set_ylabel("latency per request (s), median;\nbars: IQR over repeats, x: p90 (n ≥ 10)")
    _title(ax, "model split", d, ("seq_len", "batch_size"))
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
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
