"""Benchmark results as CSV: the first write of a test session truncates the file, later ones append."""
from __future__ import annotations

import csv
import os
from pathlib import Path

_started: set[Path] = set()  # CSVs this session has already truncated


def append_rows(env_var: str, header: list[str], rows: list[list]) -> None:
    """Append `rows` to the CSV that `env_var` names (header first on this session's first write); no-op if unset."""
    path = os.environ.get(env_var)
    if not path:
        return
    results = Path(path)
    results.parent.mkdir(parents=True, exist_ok=True)
    fresh = results not in _started
    _started.add(results)
    with results.open("w" if fresh else "a", newline="") as fh:
        writer = csv.writer(fh)
        if fresh:
            writer.writerow(header)
        writer.writerows(rows)
