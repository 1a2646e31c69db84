"""The one style and the one drawing of each measured paper figure, from results rows only.

The runner (bench/plots.py: any experiment's figures) and the paper report (report/artifacts/*.py: the same
figures with the paper's values added) both draw here, so a figure has one drawing and one look: a fixed colour
per protocol and phase, measured values filled at the median with IQR bars (protocols.summaries.interval) and p90
crosses, paper values hollow (`paper`), a unit on every axis. A drawer takes an Axes and the rows (joined with the
runs table: protocol parameters as `protocol.<key>` columns) and returns what it drew, so a caller can add to it.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import FormatStrFormatter, MaxNLocator, NullFormatter  # noqa: E402

from protocols.palette import PROTOCOL_COLORS  # noqa: E402
from protocols.summaries import P90_MIN, interval_frame, workload_keys  # noqa: E402
from protocols.vocabulary import STIP_PHASES  # noqa: E402

RC: dict[str, Any] = {"font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9, "legend.fontsize": 7, "axes.grid": True,
      "grid.alpha": 0.3, "axes.spines.top": False, "axes.spines.right": False}
plt.style.use(RC)  # every figure of the process, the runner's and the report's, in one style

_DISPLAY = {"STIP": "stip", "full cloud": "full_cloud", "random projection": "random_projection", "CrypTen 2PC": "mpc",
            "permutation": "stip", "projection": "random_projection"}
NETWORK_COLORS = {"none": "#2ca02c", "wired": "#1f77b4", "wired_oneway": "#17becf", "wireless": "#d62728",
                  "wireless_oneway": "#ff7f0e"}  # the generation curves: a colour per network profile
PHASE_COLORS = dict(zip(STIP_PHASES, ["#aec7e8", "#6baed6", "#ff7f0e", "#7f7f7f", "#ffbb78", "#1f77b4"]))
COLORS = {**PROTOCOL_COLORS, **{name: PROTOCOL_COLORS[p] for name, p in _DISPLAY.items()}, **PHASE_COLORS,
          **NETWORK_COLORS, "modelled": "#bcbd22",
          "CipherGPT": "#8c564b", "Iron": "#e377c2", "THE-X": "#bcbd22", "SPU": "#17becf"}
NETWORK_STYLES = ["-", "--", ":", "-."]
MARKERS = "os^Dv<>pP*"
MEASURED = ("socket", "host", "engine")  # what a figure of measured time draws (not modelled, not shapes)
LINK_VALUES = ("bandwidth_bps", "rtt_s")
BELOW = "legend-below"  # the gid of a legend that save() places under its axes


# ---- primitives ----------------------------------------------------------------------------------------------

def readable(value: object) -> str:
    """A label a reader can read: tuples joined by ' · ', NaN and None dropped, floats without noise."""
    if isinstance(value, tuple):
        return " · ".join(readable(v) for v in value if not _missing(v))
    if _missing(value):
        return ""
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _missing(value: object) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def color(name: str) -> str:
    """The system's (or phase's) fixed colour; an unknown name gets a stable pick from the default cycle."""
    if name in COLORS:
        return COLORS[name]
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return cycle[sum(map(ord, name)) % len(cycle)]


def axes(ax: plt.Axes, x: str, x_unit: str | None, y: str, y_unit: str | None) -> None:
    """Axis labels with their units ('latency (ms)'); unit None only for categorical axes."""
    ax.set_xlabel(f"{x} ({x_unit})" if x_unit else x)
    ax.set_ylabel(f"{y} ({y_unit})" if y_unit else y)


def measured(ax: plt.Axes, x: Iterable, median: Iterable[float], lo: Iterable[float] | None = None,
             hi: Iterable[float] | None = None, label: str = "measured", system: str | None = None,
             marker: str = "o", line: bool = True, colour: str | None = None, linestyle: str = "-",
             p90: Iterable[float] | None = None) -> None:
    """Measured values: filled markers at the median, error bars lo-hi (the IQR) when given, p90 as a small cross
    where it is not NaN; `colour` overrides the system's colour."""
    x, y = list(x), [float(v) for v in median]
    c = colour or color(system or label)
    yerr = None
    if lo is not None and hi is not None:
        lo_l, hi_l = [float(v) for v in lo], [float(v) for v in hi]
        yerr = [[max(m - a, 0.0) for m, a in zip(y, lo_l)], [max(b - m, 0.0) for m, b in zip(y, hi_l)]]
    ax.errorbar(x, y, yerr=yerr, fmt=marker, linestyle=linestyle if line else "none", color=c, markerfacecolor=c,
                capsize=3, label=readable(label), linewidth=1.2, markersize=5)
    if p90 is not None:
        pts = [(a, float(v)) for a, v in zip(x, p90) if pd.notna(v)]
        if pts:
            ax.plot([a for a, _ in pts], [v for _, v in pts], linestyle="none", marker="x", color=c, markersize=4)


