"""Fig. 6(a): distance correlation of original and transformed parameters, STIP vs random projection.

Experiment fig6a_param_dcor: the first 8 weight matrices (embeddings excluded) of GPT2-1.5b at its published shape
with random weights (one layer: the per-layer matrices keep their shape), and of the real MiniLM and SmolLM2, in
the per-vector convention (per weight row, every element). STIP permutes both sides of each matrix with its keys;
random projection multiplies the hidden side by a d x d Gaussian matrix. The paper's 0.062 / 0.76 are averages
over tensors it does not name, of the deployed GPT2-1.5b (weights not stated to be pretrained).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from report import style
from report.artifacts import Comparison, paper_value
from report.artifacts._shared import experiment_rows, host_differences, not_measured

ARTIFACT = "fig6a"
EXPERIMENTS = ("fig6a_param_dcor",)
COMMAND = "python -m bench -m experiment=fig6a_param_dcor"
SYSTEM = {"stip": "STIP", "random_projection": "random projection"}
PAPER = {"STIP": "fig6a-stip-dcor", "random projection": "fig6a-random-projection-dcor"}
CLOSE = 0.3


def param_table(results: Path) -> pd.DataFrame:
    """Per model and system: mean, min, max and count of the per-tensor parameter dcor."""
    rows = experiment_rows(results, "fig6a_param_dcor")
    if rows is None:
        return pd.DataFrame()
    rows = rows[(rows.phase == "parameters") & (rows.metric == "dcor")]
    rows = rows.assign(system=rows.protocol.map(SYSTEM))
    return rows.groupby(["model", "system"], as_index=False)["value"].agg(["mean", "min", "max", "count"])


def compare(results: Path) -> list[Comparison]:
    """GPT2-1.5b's mean parameter dcor per system beside the paper's; the real-weight models as context rows."""
    table = param_table(results)
    if table.empty:
        return [not_measured(ARTIFACT, f"mean parameter dcor, GPT2-1.5b, {s}", "1", COMMAND, rid)
                for s, rid in PAPER.items()]
    out = []
    for system, rid in PAPER.items():
        paper = paper_value(rid, "1")
        for model in ("gpt2-1.5b", "minilm-l6", "smollm2-135m"):
            r = table[(table.model == model) & (table.system == system)]
            if r.empty:
                if model == "gpt2-1.5b":
                    out.append(not_measured(ARTIFACT, f"mean parameter dcor, GPT2-1.5b, {system}", "1", COMMAND, rid))
                continue
            r = r.iloc[0]
            ok = abs(r["mean"] / paper - 1) <= CLOSE
            real = model != "gpt2-1.5b"
            out.append(Comparison(
                ARTIFACT, f"mean parameter dcor, original vs {system}, {model}" + (" (real weights)" if real else
                                                                                  " (random weights)"), "1",
                "reproduced" if ok else "differs", measured=float(r["mean"]), paper=paper, reported_id=rid,
                spread=f"{int(r['count'])} weight matrices, range {r['min']:.3g}-{r['max']:.3g}",
                workload=f"{model}, first {int(r['count'])} weight matrices of layer 0, per-vector (per row)",
                differences=host_differences("the paper's tensors and convention are not stated"
                                             + ("; another model than the paper's GPT2-1.5b" if real else "")),
                reason="" if ok else (
                    f"{r['mean'] / paper:.2g}x the paper's: per row, a permutation of d values gives the "
                    "permutation dcor of d samples (~0.02-0.04 at these widths)" if system == "STIP" else
                    f"{r['mean'] / paper:.2g}x the paper's: a Gaussian projection mixes every value of a row, so "
                    "per-row dcor stays near the permutation's; the paper's projection is not described"),
                source="fig6a_param_dcor: parameters/dcor"))
    return out


def figure(results: Path, out: Path) -> list[Path]:
    """Mean parameter dcor per model and transform (protocols.plotting.param_dcor), the paper's GPT2-1.5b values
    hollow beside them."""
    rows = experiment_rows(results, "fig6a_param_dcor", runs=True)
    if rows is None or param_table(results).empty:
        return []
    fig, ax = style.figure(width=5.5, height=4.0)
    models = style.param_dcor(ax, rows)
    if "gpt2-1.5b" in models:
        for k, (system, protocol) in enumerate((("STIP", "stip"), ("random projection", "random_projection"))):
            value = paper_value(PAPER[system], "1")
            style.paper(ax, [models.index("gpt2-1.5b") + (k - 0.5) * 0.2], [value],
                        label=f"paper: {system}, GPT2-1.5b ({value:g})", system=protocol)
    ax.set_xticks(range(len(models)), [m + ("\n(real)" if m in ("minilm-l6", "smollm2-135m") else "\n(random)")
                                       for m in models])
    style.title(ax, "Fig. 6(a): original vs transformed weights", "first 8 matrices of layer 0")
    style.legend(ax, outside="below", ncol=2, fontsize=6)
    return style.save(fig, out, "fig6a_param_dcor")
