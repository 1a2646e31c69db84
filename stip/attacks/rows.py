"""One tidy row per measured number, in the schema the harness records (STIP.md, issue 12)."""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from typing import Any, Iterator

log = logging.getLogger(__name__)

ROW_FIELDS = ("attack", "model", "family", "assumption", "metric", "value", "unit", "n_queries", "seconds")


def row(attack: str, model: str, family: str, assumption: str, metric: str, value: float, unit: str,
        n_queries: int, seconds: float, **params: Any) -> dict[str, Any]:
    """A result row: the fixed fields first, then the attack's parameters (layer, sigma, n, ...)."""
    log.info("[%s] %s %s = %.4g %s (%.1f s) %s", model, attack, metric, value, unit, seconds, params)
    return {"attack": attack, "model": model, "family": family, "assumption": assumption,
            "metric": metric, "value": float(value), "unit": unit, "n_queries": int(n_queries),
            "seconds": float(seconds), **params}


@contextmanager
def timer() -> Iterator[list[float]]:
    """`with timer() as t: ...` then `t[0]` holds the elapsed seconds."""
    box = [0.0]
    start = time.perf_counter()
    try:
        yield box
    finally:
        box[0] = time.perf_counter() - start
