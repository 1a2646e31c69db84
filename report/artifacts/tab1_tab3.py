"""Tab. 1 (design goals of full cloud, Iron, THE-X, CipherGPT, STIP) and Tab. 3 (testbeds): qualitative.

Neither table prints a number; the rows say so and point at the artifacts where the harness checks each
goal, and how this host differs from the paper's testbeds.
"""
from __future__ import annotations

from pathlib import Path

from report.artifacts import Comparison
from report.artifacts._shared import PAPER_HOST, host

ARTIFACT = "tab1_tab3"
EXPERIMENTS: tuple[str, ...] = ()


def compare(results: Path) -> list[Comparison]:
    """Two qualitative rows: Tab. 1's goals (checked elsewhere) and Tab. 3's testbeds (not this host)."""
    return [
        Comparison(ARTIFACT, "design goals met per system (Tab. 1)", "none", "qualitative",
                   reported_id="tab1-design-goals", source="configs/reported/stip_paper.yaml",
                   reason="Tab. 1 is a checklist with no number; the harness checks the goals where they are "
                          "measurable: efficiency in fig7a/fig2/millions, accuracy in tab5, data and parameter "
                          "privacy in fig6a/fig6b/tab4/kpa_bfa."),
        Comparison(ARTIFACT, "testbeds (Tab. 3)", "none", "qualitative", reported_id="tab3-testbeds",
                   workload=f"every experiment here: {host()}",
                   differences=PAPER_HOST,
                   source="configs/reported/stip_paper.yaml",
                   reason="Tab. 3 describes hardware, not a result: absolute times here cannot match it, "
                          "ratios and bytes can (each artifact's differences column says which it compares)."),
    ]