def paper(ax: plt.Axes, x: Iterable, y: Iterable[float], label: str = "paper", system: str | None = None,
          marker: str = "o", line: bool = False) -> None:
    """The paper's printed values: hollow markers labelled 'paper' (or 'paper: <system>')."""
    c = color(system or label.removeprefix("paper: "))
    ax.plot(list(x), [float(v) for v in y], marker=marker, linestyle="--" if line else "none", color=c,
            markerfacecolor="none", markeredgewidth=1.5, markersize=8, label=readable(label))


def paper_level(ax: plt.Axes, y: float, label: str = "paper", system: str | None = None,
                relation: str = "eq") -> None:
    """A paper value with no x position (a bound or a single number): a dashed horizontal line."""
    prefix = {"gt": "> ", "lt": "< ", "approx": "≈ "}.get(relation, "")
    ax.axhline(float(y), color=color(system or label.removeprefix("paper: ")), linestyle="--", linewidth=1,
               label=f"{readable(label)} ({prefix}{y:g})")


def assumed(ax: plt.Axes, text: str, loc: str = "lower right") -> None:
    """State an assumption on the plot itself ('assumed: 100 Mbit/s uplink')."""
    x, ha = (0.98, "right") if "right" in loc else (0.02, "left")
    y, va = (0.02, "bottom") if "lower" in loc else (0.98, "top")
    ax.text(x, y, f"assumed: {text}", transform=ax.transAxes, ha=ha, va=va, fontsize=7, style="italic",
            bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.8, "edgecolor": "0.8"})


def legend(ax: plt.Axes, outside: str | None = None, **kwargs) -> None:
    """One legend entry per label (repeated labels merged); `outside` ('right' or 'below') puts it beside the
    axes, never over the data ('below': under the tick labels and axis label, placed by `save`)."""
    handles, labels = ax.get_legend_handles_labels()
    seen: dict[str, Any] = {}
    for h, lab in zip(handles, labels):
        seen.setdefault(lab, h)
    if not seen:
        return
    if outside == "right":
        kwargs = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "frameon": False, **kwargs}
    elif outside == "below":
        kwargs = {"loc": "upper center", "bbox_to_anchor": (0.5, -0.2), "frameon": False, "ncol": 2, **kwargs}
    leg = ax.legend(list(seen.values()), list(seen), **kwargs)
    if outside == "below":
        leg.set_gid(BELOW)  # save() moves it under whatever the x axis draws


def _place_below(fig: plt.Figure) -> None:
    """Lay the figure out without the legends meant to go below, then put each under its axes' tick labels and
    x label (their height depends on rotation and line count, known only once drawn)."""
    below = [(ax, leg) for ax in fig.axes if (leg := ax.get_legend()) is not None and leg.get_gid() == BELOW]
    for _, leg in below:
        leg.set_visible(False)
    fig.tight_layout()
    fig.draw_without_rendering()
    for ax, leg in below:
        bbox = ax.get_tightbbox()
        bottom = bbox.y0 if bbox is not None else ax.get_window_extent().y0
        y = ax.transAxes.inverted().transform((0.0, bottom - 4))[1]
        leg.set_bbox_to_anchor((0.5, y), transform=ax.transAxes)
        leg.set_visible(True)


