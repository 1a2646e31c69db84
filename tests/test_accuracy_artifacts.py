"""The accuracy artifact modules (tab5, tab2, tab4, traffic, fig8, fig6a, fig6b) on a synthetic results folder:
statuses and numbers follow the files, a missing experiment gives not_measured rows with the command, figures draw."""
import json
from pathlib import Path

import pandas as pd
import pytest

from protocols.results_schema import typed
from report.artifacts import fig6a, fig6b, fig8, tab2, tab4, tab5, traffic

from helpers.comparisons import one_row

MIB = 2**20


def _rows(experiment: str, model: str, records: list[tuple], batch=1, seq_len=32, protocol="stip", run_id=None):
    base = {"run_id": run_id or f"{experiment}-{model}-{protocol}", "experiment": experiment, "protocol": protocol,
            "approx": None, "security": None, "model": model, "n_params": 1, "network": "none",
            "batch_size": batch, "seq_len": seq_len, "seed": 0, "unit": "x", "repeat": 0}
    return [{**base, "phase": p, "metric": m, "source": s, "value": v} for p, m, s, v in records]


def _accuracy(experiment, model, sum_abs, top1=1.0, batch=4, seq_len=256):
    return _rows(experiment, model, [("output", "sum_abs_error", "host", sum_abs), ("output", "top1_agreement", "host",
                                                                                   top1),
                                     ("output", "max_abs_error", "host", 1e-6)], batch, seq_len)


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("results")
    for name in ("tab5_full", "tab5_full_vit", "traffic_gpt2", "fig8_memory", "fig6_dcor", "fig6a_param_dcor"):
        (root / name).mkdir()
    typed(pd.DataFrame(_accuracy("tab5_full", "gpt2-124m", 0.028) + _accuracy("tab5_full", "bert-base", 5e-4)
                       + _accuracy("tab5_full", "smollm2-135m", 0.5, top1=0.999))
          ).to_parquet(root / "tab5_full" / "rows.parquet")
    typed(pd.DataFrame(_accuracy("tab5_full_vit", "vit-base", 6e-4, batch=6, seq_len=197))
          ).to_parquet(root / "tab5_full_vit" / "rows.parquet")
    (root / "tab5_stream").mkdir()
    pd.DataFrame([{"model": "llama2-7b", "layer": 0, "stage": "hidden", "metric": "max_abs_error", "value": 1e-5,
                   "positions": 64},
                  {"model": "llama2-7b", "layer": 1, "stage": "logits", "metric": "sum_abs_error", "value": 0.06,
                   "positions": 64},
                  {"model": "llama2-7b", "layer": 1, "stage": "logits", "metric": "top1_agreement", "value": 1.0,
                   "positions": 64},
                  {"model": "llama2-7b", "layer": 1, "stage": "logits", "metric": "max_abs_error", "value": 1e-5,
                   "positions": 64}]).to_parquet(root / "tab5_stream" / "stream.parquet")
    traffic_rows = []
    for t in (39, 1024):
        up, down = t * (768 * 4 + 8), t * 50257 * 4
        traffic_rows += _rows("traffic_gpt2", "gpt2-124m", [("uplink", "bytes", "socket", up + 300),
                                                            ("uplink", "bytes", "shapes", up),
                                                            ("downlink", "bytes", "socket", down + 300),
                                                            ("downlink", "bytes", "shapes", down)],
                              seq_len=t, run_id=f"t{t}")
    typed(pd.DataFrame(traffic_rows)).to_parquet(root / "traffic_gpt2" / "rows.parquet")
    mem = []
    for model, emb, tok in (("llama2-70b", 1000.0, None), ("vit-base", 2.83, 0.0), ("vit-large", 3.78, 0.0),
                            ("smollm2-135m", 108.0, 45.6), ("minilm-l6", 45.5, 15.0)):
        mem += _rows("fig8_memory", model, [("device_embedding", "memory", "host", emb * MIB)]
                     + ([("device_tokenizer", "memory", "host", tok * MIB)] if tok is not None else []))
    typed(pd.DataFrame(mem)).to_parquet(root / "fig8_memory" / "rows.parquet")
    dcor, runs = [], []
    values = {("bert-tiny", "permutation"): (0.155, 1.0), ("bert-tiny", "random_projection"): (0.15, 0.93),
              ("llama2-70b", "permutation"): (0.019, 1.0), ("llama2-70b", "random_projection"): (0.023, 0.95),
              ("minilm-l6", "permutation"): (0.09, 1.0), ("minilm-l6", "random_projection"): (0.1, 0.9)}
    for (model, transform), (per_vector, samples) in values.items():
        rid = f"{model}-{transform}"
        dcor += _rows("fig6_dcor", model, [("embeddings", "dcor", "host", per_vector),
                                           ("embeddings", "dcor_samples", "host", samples)],
                      protocol="random_projection", run_id=rid)
        runs.append({"run_id": rid, "protocol.transform": transform})
    typed(pd.DataFrame(dcor)).to_parquet(root / "fig6_dcor" / "rows.parquet")
    pd.DataFrame(runs).to_parquet(root / "fig6_dcor" / "runs.parquet")
    param = []
    for protocol, vals in (("stip", [0.05, 0.07]), ("random_projection", [0.04, 0.06])):
        for i, v in enumerate(vals):
            param += [{**r, "repeat": i} for r in _rows("fig6a_param_dcor", "gpt2-1.5b",
                                                        [("parameters", "dcor", "host", v)], protocol=protocol)]
    typed(pd.DataFrame(param)).to_parquet(root / "fig6a_param_dcor" / "rows.parquet")
    (root / "tab4_generation").mkdir()
    (root / "tab4_generation" / "generation.json").write_text(json.dumps({
        "model": "smollm2-135m", "prompt": "I'm a language model,", "decoding": "greedy", "max_new_tokens": 4,
        "plaintext": " and I'm", "stip": " and I'm", "stip_equals_plaintext": True, "cloud_on_plaintext": " x x x",
        "cloud_top1_agreement": 0.0, "cloud_top1_positions": 150, "chance": 2e-5}))
    return root


