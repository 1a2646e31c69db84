"""One fixed colour per protocol, read by the runner's figures (bench/plots.py) and the report's (report/style.py),
so a protocol looks the same in every figure without two tables kept in step by hand."""
from __future__ import annotations

PROTOCOL_COLORS = {"stip": "#1f77b4", "full_cloud": "#7f7f7f", "model_split": "#2ca02c",
                   "random_projection": "#d62728", "mpc": "#9467bd"}