def save(fig: plt.Figure, out: Path, name: str, formats: Sequence[str] = ("png",)) -> list[Path]:
    """Write <out>/<name>.<format> for each format (PNG at 150 dpi), close the figure, return the paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.{f}" for f in formats]
    _place_below(fig)
    for p in paths:
        fig.savefig(p, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return paths


# ---- what varies between a figure's lines --------------------------------------------------------------------

def param(df: pd.DataFrame, key: str) -> pd.Series:
    """A protocol-parameter column (protocol.<key>), empty where no run has it."""
    return df.get(f"protocol.{key}", pd.Series(pd.NA, index=df.index, dtype="object"))


def spread(df: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Median ('value'), IQR (lo, hi) and p90 over repeats per group of `by` plus every other workload key present
    (a figure never pools runs whose workload differs; the extra keys label the line: `line_label`)."""
    keys = [*by, *(k for k in workload_keys(df) if k not in by)]
    m = interval_frame(df, keys).reset_index()
    return m.rename(columns={"median": "value", "q25": "lo", "q75": "hi"})


def line_label(r: pd.Series, keys: list[str]) -> str:
    """The values of `keys` that tell a figure's lines apart, named ('batch 10 · return_mode=topk')."""
    names = {"batch_size": "batch ", "seq_len": "seq ", "task": "task ", "bandwidth_bps": "bandwidth_bps=",
             "rtt_s": "rtt_s="}
    extra = [names.get(k, f"{k}=" if k.startswith("protocol.") else "") + str(r[k]) for k in keys
             if k in r and pd.notna(r[k]) and str(r[k])]
    return " · ".join(e.removeprefix("protocol.") for e in extra)


def line_keys(df: pd.DataFrame, fixed: tuple[str, ...], x_param: str | None = None) -> list[str]:
    """The workload keys that vary in `df` beyond `fixed`. With `x_param` (a protocol parameter on the x axis) the
    variant is replaced by the other varying protocol.* columns."""
    keys = [k for k in workload_keys(df) if k not in fixed and not (x_param and k == "variant")]
    if x_param:
        keys += [c for c in df.columns if c.startswith("protocol.") and c != f"protocol.{x_param}"]
    return _varying(df, keys)


def _varying(df: pd.DataFrame, keys: list[str]) -> list[str]:
    """The keys whose value differs between rows; the link's values only where they differ within one network."""
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


def _style(network: str, networks: list[str]) -> str:
    """A line style per network, stable within a figure."""
    return NETWORK_STYLES[sorted(networks).index(network) % len(NETWORK_STYLES)]


