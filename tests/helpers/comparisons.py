"""Picking report rows (report.artifacts.Comparison) in tests."""
from __future__ import annotations

from collections.abc import Iterable

from report.artifacts import Comparison


def one_row(rows: Iterable[Comparison], text: str) -> Comparison:
    """The single row whose quantity contains `text` (fails listing every quantity otherwise)."""
    rows = list(rows)
    found = [r for r in rows if text in r.quantity]
    assert len(found) == 1, [r.quantity for r in rows]
    return found[0]
