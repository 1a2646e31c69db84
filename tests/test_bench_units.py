"""Pieces of the runner that need no cloud process: models, results, privacy, memory, aggregate, plots."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir

from bench import plots
from bench.aggregate import aggregate, headline
from bench.app import CONFIG_DIR, run_key
from bench.results import atomic_write_json, atomic_write_parquet, run_id, to_frame
from protocols.contract import Row, RunRequest
from protocols.memory import embedding_shape_bytes, materialized_embedding, module_bytes
from protocols.models import build_spec, fits_on_host
from protocols.privacy import dcor_both, dcor_samples
from protocols.results_schema import COLUMNS
from protocols.stip_over_socket import StipProtocol
from transport.link import NetworkProfile


def model_cfg(name: str, **over):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[f"model={name}"] + [f"model.{k}={v}" for k, v in over.items()])
    return cfg.model


@pytest.mark.parametrize("name,n", [("gpt2-124m", 124_439_808), ("bert-base", 109_482_240),
                                    ("llama2-7b", 6_738_415_616), ("mixtral-8x7b", 46_702_792_704)])
def test_published_shapes_give_published_parameter_counts(name, n):
    assert build_spec(model_cfg(name)).n_params == n


def test_layer_override_and_fit_check():
    spec = build_spec(model_cfg("llama2-70b"))
    assert not spec.fits_on_host and not fits_on_host(spec.n_params, "float32")
    small = build_spec(model_cfg("gpt2-124m", n_layers=1))
    assert small.config.num_hidden_layers == 1 and small.n_params < 124_439_808
    model = small.build()
    assert sum(p.numel() for p in model.parameters()) == small.n_params
    inputs = small.make_inputs(2, 5, 0)
    assert inputs["input_ids"].shape == (2, 5)


def test_bad_dtype_names_choices():
    with pytest.raises(ValueError, match="float32"):
        fits_on_host(10, "float8")


def test_shape_only_rows_for_models_that_do_not_fit():
    spec = build_spec(model_cfg("llama2-70b"))
    req = RunRequest(batch_size=1, seq_len=128, repeats=1, warmup=0, seed=0, task="forward")
    got = StipProtocol({}).run(spec, NetworkProfile("none", None, 0.0), req)
    assert {r.source for r in got} == {"shapes"}
    rows = {(r.phase, r.metric): r.value for r in got}
    assert rows[("uplink", "bytes")] == 128 * 8192 * 4 + 128 * 8
    assert rows[("downlink", "bytes")] == 128 * 32000 * 4
    assert rows[("total", "bytes")] == rows[("uplink", "bytes")] + rows[("downlink", "bytes")]


def test_tidy_rows_schema_and_atomic_writes(tmp_path):
    ctx = {"run_id": "r", "experiment": "e", "protocol": "p", "approx": None, "model": "m", "n_params": 1,
           "network": "none", "batch_size": 1, "seq_len": 4, "seed": 0}
    df = to_frame([Row("uplink", "bytes", 10.0, "socket"), Row("total", "latency", 0.1, "modelled", repeat=2)], ctx)
    assert list(df.columns) == COLUMNS
    assert df.loc[0, "unit"] == "B" and df.loc[1, "unit"] == "s" and df.loc[1, "source"] == "modelled"
    atomic_write_parquet(tmp_path / "rows.parquet", df)
    atomic_write_json(tmp_path / "report.json", {"a": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json", "rows.parquet"]  # no temp left
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "rows.parquet"), df)
    assert run_id({"a": 1, "b": 2}) == run_id({"b": 2, "a": 1}) != run_id({"a": 2})


def test_dcor_conventions():
    x = torch.randn(300, 128, generator=torch.Generator().manual_seed(0))
    perm = x[:, torch.randperm(128)]
    both = dcor_both(x, perm, n_vectors=32)
    assert both["dcor_samples"] == pytest.approx(1.0, abs=1e-9)  # distances are preserved
    assert 0.05 < both["dcor"] < 0.3  # ~0.157 at d = 128 (STIP.md)
    proj = x @ (torch.randn(128, 128) / 128 ** 0.5)
    assert dcor_samples(x, proj) < 0.999


def test_embedding_memory_matches_shapes():
    for name in ("bert-tiny", "gpt2-124m", "vit-base", "llama2-70b"):
        spec = build_spec(model_cfg(name))
        emb = materialized_embedding(spec)
        assert module_bytes(emb) == embedding_shape_bytes(spec.config, torch.float32, spec.model_type), name


def _fake_run(root, exp, rid, status, n=3):
    run = root / exp / rid
    run.mkdir(parents=True)
    cfg = {"model": {"name": "m"}, "protocol": {"name": "stip"}, "network": {"name": "none"},
           "run": {"task": "forward"}}
    (run / "report.json").write_text(json.dumps({"run_id": rid, "experiment": exp, "status": status, "config": cfg}))
    if status == "ok":
        ctx = {"run_id": rid, "experiment": exp, "protocol": "stip", "approx": None, "model": "m", "n_params": 5,
               "network": "none", "batch_size": 1, "seq_len": 4, "seed": 0}
        rows = [Row(p, "latency", 0.01 * (i + 1), "host", repeat=i) for i in range(n) for p in
                ("device_embed", "device_permute", "uplink", "cloud_compute", "downlink", "device_recover")]
        atomic_write_parquet(run / "rows.parquet", to_frame(rows, ctx))


def test_aggregate_collects_ok_runs_and_lists_failed(tmp_path):
    _fake_run(tmp_path / "runs", "exp", "a", "ok")
    _fake_run(tmp_path / "runs", "exp", "b", "failed")
    (out,) = aggregate(tmp_path / "runs", tmp_path / "results", plots=True)
    rows = pd.read_parquet(out / "rows.parquet")
    assert set(rows.run_id) == {"a"} and len(rows) == 18
    assert len(pd.read_csv(out / "rows.csv")) == 18
    assert set(pd.read_csv(out / "runs.csv").status) == {"ok", "failed"}
    assert (out / "fig7d_breakdown.png").exists() and (out / "fig7d_breakdown.pdf").exists()


def test_every_figure_function_draws_from_synthetic_rows(tmp_path):
    rng = np.random.default_rng(0)
    recs = []

    def add(run, phase, metric, value, source="socket", **kw):
        recs.append({"run_id": run, "experiment": "x", "protocol": kw.get("protocol", "stip"),
                     "approx": None, "model": kw.get("model", "m"), "n_params": kw.get("n", 10),
                     "network": "wired", "batch_size": 1, "seq_len": kw.get("seq_len", 4), "phase": phase,
                     "metric": metric, "source": source, "value": value, "unit": "", "seed": 0, "repeat": 0,
                     "protocol.transform": kw.get("transform"), "protocol.device_layers": kw.get("k"),
                     "protocol.return_mode": kw.get("mode")})
    for i, (model, n) in enumerate([("a", 10), ("b", 100)]):
        add(f"r{i}", "embeddings", "dcor", rng.random(), "host", model=model, n=n, transform="permutation")
        add(f"r{i}", "embeddings", "dcor_samples", 1.0, "host", model=model, n=n, transform="permutation")
        add(f"r{i}", "parameters", "dcor", rng.random(), "host", model=model, n=n)
        add(f"r{i}", "output", "top1_agreement", 1.0, "host", model=model, n=n)
        add(f"r{i}", "total", "throughput", 100.0, model=model, n=n, k=i)
        add(f"r{i}", "total", "latency", 0.1, model=model, n=n, k=i)
        add(f"r{i}", "device_embedding", "memory", 1e6, "host", model=model, n=n)
        add(f"r{i}", "cloud_compute", "latency", 0.05, model=model, n=n)
    for j in range(3):
        add("g", "token", "latency", 0.03, seq_len=5 + j, mode="topk")
    add("g", "prefill", "latency", 0.1, mode="topk")
    add("g", "generate", "latency", 0.2, mode="topk")
    df = pd.DataFrame(recs)
    for fig in plots.FIGURES:
        paths = fig(df, tmp_path)
        assert paths and all(p.exists() for p in paths), fig.__name__


def test_headline_ratio_is_taken_against_the_configured_reference():
    recs = [{"run_id": f"{m}{p}{i}", "protocol": p, "network": "lan", "phase": "cloud_compute", "metric": "latency",
             "source": "socket", "value": v * k * (1 + 0.01 * i), "model": m, "seq_len": 8, "batch_size": 1,
             "reference_protocol": "b"}
            for m, k in (("m1", 1.0), ("m2", 3.0)) for p, v in (("a", 2.0 if m == "m1" else 0.5), ("b", 1.0))
            for i in range(3)]
    out = headline(pd.DataFrame(recs))
    # one ratio per model (never pooled: m1 is 2.0, m2 is 0.5), rounded to 4 significant digits
    assert out["cloud_compute_ratio_a_over_b[m1,seq8,batch1,lan]"]["ratio"] == 2.0
    assert out["cloud_compute_ratio_a_over_b[m2,seq8,batch1,lan]"]["ratio"] == 0.5
    assert out["cloud_compute_ratio_a_over_b[m1,seq8,batch1,lan]"]["a_s"] == 2.02  # 2.0 * 1.01, not 2.0200000001
    assert not any("all networks" in k for k in out)  # a link is a workload key: never pooled across networks
    assert not any("_over_a" in k for k in out)


def test_run_key_changes_when_a_model_folder_is_rewritten(tmp_path):
    folder = tmp_path / "student"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    cfg = {"experiment_name": "e", "model": {"name": "m", "path": str(folder)}, "protocol": {}, "network": {},
           "run": {}}
    before = run_id(run_key(cfg))
    assert run_id(run_key(cfg)) == before  # unchanged folder: the same run (resume skips it)
    (folder / "model.safetensors").write_bytes(b"new weights")
    assert run_id(run_key(cfg)) != before  # a new distillation into the same path is a new run
    assert "model_files" not in run_key({**cfg, "model": {"name": "m", "path": None}})  # built models: ids as before