def request_totals(d: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """interval_frame of one request's total per group of `keys`: its phases summed within one run and one repeat,
    never across runs (two seeds of one workload are two runs, not one request twice as long)."""
    per_request = d.groupby([*keys, "run_id", "repeat"], dropna=False)["value"].sum().reset_index()
    return interval_frame(per_request, keys)


# ---- one drawing per measured paper figure ------------------------------------------------------------------

def throughput(ax: plt.Axes, rows: pd.DataFrame) -> pd.DataFrame:
    """Fig. 7(a): forward throughput vs parameters per protocol, network and varying configuration (a marker per
    configuration, a colour per protocol, a line style per network), log-log. Returns the points drawn."""
    d = rows[(rows.phase == "total") & (rows.metric == "throughput") & rows.source.isin(MEASURED)]
    m = spread(d, ["protocol", "network", "model", "n_params"])
    lines = ["protocol", "network", *line_keys(m, ("model", "network", "protocol"))]
    nets = sorted(m.network.dropna().unique())
    extras = sorted({line_label(r, lines[2:]) for _, r in m.iterrows()})
    for key, g in m.groupby(lines, dropna=False):
        proto, net = str(key[0]), key[1]
        g = g.sort_values("n_params")
        extra = line_label(g.iloc[0], lines[2:])
        measured(ax, g["n_params"], g["value"], g["lo"], g["hi"], system=proto,
                 marker=MARKERS[extras.index(extra) % len(MARKERS)], linestyle=_style(net, nets),
                 label=f"{proto.replace('_', ' ')} / {net}" + (f" · {extra}" if extra else ""),
                 p90=g["p90"].where(g["n"] >= P90_MIN))
    ax.set_xscale("log")  # lines over orders of magnitude of model size: log axes, never for bars
    ax.set_yscale("log")
    axes(ax, "parameters", "count", "throughput, median; bars IQR, x p90", "tokens/s")
    return m


def breakdown(ax: plt.Axes, rows: pd.DataFrame, extra: dict[str, dict[str, float]] | None = None) -> list[str]:
    """Fig. 7(d): one horizontal stacked bar per (protocol, network[, varying key]) of the per-phase medians (ms),
    the request total's median, IQR and p90 in black. `extra` adds rows of given phase values in seconds (the
    paper's) drawn hollow-hatched. Returns the bar labels, top to bottom."""
    d = rows[rows.phase.isin(STIP_PHASES) & (rows.metric == "latency") & rows.source.isin(MEASURED)]
    keys = ["model", "seq_len", "protocol", "network"]
    keys += line_keys(d, tuple(keys))
    m = d.groupby([*keys, "phase"], dropna=False)["value"].median().unstack("phase").fillna(0.0)
    m = m.reindex(columns=[p for p in STIP_PHASES if p in m.columns])
    totals = request_totals(d, keys).reindex(m.index)
    many = len(m.index.unique(0)) > 1 or len(m.index.unique(1)) > 1
    m.index = [f"{str(k[2]).replace('_', ' ')} / {k[3]}" + "".join(f" · {v}" for v in k[4:] if pd.notna(v) and str(v))
               + (f"\n{k[0]} · seq {k[1]}" if many else "") for k in m.index]
    labels = list(m.index)
    left = pd.Series(0.0, index=m.index)
    for phase in m.columns:
        ax.barh(m.index, m[phase] * 1e3, left=left * 1e3, color=PHASE_COLORS[phase], label=phase.replace("_", " "))
        left += m[phase]
    ax.errorbar(totals["median"].values * 1e3, range(len(m)), xerr=[
        (totals["median"].values - totals["q25"].values).clip(min=0) * 1e3,
        (totals["q75"].values - totals["median"].values).clip(min=0) * 1e3], fmt="|", color="black", capsize=3)
    has = (totals["n"] >= P90_MIN).to_numpy()
    if has.any():
        ax.plot(totals["p90"].to_numpy()[has] * 1e3, [i for i in range(len(m)) if has[i]], "x", color="black",
                markersize=4)
    for name, parts in (extra or {}).items():
        start = 0.0
        for phase, seconds in parts.items():
            ax.barh([name], [seconds * 1e3], left=[start * 1e3], facecolor="white", hatch="///",
                    edgecolor=PHASE_COLORS.get(phase, "black"))
            start += seconds
        ax.annotate(f"{start * 1e3:g} ms", (start * 1e3, name), xytext=(4, 0), textcoords="offset points",
                    va="center", fontsize=7)
        labels.append(name)
    ax.invert_yaxis()  # first bar on top, the order of the legend
    axes(ax, "latency per request: bars, median per phase; black: total's median, IQR, x p90", "ms", "", None)
    return labels


def model_split(ax: plt.Axes, rows: pd.DataFrame, source: str = "socket", what: str = "measured") -> None:
    """Fig. 9: end-to-end latency (ms) vs the number of on-device layers k, a line per model and network, from the
    total latency rows of `source` (the report adds its `modelled` rows, labelled by `what`)."""
    d = rows[(rows.phase == "total") & (rows.metric == "latency") & (rows.source == source)]
    d = d.assign(k=param(d, "device_layers")).dropna(subset=["k"])
    nets = sorted(d.network.dropna().unique())
    lines = ["model", "network", *line_keys(d, ("model", "network"), x_param="device_layers")]
    for key, g in d.groupby(lines, dropna=False):
        model, net = str(key[0]), key[1]
        m = interval_frame(g.assign(value=g.value * 1e3), ["k"]).sort_index()
        extra = line_label(g.iloc[0], lines[2:])
        measured(ax, m.index, m["median"], m["q25"], m["q75"], linestyle=_style(net, nets),
                 colour=color("model_split" if source == "socket" else source) if d.model.nunique() == 1
                 else color(model), label=f"{what}: {model} / {net}" + (f" · {extra}" if extra else ""), p90=m["p90"])
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # k counts layers
    axes(ax, "transformer layers on the device, k", "layers", "latency per request, median; bars IQR", "ms")


def generation(ax: plt.Axes, rows: pd.DataFrame) -> pd.DataFrame:
    """Fig. 7(c): latency since the first generated token vs tokens generated after it, per protocol, network and
    return mode: per step the median over repeats, summed (the prefill left out: the paper gives none). Log-log, so
    a constant cost per token is a straight line of slope 1 and the paper's slopes (s x n) lines beside it.
    Returns the curves drawn (protocol, network, return_mode, n, seconds)."""
    d = rows[(rows.phase == "token") & (rows.metric == "latency")]
    d = d.assign(return_mode=param(d, "return_mode").fillna("").astype(str))
    curves = []
    for (proto, net, mode), g in d.groupby(["protocol", "network", "return_mode"]):
        per_step = g.groupby("seq_len")["value"].median().sort_index()
        n = list(range(1, len(per_step) + 1))
        y = per_step.cumsum().to_numpy()
        label = f"measured: {str(proto).replace('_', ' ')} / {net}" + (f", return {mode}" if mode else "")
        # a colour per network (greys for full cloud), a line style per return mode
        c = ("#7f7f7f" if net == "none" else "#404040") if proto == "full_cloud" else color(str(net))
        measured(ax, n, y, marker="", linestyle="--" if mode == "full" else "-", colour=c, label=label)
        curves.append(pd.DataFrame({"protocol": proto, "network": net, "return_mode": mode, "n": n, "seconds": y}))
    ax.set_xscale("log")
    ax.set_yscale("log")
    axes(ax, "tokens generated after the first", "count, log scale", "latency since the first token", "s, log scale")
    return pd.concat(curves, ignore_index=True) if curves else pd.DataFrame()


TOKENIZERS = {"bert": "WordPiece (BERT, MiniLM)", "minilm": "WordPiece (BERT, MiniLM)", "smollm2": "BPE (SmolLM2)",
              "gpt2": "BPE (GPT-2)", "llama": "SentencePiece (LLaMA)", "vit": "ViT image processor"}


def tokenizer_of(model: str) -> str:
    """The tokenizer a model family shares (so one tokenizer is one point, however many models load it)."""
    return next((name for prefix, name in TOKENIZERS.items() if model.startswith(prefix)), model)


def memory(ax_embed: plt.Axes, ax_tok: plt.Axes | None, rows: pd.DataFrame) -> tuple[list[str], list[str]]:
    """Fig. 8: the embedding module's memory per model (left) and each distinct tokenizer's once (right, unless
    `ax_tok` is None; median, min-max over the models that load it), MiB on log axes. Returns both panels' x labels."""
    d = rows[(rows.metric == "memory") & rows.phase.isin(["device_embedding", "device_tokenizer"])]
    emb = d[d.phase == "device_embedding"].groupby("model")["value"].median().div(2**20).sort_values()
    names = list(emb.index)
    measured(ax_embed, range(len(names)), emb, label="embedding module (fp32, measured)", system="stip", line=False)
    ax_embed.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
    ax_embed.set_yscale("log")
    axes(ax_embed, "model", None, "embedding module on the device", "MiB")
    if ax_tok is None:
        return names, []
    tok = d[d.phase == "device_tokenizer"].groupby("model")["value"].median().div(2**20)
    t = tok.groupby(tok.index.map(tokenizer_of)).agg(["median", "min", "max", "count"])
    positive = t[t["median"] > 0]
    toks = list(t.index)
    measured(ax_tok, [toks.index(n) for n in positive.index], positive["median"], positive["min"], positive["max"],
             label="tokenizer (RSS growth, measured; bar: min-max over the models sharing it)", system="cloud_compute",
             marker="s", line=False)
    for name in t.index[t["median"] <= 0]:
        ax_tok.annotate("measured: 0 MiB\n(below the RSS step)", (toks.index(name), 0),
                        xycoords=("data", "axes fraction"), xytext=(0, 4), textcoords="offset points", ha="center",
                        fontsize=6)
    ax_tok.set_xticks(range(len(toks)), [f"{n.replace(' (', chr(10) + '(')}\n{int(c)} model{'s' * (c > 1)}"
                                         for n, c in t["count"].items()], fontsize=6)
    ax_tok.set_yscale("log")
    ax_tok.set_ylim(bottom=1.0, top=max(100.0, float(t["max"].max()) * 2))
    ax_tok.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax_tok.yaxis.set_minor_formatter(NullFormatter())
    axes(ax_tok, "tokenizer", None, "tokenizer on the device", "MiB")
    return names, toks


def param_dcor(ax: plt.Axes, rows: pd.DataFrame) -> list[str]:
    """Fig. 6(a): per model and transform, the mean dcor of original vs transformed weight matrices (min-max bar over
    the matrices), one x position per model (never pooled), the transforms side by side. Returns the models."""
    d = rows[(rows.phase == "parameters") & (rows.metric == "dcor")]
    d = d.assign(transform=param(d, "transform").fillna(d.protocol).astype(str))
    t = d.groupby(["model", "transform"])["value"].agg(["mean", "min", "max"]).reset_index()
    models = sorted(t.model.unique(), key=lambda m: float(d[d.model == m].n_params.max()))
    transforms = sorted(t["transform"].unique())
    for k, name in enumerate(transforms):
        g = t[t["transform"] == name].set_index("model").reindex(models)
        x = [i + (k - (len(transforms) - 1) / 2) * 0.2 for i in range(len(models))]
        measured(ax, x, g["mean"], g["min"], g["max"], label=f"{name.replace('_', ' ')} (measured; bar: min-max)",
                 system=name, line=False)
    ax.set_xticks(range(len(models)), models)
    axes(ax, "model", None, "parameter distance correlation (per weight row)", "1")
    return models


def embedding_dcor(panels: Sequence[plt.Axes], rows: pd.DataFrame, width: dict[str, int] | None = None,
                   real: Iterable[str] = ()) -> None:
    """Fig. 6(b): dcor of the embeddings and what is sent, per transform, one panel per convention (per-vector
    `dcor`, sample-wise `dcor_samples`): against the hidden size where `width` maps model -> d (log2 axis), else
    against the models in order of size; the models in `real` (real weights) as stars beside the lines."""
    d = rows[(rows.phase == "embeddings") & rows.metric.isin(["dcor", "dcor_samples"])]
    d = d.assign(transform=param(d, "transform").fillna(d.protocol).astype(str))
    order = list(d.groupby("model").n_params.max().sort_values().index)
    real = set(real)
    for ax, (metric, name) in zip(panels, {"dcor": "per-vector", "dcor_samples": "sample-wise"}.items()):
        m = d[d.metric == metric].groupby(["transform", "model"])["value"].median().reset_index()
        m["x"] = m.model.map(width) if width else m.model.map(order.index)
        for transform, g in m.groupby("transform"):
            g = g.sort_values("x")
            label = transform.replace("_", " ")
            lines, stars = g[~g.model.isin(real)], g[g.model.isin(real)]
            measured(ax, lines.x, lines.value, label=f"{label} (random tables)" if real else label, system=transform)
            if not stars.empty:
                measured(ax, stars.x, stars.value, label=f"{label} (real: {', '.join(sorted(stars.model))})",
                         system=transform, marker="*", line=False)
        if width:
            ax.set_xscale("log", base=2)
            axes(ax, "hidden size d", "features", f"distance correlation, {name}", "1")
        else:
            ax.set_xticks(range(len(order)), order, rotation=30, ha="right")
            axes(ax, "model (hidden size grows left to right)", None, f"distance correlation, {name}", "1")
