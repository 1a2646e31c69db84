"""The report's artifact modules (fig7b, millions, indexing, kpa_bfa, tab1_tab3) on a small synthetic results
folder: each row's number, status and command come from the files, and every figure is drawn."""
import json
from pathlib import Path

import pandas as pd
import pytest

from protocols.results_schema import typed
from report import writer
from report.artifacts import STATUSES, fig7b, indexing, kpa_bfa, millions, tab1_tab3
from report.reported import load_artifacts

from helpers.comparisons import one_row

GPT2, TINY, BASE = 124439808, 4385920, 109482240


def _rows(records: list[dict]) -> pd.DataFrame:
    base = {"run_id": "r", "approx": None, "security": None, "batch_size": 1, "seed": 0, "unit": "s"}
    return typed(pd.DataFrame([{**base, **r} for r in records]))


def _run(experiment, protocol, model, n_params, network, seq_len, values, phase="total", metric="latency",
         source="modelled", approx=None, run_id=None):
    return [{"run_id": run_id or f"{experiment}-{protocol}-{approx}-{model}-{network}", "experiment": experiment,
             "protocol": protocol, "approx": approx, "model": model, "n_params": n_params, "network": network,
             "seq_len": seq_len, "phase": phase, "metric": metric, "source": source, "value": v, "repeat": i,
             "security": "2pc-dealer-is-server" if protocol == "mpc" else None} for i, v in enumerate(values)]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("results")
    (root / "micro").mkdir()
    pd.DataFrame([
        {"benchmark": "indexing_vs_permutation_matmul[128x768]", "stip_median_s": 5e-5, "baseline_median_s": 5e-4,
         "ratio": 0.1, "ratio_min": 0.08, "ratio_max": 0.12, "repeats": 5, "target": "< 1", "met": True,
         "torch_threads": 2, "time": "t"},
        {"benchmark": "indexing_vs_permutation_matmul[128x64]", "stip_median_s": 1.3e-6, "baseline_median_s": 1e-6,
         "ratio": 1.3, "ratio_min": 1.2, "ratio_max": 1.4, "repeats": 5, "target": "< 1", "met": False,
         "torch_threads": 2, "time": "t"},
        {"benchmark": "device_permute_recover_vs_copy", "stip_median_s": 1, "baseline_median_s": 1, "ratio": 1.0,
         "ratio_min": 1, "ratio_max": 1, "repeats": 5, "target": "", "met": "", "torch_threads": 2, "time": "t"},
    ]).to_csv(root / "micro" / "stip_micro.csv", index=False)
    (root / "privacy").mkdir()
    pd.DataFrame([{"experiment": "privacy", "attack": "known_plaintext", "model": m, "family": m, "assumption": "a",
                   "metric": "pi_recovered", "value": v, "unit": "fraction", "n_queries": n, "seconds": 0.01,
                   "defence": None, "dcor": 0.1, "dcor_samples": 1.0,
                   "parameters": json.dumps({"n": n, "d": 64, "sigma_rel": 0.0})}
                  for m, n, v in (("gpt2", 1, 1.0), ("gpt2", 4, 1.0), ("bert", 1, 0.5))]
                 ).to_parquet(root / "privacy" / "rows.parquet")
    (root / "mpc_vs_stip").mkdir()
    _rows(_run("mpc_vs_stip", "mpc", "bert-tiny", TINY, "lan", 32, [10.0], approx="puma")
          + _run("mpc_vs_stip", "mpc", "bert-tiny", TINY, "lan", 32, [20.0], approx="crypten")
          + _run("mpc_vs_stip", "stip", "bert-tiny", TINY, "lan", 32, [0.011, 0.01, 0.009])
          ).to_parquet(root / "mpc_vs_stip" / "rows.parquet")
    (root / "mpc_bert_base").mkdir()
    _rows(_run("mpc_bert_base", "mpc", "bert-base", BASE, "puma_lan", 128, [300.0], approx="puma")
          ).to_parquet(root / "mpc_bert_base" / "rows.parquet")
    (root / "quick").mkdir()
    _rows(_run("quick", "stip", "gpt2-124m", GPT2, "none", 32, [100.0, 120.0, 110.0], metric="throughput",
               source="socket", run_id="q")
          + _run("quick", "stip", "gpt2-124m", GPT2, "none", 32, [0.3, 0.28, 0.29], source="socket", run_id="q")
          ).to_parquet(root / "quick" / "rows.parquet")
    return root


def test_indexing_rows_follow_the_measured_ratio(results):
    rows = indexing.compare(results)
    assert [(r.measured, r.status) for r in rows] == [(1.3, "differs"), (0.1, "reproduced")]  # sorted by d
    assert "range 0.08-0.12" in rows[1].spread


