"""Sec. 7.1: "The indexing-based approach is more computationally efficient than matrix multiplication."

Read from `make bench-micro` (results/micro/stip_micro.csv, benchmarks/bench_stip_micro.py
`test_indexing_vs_permutation_matrix_product`): time of stip.transform.permute_features over time of x @ P
with the dense permutation matrix, timed interleaved, median of per-repeat ratios. The paper prints no
timing; the claim holds when the ratio is below 1.
"""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from report import style
from report.artifacts import Comparison
from report.artifacts._shared import host, not_measured

ARTIFACT = "indexing"
EXPERIMENTS = ("micro",)
CSV = Path("micro") / "stip_micro.csv"
BENCH = re.compile(r"indexing_vs_permutation_matmul\[(\d+)x(\d+)\]")
COMMAND = "make bench-micro"
REPORTED = "indexing-vs-matmul"


def _rows(results: Path) -> pd.DataFrame:
    path = Path(results) / CSV
    if not path.is_file():
        return pd.DataFrame()
    table = pd.read_csv(path)
    shapes = table.benchmark.str.extract(BENCH)
    table = table.assign(rows=pd.to_numeric(shapes[0]), d=pd.to_numeric(shapes[1])).dropna(subset=["d"])
    for col in ("ratio_min", "ratio_max"):
        if col not in table:
            table[col] = table["ratio"]
    return table.sort_values("d")


def compare(results: Path) -> list[Comparison]:
    """One row per hidden size: indexing time / permutation-matrix time (< 1: the paper's claim holds)."""
    table = _rows(results)
    if table.empty:
        return [not_measured(ARTIFACT, "permutation by indexing / by permutation-matrix product", "x", COMMAND,
                             REPORTED, why="results/micro/stip_micro.csv holds no indexing_vs_permutation_matmul row")]
    out = []
    for r in table.itertuples():
        holds = r.ratio < 1
        out.append(Comparison(
            ARTIFACT, f"time to permute {r.rows:.0f} x {r.d:.0f} features: indexing / dense matrix product", "x",
            "reproduced" if holds else "differs", measured=float(r.ratio), reported_id=REPORTED,
            spread=f"median of {getattr(r, 'repeats', '?')} repeats, range {r.ratio_min:.3g}-{r.ratio_max:.3g}; "
                   f"{r.stip_median_s * 1e3:.3g} ms vs {r.baseline_median_s * 1e3:.3g} ms",
            workload=f"{r.rows:.0f} token rows, hidden size {r.d:.0f}, fp32, {r.torch_threads} torch threads",
            differences=f"here: {host()}; the paper gives no timing or shape",
            reason=(f"indexing is {1 / r.ratio:.0f}x faster than the matrix product, as Sec. 7.1 says" if holds else
                    f"indexing took {r.ratio:.2f}x the matrix product's time on this host (measured {r.time})"),
            source="results/micro/stip_micro.csv (benchmarks/bench_stip_micro.py)"))
    return out


def figure(results: Path, out: Path) -> list[Path]:
    """Ratio indexing / matrix product per hidden size, min-max over repeats; below 1: the claim holds."""
    table = _rows(results)
    if table.empty:
        return []
    fig, ax = style.figure(width=4.5)
    labels = [f"d = {d:.0f}" for d in table.d]
    style.measured(ax, labels, table.ratio, table.ratio_min, table.ratio_max, label="measured: indexing / matmul",
                   system="STIP", line=False)
    ax.axhline(1.0, color="0.3", linestyle=":", linewidth=1, label="parity (paper: indexing is faster, < 1)")
    ax.set_yscale("log")
    style.axes(ax, "hidden size", None, "time ratio indexing / matrix product", "x")
    style.title(ax, "Sec. 7.1: feature permutation by indexing vs x @ P",
                f"{table.rows.iloc[0]:.0f} token rows, fp32")
    ax.set_ylim(top=10)
    style.legend(ax, loc="upper right")
    return style.save(fig, out, "indexing_vs_matmul")
