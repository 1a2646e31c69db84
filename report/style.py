"""One look for every report figure: paper values hollow, measured values filled with error bars.

Artifact modules draw with these helpers so a reader sees at a glance which point the paper printed and
which one this host measured: `paper()` draws hollow markers labelled "paper", `measured()` filled markers
with median and IQR error bars (`summarize`; the one definition: protocols.summaries.interval) and p90 where given,
`title()` names the workload and the host ("2-core CPU"), `axes()`
puts a unit on every axis, `assumed()` labels an assumed quantity (a bandwidth, a speed factor) on the
plot, `save()` writes a PNG. Labels pass through `readable()`, so no pandas tuple reaches a figure.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from protocols.palette import PROTOCOL_COLORS  # noqa: E402
from protocols.summaries import interval_frame  # noqa: E402
from report.artifacts._shared import measuring_cpu  # noqa: E402

# A fixed colour per system: the protocols' from protocols.palette (as bench/plots.py draws them), under their
# names and the report's display names, then the systems only the paper's numbers bring.
_DISPLAY = {"STIP": "stip", "full cloud": "full_cloud", "random projection": "random_projection", "CrypTen 2PC": "mpc"}
COLORS = {**PROTOCOL_COLORS, **{name: PROTOCOL_COLORS[p] for name, p in _DISPLAY.items()},
          "CipherGPT": "#8c564b", "Iron": "#e377c2", "THE-X": "#bcbd22", "SPU": "#17becf"}
RC = {"font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9, "legend.fontsize": 7, "axes.grid": True,
      "grid.alpha": 0.3, "axes.spines.top": False, "axes.spines.right": False}
plt.rcParams.update(RC)  # as bench/plots.py does: every figure of the process in one style


def host_label() -> str:
    """The host in a title's words: inside the report (report.artifacts._shared.measured_in) the CPU the results
    record of the host that measured them; elsewhere this host: '2-core CPU', or the GPU's name when torch sees one."""
    measured = measuring_cpu()
    if measured is not None:
        return measured
    try:
        import torch  # noqa: PLC0415 - only to name a GPU; figures draw without it

        if torch.cuda.is_available():
            return f"{torch.cuda.get_device_name(0)} GPU"
    except ImportError:
        pass
    return f"{os.cpu_count()}-core CPU"


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
    """The system's fixed colour; an unknown name gets a stable pick from the default cycle."""
    if name in COLORS:
        return COLORS[name]
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return cycle[sum(map(ord, name)) % len(cycle)]


def figure(ncols: int = 1, nrows: int = 1, width: float = 5.0, height: float = 3.5, **kwargs):
    """A new figure in the report's style: (fig, ax) for one panel, (fig, axes array) for several."""
    return plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=True, **kwargs)


def title(ax: plt.Axes, what: str, workload: str, host: str | None = None) -> None:
    """'what' on the first line, 'workload · host' on the second (host defaults to this machine)."""
    ax.set_title(f"{what}\n{workload} · {host or host_label()}", fontsize=9)


def axes(ax: plt.Axes, x: str, x_unit: str | None, y: str, y_unit: str | None) -> None:
    """Axis labels with their units ('latency (ms)'); unit None only for categorical or unitless axes ('1')."""
    ax.set_xlabel(f"{x} ({x_unit})" if x_unit else x)
    ax.set_ylabel(f"{y} ({y_unit})" if y_unit else y)


def summarize(df: pd.DataFrame, by: Sequence[str], value: str = "value") -> pd.DataFrame:
    """Per group: median, the IQR as lo-hi (25th-75th percentile), p90 (NaN below 10 values), min, max and count
    of `value`: the points and error bars of `measured()` (protocols.summaries.interval defines them once)."""
    if df.empty:
        return pd.DataFrame(columns=[*by, "median", "lo", "hi", "p90", "min", "max", "n"])
    m = interval_frame(df, list(by), value).reset_index()
    return m.rename(columns={"q25": "lo", "q75": "hi"})[[*by, "median", "lo", "hi", "p90", "min", "max", "n"]]


def measured(ax: plt.Axes, x: Iterable, median: Iterable[float], lo: Iterable[float] | None = None,
             hi: Iterable[float] | None = None, label: str = "measured", system: str | None = None,
             marker: str = "o", line: bool = True, colour: str | None = None,
             p90: Iterable[float] | None = None) -> None:
    """Measured values: filled markers at the median, error bars from lo to hi (the IQR from `summarize`, when
    given), p90 as a small cross where it is not NaN; `colour` overrides the system's colour (e.g. one per model
    where several share a panel)."""
    x, y = list(x), [float(v) for v in median]
    c = colour or color(system or label)
    yerr = None
    if lo is not None and hi is not None:
        lo_l, hi_l = [float(v) for v in lo], [float(v) for v in hi]
        yerr = [[max(m - a, 0.0) for m, a in zip(y, lo_l)], [max(b - m, 0.0) for m, b in zip(y, hi_l)]]
    ax.errorbar(x, y, yerr=yerr, fmt=marker + ("-" if line else ""), color=c, markerfacecolor=c, capsize=3,
                label=readable(label), linewidth=1.2, markersize=5)
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


def legend(ax: plt.Axes, **kwargs) -> None:
    """One legend entry per label (repeated labels merged)."""
    handles, labels = ax.get_legend_handles_labels()
    seen: dict[str, object] = {}
    for h, lab in zip(handles, labels):
        seen.setdefault(lab, h)
    if seen:
        ax.legend(list(seen.values()), list(seen), **kwargs)


def save(fig: plt.Figure, out: Path, name: str) -> list[Path]:
    """Write <out>/<name>.png (150 dpi), close the figure, return [path]."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return [path]
