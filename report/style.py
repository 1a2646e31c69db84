"""One look for every report figure: paper values hollow, measured values filled with error bars.

The style and the drawing of the measured paper figures live in protocols.plotting (the runner's figures use the
same); this module re-exports them and adds what only the report needs. A reader sees at a glance which point the
paper printed and which one this host measured: `paper()` draws hollow markers labelled "paper", `measured()`
filled markers with median and IQR error bars (`summarize`; the one definition: protocols.summaries.interval)
and p90 where given, `title()` names the workload and the host ("2-core CPU"), `axes()`
puts a unit on every axis, `assumed()` labels an assumed quantity (a bandwidth, a speed factor) on the
plot, `save()` writes a PNG. Labels pass through `readable()`, so no pandas tuple reaches a figure.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from protocols.plotting import (  # noqa: F401 - the report's figures draw with the one style, re-exported here
    COLORS,
    assumed,
    axes,
    breakdown,
    color,
    embedding_dcor,
    generation,
    legend,
    measured,
    memory,
    model_split,
    paper,
    paper_level,
    param_dcor,
    readable,
    throughput,
)
from protocols.plotting import save as _save
from protocols.summaries import interval_frame
from report.artifacts._shared import measuring_host


def host_label() -> str:
    """The host in a title's words: inside the report (report.artifacts._shared.measured_in) the CPU, and the cloud's
    GPU where one is recorded, of the host that measured the results; elsewhere this host: '2-core CPU', or the GPU's
    name when torch sees one."""
    recorded = measuring_host()
    if recorded is not None:
        return recorded
    try:
        import torch  # noqa: PLC0415 - only to name a GPU; figures draw without it

        if torch.cuda.is_available():
            return f"{torch.cuda.get_device_name(0)} GPU"
    except ImportError:
        pass
    return f"{os.cpu_count()}-core CPU"



def figure(ncols: int = 1, nrows: int = 1, width: float = 5.0, height: float = 3.5, **kwargs):
    """A new figure in the report's style: (fig, ax) for one panel, (fig, axes array) for several."""
    return plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=True, **kwargs)


def title(ax: plt.Axes, what: str, workload: str, host: str | None = None) -> None:
    """'what' on the first line, 'workload · host' on the second (host defaults to this machine)."""
    ax.set_title(f"{what}\n{workload} · {host or host_label()}", fontsize=9)


def summarize(df: pd.DataFrame, by: Sequence[str], value: str = "value") -> pd.DataFrame:
    """Per group: median, the IQR as lo-hi (25th-75th percentile), p90 (NaN below 10 values), min, max and count
    of `value`: the points and error bars of `measured()` (protocols.summaries.interval defines them once)."""
    if df.empty:
        return pd.DataFrame(columns=[*by, "median", "lo", "hi", "p90", "min", "max", "n"])
    m = interval_frame(df, list(by), value).reset_index()
    return m.rename(columns={"q25": "lo", "q75": "hi"})[[*by, "median", "lo", "hi", "p90", "min", "max", "n"]]


def save(fig: plt.Figure, out: Path, name: str, formats: Sequence[str] = ("png",)) -> list[Path]:
    """Write <out>/<name>.png (150 dpi; and the other `formats`), close the figure, return the paths."""
    return _save(fig, out, name, formats)
