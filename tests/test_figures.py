"""What a reader checks on each paper figure, drawn from the committed results: the paper's value is plotted on the
same axes as the measurement, no legend covers a data point, no series hides another, one measurement is drawn
once. The figures are caught before saving (report.style.save) and their artists read back."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from bench import plots
from protocols import plotting
from protocols.paths import COMMITTED_RESULTS_DIR
from protocols.results_schema import read_rows, with_runs
from report import style
from report.artifacts import (
    fig2,
    fig6a,
    fig6b,
    fig7a,
    fig7b,
    fig7c,
    fig7d,
    fig8,
    fig9,
    indexing,
    kpa_bfa,
    millions,
    paper_value,
    tab2,
    tab5,
    traffic,
)


@pytest.fixture
def drawn(monkeypatch, tmp_path):
    """Draw one artifact's figure from the committed results; return the laid-out Figure (skip when the experiment
    is not in results/)."""
    figs: list[Figure] = []

    def keep(fig: Figure, out: Path, name: str, formats: tuple[str, ...] = ("png",)) -> list[Path]:
        plotting._place_below(fig)
        fig.canvas.draw()
        figs.append(fig)
        return [out / f"{name}.png"]

    monkeypatch.setattr(style, "save", keep)

    def draw(module) -> Figure:
        if not module.figure(COMMITTED_RESULTS_DIR, tmp_path):
            pytest.skip(f"{module.__name__}: its experiment is not in the committed results")
        return figs[-1]
    return draw


def _values(ax: Axes) -> np.ndarray:
    """Every number the axes plot: line vertices (x and y) and bar extents."""
    out: list[float] = []
    for line in ax.get_lines():
        for data in (line.get_xdata(), line.get_ydata()):
            out += [float(v) for v in np.asarray(data, dtype=object).ravel() if isinstance(v, (int, float, np.number))]
    for patch in ax.patches:
        if hasattr(patch, "get_width"):
            out += [float(patch.get_width()), float(patch.get_height())]
    return np.array(out)


def _plotted(fig: Figure, value: float) -> bool:
    return any(np.isclose(_values(ax), value, rtol=1e-6).any() for ax in fig.axes)


def test_fig7c_paper_slopes_beside_the_curves_on_log_log_axes(drawn):
    fig = drawn(fig7c)
    ax = fig.axes[0]
    for rid in fig7c.PAPER_SLOPE.values():
        assert np.isclose(_values(ax), paper_value(rid, "s/token") * 100, rtol=1e-6).any(), rid
    # a straight line s x n stays straight only where both axes share a scale (the old figure: log y, linear x)
    assert ax.get_xscale() == ax.get_yscale() == "log"


def test_fig7d_paper_milliseconds_readable_on_a_log_panel(drawn):
    fig = drawn(fig7d)
    bars, phases = fig.axes[0], fig.axes[1]
    for rid in ("fig7d-device-extra", "fig7d-cloud-stip"):
        assert np.isclose(_values(phases), paper_value(rid, "ms"), rtol=1e-6).any(), rid
    assert phases.get_yscale() == "log"
    labels = [t.get_text() for t in bars.get_yticklabels()]
    assert any(lab.startswith("paper:") for lab in labels)  # the paper's own bars beside the measured ones


def test_fig8_paper_memory_values_and_each_tokenizer_once(drawn):
    fig = drawn(fig8)
    for rid in ("fig8-tokenizer-vit", "fig8-tokenizer-llama2", "fig8-embedding-llama2-70b"):
        assert _plotted(fig, paper_value(rid, "MiB")), rid
    tok = fig.axes[1]
    ticks = [t.get_text() for t in tok.get_xticklabels()]
    assert sum("WordPiece" in t for t in ticks) == 1  # five BERT-family models, one tokenizer, one point


def test_millions_plots_the_printed_and_the_derived_ratio(drawn):
    fig = drawn(millions)
    printed = paper_value("fig7b-throughput-improvement", "x")
    quotient = paper_value("fig7a-stip-gpt2-124m-throughput", "token/s") / paper_value("fig7a-ciphergpt-throughput",
                                                                                          "token/s")
    assert _plotted(fig, printed) and _plotted(fig, quotient) and _plotted(fig, millions.MILLION)


def _overlapping(texts, renderer) -> list[tuple[str, str]]:
    """Pairs of drawn, non-empty texts whose boxes overlap."""
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts if t.get_visible() and t.get_text()]
    return [(a, b) for i, (a, ba) in enumerate(boxes) for b, bb in boxes[i + 1:] if ba.overlaps(bb)]


def test_millions_sets_the_papers_method_beside_the_same_host_ratios(drawn):
    """The paper-method reading (STIP's batched prefill here / CipherGPT's reported rate) has a row per batch,
    labelled by its method like the 2PC rows, at the values REPORT gives; no tick label collides with another."""
    fig = drawn(millions)
    ax = fig.axes[0]
    points = millions.paper_method_points(COMMITTED_RESULTS_DIR)
    if points.empty:
        pytest.skip("no fig7a_throughput rows in the committed results")
    ticks = [t.get_text() for t in ax.get_yticklabels()]
    method = [t for t in ticks if t.startswith("paper's method, here: ")]
    assert len(method) == len(points) and sum(t.endswith("(best)") for t in method) == 1
    assert all(t.startswith(("paper: ", "paper's method, here: ", "2PC / STIP, one host: ")) for t in ticks)
    assert len(set(ticks)) == len(ticks)
    for ratio in points.ratio:
        assert _plotted(fig, ratio), ratio
    best = millions._paper_method_row(COMMITTED_RESULTS_DIR, pd.Series(dtype=float))
    assert np.isclose(points[points.best].ratio.iloc[0], best.measured)  # the figure's best row is REPORT's number
    renderer = fig.canvas.get_renderer()
    assert _overlapping(ax.get_yticklabels(), renderer) == []
    assert _overlapping(ax.get_xticklabels(), renderer) == []


def test_tab2_no_series_hides_another(drawn):
    ax = drawn(tab2).axes[0]
    series = [set(map(tuple, np.round(np.asarray(line.get_xydata(), dtype=float), 3))) for line in ax.get_lines()
              if len(line.get_xdata()) > 1]
    assert len(series) >= 3
    for i, a in enumerate(series):
        for b in series[i + 1:]:
            assert not a & b  # d! and the unstructured Q/K key coincide in value: they must not in position


@pytest.mark.parametrize("module", [fig2, fig6a, fig6b, fig7a, fig7b, fig7c, fig7d, fig8, fig9, indexing, kpa_bfa,
                                    millions, tab2, tab5, traffic])
def test_no_legend_covers_a_data_point(drawn, module):
    fig = drawn(module)
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        legend = ax.get_legend()
        if legend is None:
            continue
        box = legend.get_window_extent(renderer)
        for line in ax.get_lines():
            xy = line.get_xydata()
            if line.get_marker() in (None, "None", "", " ") or not len(xy):
                continue  # lines without markers (a level, a curve) may pass behind a legend
            try:
                pts = ax.transData.transform(np.asarray(xy, dtype=float))
            except (TypeError, ValueError):
                continue
            near = box.padded(line.get_markersize() / 2 * fig.dpi / 72)  # a marker's edge counts, not its centre
            inside = [(x, y) for x, y in pts if near.contains(x, y)]
            assert not inside, f"{module.__name__}: legend covers {line.get_label()!r}"


def test_runner_memory_figure_draws_each_tokenizer_once(tmp_path, monkeypatch):
    folder = COMMITTED_RESULTS_DIR / "fig8_memory"
    if not (folder / "rows.parquet").is_file():
        pytest.skip("fig8_memory is not in the committed results")
    rows = with_runs(read_rows(folder), pd.read_parquet(folder / "runs.parquet"))
    figs: list[Figure] = []
    monkeypatch.setattr(plotting, "save", lambda fig, out, name, formats=("png",): figs.append(fig) or [out / name])
    assert plots.fig8_memory(rows, tmp_path)
    tok = figs[0].axes[1]
    n_tokenizers = len({plotting.tokenizer_of(m) for m in rows[rows.phase == "device_tokenizer"].model})
    assert len(tok.get_xticklabels()) == n_tokenizers
