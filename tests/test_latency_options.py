"""The latency artifacts' protocol options: what full cloud and STIP return, the device speed factor, the GPU switch."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir

from baselines.full_cloud import FullCloudConfig
from baselines.model_split import ModelSplitConfig
from bench.app import CONFIG_DIR, run
from protocols.cloud_and_traffic import resolve_device
from protocols.stip_over_socket import StipConfig

GPT2 = ["model=gpt2-124m", "model.n_layers=1", "run.repeats=1", "run.warmup=0", "run.seq_len=8", "run.batch_size=2"]


def make_cfg(tmp_path, *overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("config", overrides=[f"output_root={tmp_path / 'runs'}", *overrides])


def rows_of(report) -> pd.DataFrame:
    assert report.status == "ok", report.error
    return pd.read_parquet(Path(report.config["output_root"]) / report.experiment / report.run_id / "rows.parquet")


def value(df: pd.DataFrame, phase: str, metric: str, source: str) -> float:
    m = df[(df.phase == phase) & (df.metric == metric) & (df.source == source)]
    assert len(m) == 1, (phase, metric, source, len(m))
    return float(m["value"].iloc[0])


@pytest.mark.parametrize("protocol,mode,down", [("full_cloud", "tokens", 2 * 8),
                                                ("full_cloud", "topk", 2 * 5 * (4 + 8)),
                                                ("stip", "topk", 2 * 5 * (4 + 8))])
def test_reduced_reply_returns_the_next_token_only(tmp_path, protocol, mode, down):
    df = rows_of(run(make_cfg(tmp_path, *GPT2, f"protocol={protocol}", f"protocol.return_mode={mode}")))
    assert value(df, "downlink", "bytes", "shapes") == down  # not 2 x 8 x 50,257 fp32 logits
    assert value(df, "downlink", "bytes", "socket") < 1024
    assert value(df, "output", "top1_agreement", "host") == 1.0  # the next token equals the plaintext model's


def test_reduced_reply_is_refused_for_an_encoder(tmp_path):
    report = run(make_cfg(tmp_path, "model=bert-tiny", "protocol=full_cloud", "protocol.return_mode=tokens",
                          "run.repeats=1", "run.warmup=0", "run.seq_len=8"))
    assert report.status == "failed" and "needs per-position logits" in report.error


def test_device_slowdown_scales_device_compute_in_modelled_rows_only(tmp_path):
    df = rows_of(run(make_cfg(tmp_path, "model=bert-tiny", "model.n_layers=2", "protocol=model_split",
                              "protocol.device_layers=1", "protocol.device_slowdown=10", "network=wired",
                              "run.repeats=1", "run.warmup=0", "run.seq_len=8")))
    host = value(df, "device_embed", "latency", "host")
    assert value(df, "device_embed", "latency", "modelled") == pytest.approx(10 * host)
    compute = 10 * host + value(df, "cloud_compute", "latency", "socket")
    rounds, n_bytes = value(df, "total", "rounds", "socket"), value(df, "total", "bytes", "socket")
    assert value(df, "total", "latency", "modelled") == pytest.approx(compute + rounds * 0.010 + 8 * n_bytes / 1e8)


def test_config_values_are_validated():
    with pytest.raises(ValueError, match="return_mode='logits'"):
        FullCloudConfig(return_mode="logits")
    with pytest.raises(ValueError, match="device_slowdown=0"):
        ModelSplitConfig(device_slowdown=0)
    with pytest.raises(ValueError, match="cloud_device='gpu'"):
        StipConfig(cloud_device="gpu")


def test_cloud_device_auto_follows_torch_and_cuda_without_a_gpu_is_refused():
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="torch sees no GPU.*protocol.cloud_device=auto or cpu"):
            resolve_device("cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this host has a GPU: cuda is accepted")
def test_run_with_cuda_on_a_cpu_host_fails_before_building(tmp_path):
    report = run(make_cfg(tmp_path, *GPT2, "protocol=stip", "protocol.cloud_device=cuda"))
    assert report.status == "failed" and "torch sees no GPU" in report.error
