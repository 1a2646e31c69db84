"""The report's figure style: paper values hollow and labelled, measured filled with error bars, units on axes."""
import pandas as pd
from matplotlib.colors import to_rgba

from report import style


def test_paper_hollow_measured_filled_units_and_title(tmp_path):
    fig, ax = style.figure()
    summary = style.summarize(pd.DataFrame({"model": ["a", "a", "b"], "value": [1.0, 3.0, 2.0]}), ["model"])
    assert summary.drop(columns="p90").to_dict("list") == {
        "model": ["a", "b"], "median": [2.0, 2.0], "lo": [1.5, 2.0], "hi": [2.5, 2.0], "min": [1.0, 2.0],
        "max": [3.0, 2.0], "n": [2, 1]}  # lo-hi: the IQR (25th-75th percentile), min-max beside it
    assert summary.p90.isna().all()  # p90 only from 10 values
    style.measured(ax, summary["model"], summary["median"], summary["lo"], summary["hi"], label="STIP")
    style.paper(ax, ["a"], [2.5], label="paper", system="STIP")
    style.axes(ax, "model", None, "latency", "ms")
    style.title(ax, "Fig. X", "gpt2-124m, 1x32 tokens", host="2-core CPU")
    style.assumed(ax, "100 Mbit/s uplink")
    style.legend(ax)
    paper_line = [line for line in ax.get_lines() if line.get_label() == "paper"][0]
    assert paper_line.get_markerfacecolor() == "none"
    assert ax.get_ylabel() == "latency (ms)" and "2-core CPU" in ax.get_title()
    assert sorted(t.get_text() for t in ax.get_legend().get_texts()) == ["STIP", "paper"]
    assert to_rgba(style.color("STIP")) == to_rgba("#1f77b4")
    paths = style.save(fig, tmp_path, "fig")
    assert paths == [tmp_path / "fig.png"] and paths[0].stat().st_size > 1000


def test_readable_never_prints_tuples():
    assert style.readable(("gpt2-124m", 32, float("nan"))) == "gpt2-124m · 32"
    assert style.readable(0.5) == "0.5" and style.readable(None) == ""
    assert "core CPU" in style.host_label() or "GPU" in style.host_label()
