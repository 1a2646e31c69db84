"""Fig. 9: end-to-end latency against the number of transformer layers on the device (model split, k = 0..20).

Measured: results/fig9_model_split (configs/experiment/fig9_model_split.yaml): real SmolLM2-135M (30 layers),
wired profile. Device and cloud share this host, so the device's measured compute is multiplied by the declared
`protocol.device_slowdown` in the `modelled` rows (the socket rows stay as measured); the paper prints no
latency, only the trend ("rises proportionally") and the verdict (embedding only is optimal).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from report import style
from report.artifacts import Comparison
from report.artifacts._latency import param
from report.artifacts._shared import experiment_rows, host_differences

ARTIFACT = "fig9"
EXPERIMENTS = ("fig9_model_split",)
COMMAND = "python -m bench -m experiment=fig9_model_split"


def latencies(results: Path) -> pd.DataFrame | None:
    """Per (k, slowdown, source, repeat): the request's total latency (s): `socket` as measured, `modelled` with the
    device compute x slowdown."""
    rows = experiment_rows(results, "fig9_model_split", runs=True)
    if rows is None or rows.empty:
        return None
    rows = rows.assign(k=param(rows, "device_layers", 1).astype(int),
                       slowdown=param(rows, "device_slowdown", 1.0).astype(float))
    m = rows[(rows.phase == "total") & (rows.metric == "latency")]
    return m[["model", "seq_len", "network", "k", "slowdown", "source", "repeat", "value"]]


def compare(results: Path) -> list[Comparison]:
    """The trend (least-squares ms per device layer, monotone?) and the optimal split, on the modelled rows."""
    table = latencies(results)
    if table is None:
        return [Comparison(ARTIFACT, "latency vs on-device layers rises; embedding only is optimal", "none",
                           "not_measured", reported_id="fig9-latency-trend", reason=f"run `{COMMAND}`")]
    out = []
    r = table.iloc[0]
    for source in ("modelled", "socket"):
        t = table[table.source == source]
        if t.empty:
            continue
        med = t.groupby("k")["value"].median().sort_index()
        slowdown = float(t.slowdown.iloc[0])
        how = f"device compute x {slowdown:g} (declared device_slowdown)" if source == "modelled" else \
            "as measured: device and cloud at the same speed on one host"
        work = f"{r.model}, {r.seq_len} tokens, batch 1, {r.network}, k = {', '.join(map(str, med.index))}; {how}"
        diff = host_differences("paper model not stated")
        per_layer = float(np.polyfit(med.index.to_numpy(float), med.to_numpy() * 1e3, 1)[0]) if len(med) > 1 else None
        rising = bool((med.diff().dropna() > 0).all())
        out.append(Comparison(ARTIFACT, f"latency added per on-device layer ({source})", "ms",
                              "reproduced" if rising else "differs", measured=per_layer,
                              reported_id="fig9-latency-trend", workload=work, differences=diff,
                              source=f"fig9_model_split total latency ({source}), least squares over k",
                              reason="" if rising else "not rising at every step: with both halves on one host a layer "
                              "costs the same on either side, so only the link and noise move the total"))
        best = int(med.idxmin())
        out.append(Comparison(ARTIFACT, f"fastest split ({source}): device layers", "layers",
                              "reproduced" if best == 0 else "differs", measured=float(best), paper=0.0,
                              reported_id="fig9-embedding-only-optimal", workload=work, differences=diff,
                              source=f"fig9_model_split total latency ({source}), medians",
                              reason="" if best == 0 else "device as fast as the cloud here, so a split costs nothing"))
    return out


def figure(results: Path, out: Path) -> list[Path]:
    """Latency vs device layers, measured (same host) and modelled (declared slowdown), drawn by
    protocols.plotting.model_split; the paper prints no latency, only that embedding only (k = 0) is fastest."""
    table = latencies(results)
    rows = experiment_rows(results, "fig9_model_split", runs=True)
    if table is None or rows is None:
        return []
    fig, ax = style.figure(width=6.0, height=4.2)
    style.model_split(ax, rows, source="socket", what="measured (one host)")
    slowdown = float(table[table.source == "modelled"].slowdown.max()) if (table.source == "modelled").any() else None
    if slowdown is not None:
        style.model_split(ax, rows, source="modelled", what=f"modelled: device x {slowdown:g} slower")
    ax.axvline(0, color=style.color("STIP"), linestyle="--", linewidth=1,
               label="paper: fastest at k = 0 (embedding only); latency rises with k, no values printed")
    r = table.iloc[0]
    ax.set_xlim(left=-0.8)  # the paper's k = 0 line clear of the axis
    style.title(ax, "Fig. 9 model split", f"{r.model}, {r.seq_len} tokens, {r.network}")
    style.legend(ax, outside="below", ncol=1, fontsize=7,
                 title="assumed: " + (f"device {slowdown:g}x slower than the cloud; " if slowdown else "")
                 + "100 Mbit/s wired", title_fontsize=7)
    return style.save(fig, out, "fig9")
