"""A finished run's status from its own accuracy rows: `ok`, or `diverged` with the check that failed.

A run whose output is non-finite, or whose accuracy (phase `output`, protocols.accuracy) misses its protocol's
`AccuracyBound`, still has valid timings, so its rows are kept; the status keeps them from passing as a result.
The top-1 check reads forward accuracy only (sources with a `max_abs_error` row): a one-token generation's
agreement is a single sample per sequence, too few to judge an approximation by.
"""
from __future__ import annotations

import math

import pandas as pd

from protocols.contract import AccuracyBound


def run_status(rows: pd.DataFrame, bound: AccuracyBound | None) -> tuple[str, str | None]:
    """("ok", None) or ("diverged", why): which check failed, the measured value, the bound and the way out."""
    acc = rows[rows.phase == "output"] if "phase" in rows else rows.iloc[0:0]
    failures: list[str] = []
    for source, g in acc.groupby("source", sort=True):
        values = {m: g[g.metric == m].value for m in ("diverged_fraction", "max_abs_error", "top1_agreement")}
        div = values["diverged_fraction"]
        if (not div.empty and float(div.max()) > 0) or (not values["max_abs_error"].empty
                                                          and values["max_abs_error"].isna().any()):
            frac = float(div.max()) if not div.empty else float("nan")
            failures.append(f"non-finite output ({source}: diverged_fraction {frac:.3g})")
            continue
        if bound is None:
            continue
        err = values["max_abs_error"]
        if bound.max_abs_error is not None and not err.empty and float(err.max()) > bound.max_abs_error:
            failures.append(f"max_abs_error {float(err.max()):.3g} > bound {bound.max_abs_error:.3g} ({source})")
        top1 = values["top1_agreement"]
        if bound.min_top1 is not None and not err.empty and not top1.empty:
            low = float(top1.min())
            if math.isnan(low) or low < bound.min_top1:
                failures.append(f"top1_agreement {low:.4g} < bound {bound.min_top1:.4g} ({source})")
    if not failures:
        return "ok", None
    holds = f" [{bound.holds}]" if bound is not None and bound.holds else ""
    return "diverged", f"{'; '.join(failures)}{holds}"
