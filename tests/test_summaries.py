"""Summaries never pool runs: each summary function fed two distinct runs keeps them apart (or, for two seeds of one
workload, takes each run's sums on its own before pooling); console lines and tables name their sources, statuses
and non-latency quantities; intervals are one definition (IQR, p90 from 10 values)."""
from __future__ import annotations

import pandas as pd
import pytest
from rich.console import Console

from bench import plots
from bench.aggregate import headline
from bench.console_answer import print_answer, run_line, summary_frame
from bench.results import RunReport, atomic_write_parquet, to_frame
from bench.runs_table import join_runs, run_record, runs_frame, variants
from protocols import plotting
from protocols.contract import Row
from protocols.plotting import request_totals
from protocols.results_schema import ROWS
from protocols.summaries import accuracy_table, interval, latency_table
from report import style

STIP_STEPS = ("device_embed", "device_permute", "cloud_compute", "device_recover")


def _ctx(run_id: str, **kw) -> dict:
    ctx = {"run_id": run_id, "experiment": "t", "protocol": "stip", "approx": None, "model": "m", "n_params": 1,
           "network": "none", "batch_size": 1, "seq_len": 8, "seed": 0}
    return {**ctx, **kw}


def _stip_run(run_id: str, step_s: float = 0.025, repeats: int = 3, **kw) -> pd.DataFrame:
    """A forward run at network none: four compute steps of step_s, the modelled total their sum."""
    rows = []
    for i in range(repeats):
        rows += [Row(p, "latency", step_s, "host", repeat=i) for p in STIP_STEPS]
        rows += [Row("total", "latency", 4 * step_s, "modelled", repeat=i),
                 Row("total", "latency", 4 * step_s + 0.001, "socket", repeat=i),
                 Row("total", "bytes", 100.0, "socket", repeat=i), Row("total", "rounds", 1.0, "socket", repeat=i)]
    rows.append(Row("output", "top1_agreement", 1.0, "host", repeat=0))
    return to_frame(rows, _ctx(run_id, **kw))


def test_latency_table_sums_phases_within_a_run_never_across_seeds():
    rows = pd.concat([_stip_run("a", seed=0), _stip_run("b", seed=1)], ignore_index=True)
    table = latency_table(rows)
    assert len(table) == 1 and table.repeats[0] == 6
    # at network none the compute part is the modelled latency: two seeds summed would give 0.2 under 0.1
    assert table.compute_s[0] == pytest.approx(table.latency_modelled_s[0]) == pytest.approx(0.1)


def test_latency_table_keeps_links_with_one_base_name_apart():
    rows = pd.concat([_stip_run("a", network="wan"), _stip_run("b", 0.05, network="wan[rtt_s=0.3]")])
    table = latency_table(rows).set_index("network")
    assert table.loc["wan", "latency_modelled_s"] == pytest.approx(0.1)
    assert table.loc["wan[rtt_s=0.3]", "latency_modelled_s"] == pytest.approx(0.2)
    # a link that differs only by its values (network label as the runner wrote it) is a key of its own, too
    a, b = _stip_run("a").assign(rtt_s=0.04), _stip_run("b", 0.05).assign(rtt_s=0.3)
    rows = pd.concat([a, b], ignore_index=True)
    assert len(latency_table(rows)) == 2


def test_summary_frame_keeps_engines_and_variants_apart():
    rows = pd.concat([_stip_run("a", protocol="mpc", engine="crypten"), _stip_run("b", 0.05, protocol="mpc",
                                                                                 engine="spu")])
    table = summary_frame(rows).set_index("engine")
    assert table.loc["crypten", "latency_s"] == pytest.approx(0.101) and table.loc["spu", "runs"] == 1
    runs = pd.DataFrame({"run_id": ["a", "b"], "protocol": ["stip", "stip"], "status": ["ok", "ok"],
                         "protocol.return_mode": ["full", "topk"]})
    joined = join_runs(pd.concat([_stip_run("a"), _stip_run("b", 0.05)]), runs)
    assert sorted(summary_frame(joined).variant) == ["return_mode=full", "return_mode=topk"]


