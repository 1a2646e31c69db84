"""One fixed colour per protocol, read by the one figure style (protocols/plotting.py) that the runner's figures
(bench/plots.py) and the report's (report/style.py) both draw with."""
from __future__ import annotations

PROTOCOL_COLORS = {"stip": "#1f77b4", "full_cloud": "#7f7f7f", "model_split": "#2ca02c",
                   "random_projection": "#d62728", "mpc": "#9467bd"}