def test_kpa_rows_one_pair_per_model_and_the_key_space(results):
    rows = kpa_bfa.compare(results)
    assert one_row(rows, "1 known pair(s), gpt2").status == "reproduced"
    assert one_row(rows, "1 known pair(s), bert").status == "differs"
    assert not [r for r in rows if "4 known pair(s)" in r.quantity]
    assert one_row(rows, "feature dimension d").measured == 4096
    assert one_row(rows, "Q/K permutation").measured == pytest.approx(35.4, abs=0.1)  # log10(32!)


def test_kpa_ties_are_the_papers_exception_only_when_more_pairs_recover_all(tmp_path):
    """89.8% from one pair is Sec. 5.3's identical-columns exception when two pairs recover all of pi (the ties are
    then broken), a failure when no run with more pairs does; noise-defence rows are extensions."""
    (tmp_path / "privacy").mkdir()
    pd.DataFrame([{"experiment": "privacy", "attack": "known_plaintext", "model": m, "family": m, "assumption": "a",
                   "metric": "pi_recovered", "value": v, "unit": "fraction", "n_queries": n, "seconds": 0.01,
                   "defence": None, "dcor": 0.1, "dcor_samples": 1.0,
                   "parameters": json.dumps({"n": n, "d": 64, "sigma_rel": s})}
                  for m, n, v, s in (("tied", 1, 0.9, 0.0), ("tied", 2, 1.0, 0.0), ("bad", 1, 0.9, 0.0),
                                     ("bad", 2, 0.95, 0.0), ("tied", 8, 0.3, 1.0))]
                 ).to_parquet(tmp_path / "privacy" / "rows.parquet")
    rows = kpa_bfa.compare(tmp_path)
    tied, bad = one_row(rows, "1 known pair(s), tied"), one_row(rows, "1 known pair(s), bad")
    assert tied.status == "reproduced" and "100% from 2" in tied.reason and "identical columns" in tied.reason
    assert bad.status == "differs" and "not the identical-columns exception" in bad.reason
    assert one_row(rows, "noise defence").scope == "extension"


def test_millions_ratio_on_one_host_and_the_missing_stip_run(results):
    rows = millions.compare(results)
    tiny = one_row(rows, "bert-tiny")
    assert tiny.measured == pytest.approx(10.0 / 0.01) and tiny.status == "differs"  # fastest approximation
    assert "slowest gives 2e+03" in tiny.spread
    base = one_row(rows, "bert-base")
    assert base.status == "not_measured" and "protocol=stip model=bert-base run.seq_len=128" in base.reason
    assert one_row(rows, "paper's numbers").measured == pytest.approx(45366 / 6.7e-4)


def test_fig7b_scale_and_the_paper_method_throughput(results):
    rows = fig7b.compare(results)
    assert one_row(rows, "served end to end").measured == GPT2
    assert one_row(rows, "2PC arm (CrypTen) ran").measured == BASE
    tp = one_row(rows, "measured here / CipherGPT")
    assert tp.measured == pytest.approx(110 / 6.7e-4) and tp.status == "not_reproducible"
    assert one_row(rows, "baselines' largest (paper").measured == pytest.approx(208.33, abs=0.01)


def test_every_module_draws_its_figure_and_tab1_tab3_is_qualitative(results, tmp_path):
    for mod in (fig7b, indexing, kpa_bfa, millions):
        paths = mod.figure(results, tmp_path)
        assert paths and all(p.suffix == ".png" and p.stat().st_size > 5000 for p in paths), mod.__name__
    assert {r.status for r in tab1_tab3.compare(results)} == {"qualitative"}


def test_modules_on_an_empty_folder_say_what_to_run(tmp_path):
    for mod, command in ((indexing, "make bench-micro"), (kpa_bfa, "bench.privacy"), (millions, "mpc_vs_stip")):
        missing = [r for r in mod.compare(tmp_path) if r.status == "not_measured"]
        assert missing and command in missing[0].reason, mod.__name__
        assert mod.figure(tmp_path, tmp_path / "figures") == []


def test_the_report_over_these_results_gives_every_artifact_a_status(results, tmp_path):
    md, csv = writer.write(results, out=tmp_path)
    table = pd.read_csv(csv)
    assert set(load_artifacts()) <= set(table.artifact) and table.status.isin(list(STATUSES)).all()
    assert not table.reason.fillna("").str.contains("raised").any()
    figures = pd.read_csv(tmp_path / "report_figures.csv")
    assert {"fig7b", "millions", "indexing", "kpa_bfa"} <= set(figures.artifact)
    assert all((tmp_path / p).is_file() for p in figures.path)
    assert "![indexing: indexing_vs_matmul](figures/indexing_vs_matmul.png)" in md.read_text()