def test_accuracy_table_keeps_engines_apart():
    def acc(run_id, engine, top1):
        return to_frame([Row("output", "top1_agreement", top1, "engine", repeat=0)],
                        _ctx(run_id, protocol="mpc", engine=engine))
    table = accuracy_table(pd.concat([acc("a", "crypten", 0.5), acc("b", "spu", 1.0)]))
    assert sorted(table.top1_agreement) == [0.5, 1.0]


def test_headline_keeps_protocol_configurations_apart():
    recs = [{"run_id": f"{p}{mode}", "protocol": p, "network": "lan", "phase": "cloud_compute", "metric": "latency",
             "source": "socket", "value": v, "model": "m", "seq_len": 8, "batch_size": 1, "reference_protocol": "fc",
             "variant": mode}
            for p, mode, v in (("stip", "return_mode=full", 2.0), ("stip", "return_mode=topk", 1.0), ("fc", "", 1.0))]
    out = headline(pd.DataFrame(recs))
    ratios = sorted(v["ratio"] for v in out.values())
    assert ratios == [1.0, 2.0], out  # pooled, the two would give one ratio of 1.5


def test_figure_totals_sum_within_a_run():
    rows = pd.concat([_stip_run("a", seed=0), _stip_run("b", seed=1)])
    d = rows[rows.phase.isin(STIP_STEPS)]
    totals = request_totals(d, ["model", "network"])
    assert totals["median"].iloc[0] == pytest.approx(0.1) and totals["n"].iloc[0] == 6


def test_interval_is_iqr_with_p90_from_ten_values():
    iv = interval([1.0, 2.0, 3.0, 4.0, 5.0])
    assert (iv["median"], iv["q25"], iv["q75"], iv["n"]) == (3.0, 2.0, 4.0, 5) and pd.isna(iv["p90"])
    assert interval(range(1, 11))["p90"] == pytest.approx(9.1)
    s = style.summarize(pd.DataFrame({"k": ["a"] * 10, "value": range(1, 11)}), ["k"])
    assert (s.lo[0], s.hi[0], s.p90[0]) == (pytest.approx(3.25), pytest.approx(7.75), pytest.approx(9.1))


def _report(run_id="r1", status="ok", **kw) -> RunReport:
    cfg = {"protocol": {"name": "mpc", "engine": "spu"}, "model": {"name": "bert-tiny"},
           "network": {"name": "lan"}, "run": {"seq_len": 8, "batch_size": 1, "task": "forward"}}
    return RunReport(run_id=run_id, experiment="t", config=cfg, status=status, **kw)


def test_mpc_line_names_its_total_and_prints_bytes_and_rounds(tmp_path):
    rows = [Row("total", "latency", 138.0, "modelled", repeat=0), Row("compute", "latency", 26.2, "engine", repeat=0),
            Row("total", "bytes", 4.6e9, "engine", repeat=0), Row("total", "rounds", 1985.0, "engine", repeat=0),
            Row("linear", "latency", 1.0, "engine", repeat=0), Row("activation", "latency", 0.8, "engine", repeat=0)]
    atomic_write_parquet(tmp_path / ROWS, to_frame(rows, _ctx("r1", protocol="mpc")))
    line = run_line(_report(), tmp_path)
    assert "total: modelled 138 s" in line and "()" not in line and "(," not in line
    assert "4.6 GB sent, 1985 rounds (engine)" in line
    assert "compute 26.2 s (engine) by operator class: linear 1 s, activation 800 ms; outside them 24.4 s" in line


def test_stip_line_shows_measured_and_modelled(tmp_path):
    atomic_write_parquet(tmp_path / ROWS, _stip_run("r1"))
    line = run_line(_report(), tmp_path)
    assert "total: measured 101 ms (socket" in line and ", modelled 100 ms" in line and "1 round (socket)" in line
    assert "[NOISY" not in line