def test_tab5_rows_follow_the_measured_models(results):
    rows = tab5.compare(results)
    gpt2 = one_row(rows, "GPT2-124m")
    assert gpt2.status == "reproduced" and gpt2.measured == pytest.approx(0.028) and "1,024" not in gpt2.reason
    assert "4 x 256 tokens" in gpt2.workload
    assert one_row(rows, "BERT-110m").status == "differs"  # 0.056x: outside the factor of 10
    llama = one_row(rows, "LLaMA2-7b")
    assert llama.status == "reproduced" and "streamed" in llama.workload and "not the checkpoint" in llama.differences
    assert one_row(rows, "LLaMA2-70b").status == "not_measured" and \
        "bench.layer_stream" in one_row(rows, "LLaMA2-70b").reason
    assert one_row(rows, "ViT-307m").status == "not_measured" and "tab5_full_vit" in one_row(rows, "ViT-307m").reason
    assert one_row(rows, "LLaVA-13b").status == "not_reproducible"
    assert one_row(rows, "smollm2-135m (real").status == "differs"  # top-1 99.9%
    assert tab5.figure(results, results / "fig")[0].is_file()


def test_tab5_without_results_names_the_commands(tmp_path):
    rows = tab5.compare(tmp_path)
    assert {r.status for r in rows} == {"not_measured", "not_reproducible"}


def test_tab2_rope_and_gqa_shrink_the_qk_key(results):
    rows = tab2.compare(results)
    llama = one_row(rows, "one layer's Q/K permutation, llama2-7b")
    assert llama.measured == pytest.approx(35.4, abs=0.1)  # log10(32!): whole heads only under RoPE
    assert one_row(rows, "data key pi, llama2-70b").measured == pytest.approx(28503.1, abs=0.1)
    assert one_row(rows, "llama2-70b: grouped-query attention").measured < 89
    assert tab2.figure(results, results / "fig")[0].is_file()


def test_traffic_rows_show_no_token_count_fits_both_numbers(results):
    rows = traffic.compare(results)
    assert one_row(rows, "downlink of one GPT-2 124M STIP pass at 39 tokens").status == "reproduced"
    assert one_row(rows, "uplink of one GPT-2 124M STIP pass at 39 tokens").status == "differs"
    assert one_row(rows, "uplink of one GPT-2 124M STIP pass at 1024 tokens").measured == pytest.approx(3.008, abs=0.01)
    assert one_row(rows, "5.8 MiB").measured == 1980
    assert traffic.figure(results, results / "fig")[0].is_file()


def test_fig8_rows(results):
    rows = fig8.compare(results)
    assert one_row(rows, "LLaMA2-70b").measured == pytest.approx(1000.0) and \
        one_row(rows, "LLaMA2-70b").status == "differs"
    assert one_row(rows, "vit-base").status == "differs" and one_row(rows, "vit-large").status == "reproduced"
    assert one_row(rows, "LLaMA-2's").status == "not_reproducible" and one_row(rows, "LLaMA-2's").measured == 45.6
    assert fig8.figure(results, results / "fig")[0].is_file()


def test_fig6b_conventions_and_random_projection(results):
    rows = fig6b.compare(results)
    assert one_row(rows, "d = 128, per-vector").status == "reproduced"
    assert one_row(rows, "d = 8192, sample-wise").status == "differs" and \
        one_row(rows, "d = 8192, sample-wise").measured == 1
    per_vector = one_row(rows, "randomly projected embeddings, mean over d, per-vector")
    assert per_vector.status == "differs" and per_vector.measured < 0.6
    sample_wise = one_row(rows, "randomly projected embeddings, mean over d, sample-wise")
    assert sample_wise.measured > 0.6 and "no single convention" in sample_wise.reason
    assert fig6b.figure(results, results / "fig")[0].is_file()


def test_fig6a_and_tab4(results):
    rows = fig6a.compare(results)
    assert one_row(rows, "STIP, gpt2-1.5b").measured == pytest.approx(0.06) and \
        one_row(rows, "STIP, gpt2-1.5b").status == "reproduced"
    assert one_row(rows, "random projection, gpt2-1.5b").status == "differs"
    assert fig6a.figure(results, results / "fig")[0].is_file()
    tab = tab4.compare(results)
    assert one_row(tab, "transformed cloud model").status == "reproduced" and \
        "x x x" in one_row(tab, "transformed").reason
    assert tab4.compare(results / "missing")[0].status == "not_measured"
