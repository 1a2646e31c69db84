"""What the latency artifacts (fig7a, fig7c, generation_3s, fig7d, fig9) share beyond _shared.py: a run's protocol
parameter per row, and the least-squares per-token slope of a generation's latency curve.

Not an artifact module (the leading underscore keeps `report.artifacts.modules()` from listing it).
"""
from __future__ import annotations

import numpy as np
import pandas as pd


def param(df: pd.DataFrame, name: str, default: object) -> pd.Series:
    """The protocol.<name> column (the run's protocol parameter), `default` where a run lacks it."""
    col = f"protocol.{name}"
    return df[col].fillna(default) if col in df else pd.Series(default, index=df.index)


def token_curve(run_rows: pd.DataFrame, repeat: int) -> tuple[np.ndarray, np.ndarray]:
    """(generated token index, cumulative latency in s) of one repeat: token 1 at the prefill's latency."""
    r = run_rows[run_rows.repeat == repeat]
    prefill = r[(r.phase == "prefill") & (r.metric == "latency")]["value"]
    tokens = r[(r.phase == "token") & (r.metric == "latency")].sort_values("seq_len")["value"].to_numpy()
    start = float(prefill.iloc[0]) if len(prefill) else 0.0
    cumulative = start + np.concatenate([[0.0], np.cumsum(tokens)])
    return np.arange(1, len(cumulative) + 1), cumulative


def slope_s(x: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope of y over x (NaN for fewer than 3 points: no line to fit)."""
    if len(x) < 3:
        return float("nan")
    return float(np.polyfit(x.astype(float), y.astype(float), 1)[0])


def generation_slopes(rows: pd.DataFrame) -> pd.DataFrame:
    """One line per (run, repeat): protocol, network, return mode, the fitted per-token slope (s/token) over the
    decode tokens (prefill excluded), the tokens generated, the whole request's latency (s) and, where the protocol
    has one round trip per token (STIP), the mean link time of a decode round trip (uplink + downlink): `link_s`
    measured at the socket through the emulated link (host overhead included), `link_model_s` the profile's
    rtt/2 + bytes / bandwidth per message on the bytes measured (what the emulated link waits); NaN otherwise."""
    out = []
    rows = rows.assign(return_mode=param(rows, "return_mode", "full"))
    phases = ("prefill", "token", "generate", "uplink", "downlink")
    for (run_id, repeat), g in rows[rows.phase.isin(phases)].groupby(["run_id", "repeat"]):
        x, y = token_curve(g, int(repeat))
        total = g[(g.phase == "generate") & (g.metric == "latency") & (g.source == "socket")]["value"]
        links = g[g.phase.isin(("uplink", "downlink")) & (g.metric == "latency")]
        link, link_model = links[links.source == "socket"]["value"], links[links.source == "modelled"]["value"]
        first = g.sort_values("seq_len").iloc[0]
        out.append({"run_id": run_id, "repeat": int(repeat), "protocol": first.protocol, "network": first.network,
                    "model": first.model, "return_mode": first.return_mode, "prompt": int(g.seq_len.min()),
                    "tokens": len(x), "slope_s": slope_s(x[1:], y[1:]),
                    "generate_s": float(total.iloc[0]) if len(total) else float("nan"),
                    "link_s": float(link.sum()) if len(link) == 2 and first.protocol == "stip" else float("nan"),
                    "link_model_s": float(link_model.sum()) if len(link_model) == 2 and first.protocol == "stip"
                    else float("nan")})
    return pd.DataFrame(out)