def test_diverged_and_noisy_runs_are_loud(tmp_path):
    atomic_write_parquet(tmp_path / ROWS, _stip_run("r1"))
    report = _report(status="diverged", status_reason="top-1 1.2% < bound 90%", noisy=["load 3.1 > 2 cores"])
    line = run_line(report, tmp_path)
    assert line.startswith("DIVERGED (top-1 1.2% < bound 90%) mpc") and "[NOISY: load 3.1 > 2 cores]" in line
    runs = runs_frame([{**run_record(report), "run_id": "r1"}])
    assert runs.status_reason[0] == "top-1 1.2% < bound 90%" and runs.noisy[0] == "load 3.1 > 2 cores"
    console = Console(record=True, width=220)
    print_answer(join_runs(_stip_run("r1"), runs), [], "t", console=console)
    text = console.export_text()
    assert "DIVERGED (top-1 1.2% < bound 90%)" in text and "NOISY host: load 3.1 > 2 cores" in text
    assert "│ DIVERGED NOISY" in text  # the table's own cell, the reasons printed under it
    assert "latency (median, socket)" in text and "IQR" in text


def test_conditions_become_columns_and_absence_is_tolerated():
    r = run_record(_report(conditions={"cores": 2, "threads": {"cloud": 1}}))
    assert r["conditions.cores"] == 2 and r["conditions.threads"] == '{"cloud": 1}'
    assert "conditions.cores" not in run_record(_report())


def test_memory_and_dcor_sweeps_print_their_quantities(tmp_path):
    mem = to_frame([Row("device_embedding", "memory", 16.5e6, "host", repeat=0)], _ctx("r1"))
    atomic_write_parquet(tmp_path / ROWS, mem)
    assert "memory: device_embedding 16.5 MB" in run_line(_report(), tmp_path)
    arms = [to_frame([Row("embeddings", "dcor", v, "host", repeat=0)], _ctx(rid, protocol="random_projection"))
            for rid, v in (("p", 0.16), ("r", 0.175))]
    runs = pd.DataFrame({"run_id": ["p", "r"], "protocol": ["random_projection"] * 2, "status": ["ok", "ok"],
                         "protocol.transform": ["permutation", "random_projection"], "protocol.seed": [0, 0]})
    assert variants(runs).to_dict() == {"p": "transform=permutation", "r": "transform=random_projection"}
    console = Console(record=True, width=200)
    print_answer(join_runs(pd.concat(arms), runs), [], "fig6", console=console)
    text = console.export_text()
    assert "transform=permutation" in text and "dcor: embeddings 0.16" in text and "dcor: embeddings 0.175" in text
    assert "latency" not in text.split("\n", 1)[1].lower()  # no column of dashes for a quantity that is not there


def test_figure_points_keep_configurations_apart(tmp_path):
    runs = pd.DataFrame({"run_id": ["a", "b"], "protocol": ["stip", "stip"], "status": ["ok", "ok"],
                         "protocol.return_mode": ["full", "topk"]})
    rows = join_runs(pd.concat([_stip_run("a"), _stip_run("b", 0.05)]), runs)
    d = rows[(rows.phase == "total") & (rows.source == "socket") & (rows.metric == "latency")]
    points = plotting.spread(d, ["protocol", "network", "model"])
    assert sorted(points.value) == [pytest.approx(0.101), pytest.approx(0.201)]  # pooled: one point at 0.151
    acc = rows.assign(engine=rows.run_id.map({"a": "crypten", "b": "spu"}))
    acc.loc[acc.run_id == "b", "value"] = 0.5
    (path,) = plots.table5_accuracy(acc, tmp_path)
    assert sorted(pd.read_csv(path).top1_agreement) == [0.5, 1.0]


def test_run_line_names_the_parameters_a_run_set(tmp_path):
    atomic_write_parquet(tmp_path / ROWS, to_frame([Row("embeddings", "dcor", 0.16, "host", repeat=0)], _ctx("r1")))
    report = _report()
    report.config["protocol"] = {"name": "random_projection", "transform": "permutation", "dcor_vectors": 16}
    assert run_line(report, tmp_path).startswith("random_projection[transform=permutation] · bert-tiny · lan")
    report.config["protocol"]["transform"] = "random_projection"  # the file's own value: nothing to say
    assert run_line(report, tmp_path).startswith("random_projection · bert-tiny · lan")
