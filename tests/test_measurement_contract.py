"""Every protocol, one tiny workload, one definition: latency, rounds, bytes and accuracy mean the same thing.

The definitions are in protocols/vocabulary.py and protocols/accuracy.py; MPC's rows are checked against
the same definitions in test_mpc_protocol.py (its engine needs two party processes).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir

from bench.app import CONFIG_DIR, run
from protocols.accuracy import accuracy
from protocols.vocabulary import check_security
from protocols.workload import suite_ids
from transport.link import NetworkProfile

RTT, BANDWIDTH = 0.02, 1e8
LINK = ["network=lan", f"network.rtt_s={RTT}", f"network.bandwidth_bps={BANDWIDTH}"]
TINY = ["model=bert-tiny", "run.repeats=2", "run.warmup=0", "run.seq_len=8", "cloud_timeout_s=60"]
NEW = 8  # generation: tiny llama on the SmolLM2 tokenizer's vocabulary, 2 suite prompts, 8 new tokens
TOY_GENERATE = ["model=llama2-7b", "model.config.hidden_size=64", "model.config.num_hidden_layers=2",
                "model.config.num_attention_heads=4", "model.config.num_key_value_heads=2",
                "model.config.intermediate_size=128", "model.config.vocab_size=49152", "model.tokenizer=smollm2",
                "run.repeats=2", "run.warmup=0", f"run.max_new_tokens={NEW}", "cloud_timeout_s=60",
                "network=lan", "network.rtt_s=0.002", "network.bandwidth_bps=1e9"]
HOST_PHASES = ("device_embed", "device_permute", "cloud_compute", "device_recover")


def rows_for(tmp_path: Path, protocol: str) -> pd.DataFrame:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[f"output_root={tmp_path / 'runs'}", f"protocol={protocol}", *TINY, *LINK])
    report = run(cfg)
    assert report.status == "ok", report.error
    return pd.read_parquet(tmp_path / "runs" / report.experiment / report.run_id / "rows.parquet")


def one(df: pd.DataFrame, phase: str, metric: str, source: str, repeat: int = 0) -> float:
    m = df[(df.phase == phase) & (df.metric == metric) & (df.source == source) & (df.repeat == repeat)]
    assert len(m) == 1, (phase, metric, source, repeat, len(m))
    return float(m["value"].iloc[0])


@pytest.mark.parametrize("protocol", ["stip", "full_cloud", "model_split"])
def test_socket_protocols_obey_the_one_definition(tmp_path, protocol):
    df = rows_for(tmp_path, protocol)
    assert not df.duplicated(["phase", "metric", "source", "repeat"]).any()
    link = NetworkProfile("test", BANDWIDTH, RTT)
    for rep in (0, 1):
        up, down = one(df, "uplink", "bytes", "socket", rep), one(df, "downlink", "bytes", "socket", rep)
        # bytes: what both sides sent, as the socket counted it (payload + framing)
        assert one(df, "total", "bytes", "socket", rep) == up + down
        for direction, n in (("uplink", up), ("downlink", down)):
            assert 0 < n - one(df, direction, "bytes", "shapes", rep) < 1024
        # rounds: one request-reply exchange per forward request
        rounds = one(df, "total", "rounds", "socket", rep)
        assert rounds == 1
        # latency at total: end to end through the emulated link, so at least the link's own time
        measured = one(df, "total", "latency", "socket", rep)
        assert measured >= link.time(rounds, up + down)
        # the modelled total: measured compute + rounds x RTT + bytes / bandwidth (one formula)
        compute = df[(df.repeat == rep) & (df.metric == "latency") & df.phase.isin(HOST_PHASES)]["value"].sum()
        assert one(df, "total", "latency", "modelled", rep) == pytest.approx(compute + link.time(rounds, up + down))
        assert one(df, "uplink", "latency", "modelled", rep) + one(df, "downlink", "latency", "modelled", rep) \
            == pytest.approx(link.time(rounds, up + down))
    # accuracy: exact protocols, float rounding only
    assert one(df, "output", "top1_agreement", "host") == 1.0
    assert one(df, "output", "max_abs_error", "host") < 1e-3
    assert set(df.approx.dropna()) == set()  # no approximation in these protocols


def test_random_projection_reports_privacy_only(tmp_path):
    df = rows_for(tmp_path, "random_projection")
    assert set(df.metric) == {"dcor", "dcor_samples"} and set(df.source) == {"host"}


def test_accuracy_counts_unmasked_positions_only():
    ref = torch.zeros(1, 3, 4)
    ref[..., 0] = 1.0
    out = ref.clone()
    out[0, 2] = torch.tensor([0.0, 5.0, 0.0, 0.0])  # a padded position, wrong on purpose
    out[0, 1, 3] = 0.5
    mask = torch.tensor([[1, 1, 0]])
    got = accuracy(out, ref, mask)
    assert {k: got[k] for k in ("max_abs_error", "sum_abs_error", "top1_agreement", "diverged_fraction")} == {
        "max_abs_error": 0.5, "sum_abs_error": 0.25, "top1_agreement": 1.0, "diverged_fraction": 0.0}
    assert got["cosine_similarity"] < 1.0  # the error at position 1 turns the pooled vector
    everything = accuracy(out, ref)
    assert everything["max_abs_error"] == 5.0 and everything["top1_agreement"] == pytest.approx(2 / 3)


def test_accuracy_pools_per_sample_and_counts_diverged_samples():
    ref = torch.randn(3, 4, 8, generator=torch.Generator().manual_seed(0))
    out = ref.clone()
    out[1, 0, 0] = float("nan")  # sample 1 overflowed
    out[2] = -ref[2]  # sample 2 points the other way
    got = accuracy(out, ref, torch.ones(3, 4))
    assert got["diverged_fraction"] == pytest.approx(1 / 3)
    assert got["cosine_similarity"] == pytest.approx(0.0)  # mean of +1 (sample 0) and -1 (sample 2)
    assert accuracy(ref, ref)["cosine_similarity"] == pytest.approx(1.0)


def speculation_rows_for(tmp_path: Path, overrides: list[str]) -> pd.DataFrame:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[f"output_root={tmp_path / 'runs'}", *TOY_GENERATE, *overrides])
    report = run(cfg)
    assert report.status == "ok", report.error
    return pd.read_parquet(tmp_path / "runs" / report.experiment / report.run_id / "rows.parquet")


@pytest.mark.parametrize("speculate", ["none", "prompt_lookup"])
def test_generation_with_speculation_obeys_the_one_definition(tmp_path, speculate):
    df = speculation_rows_for(tmp_path, ["experiment=speculation", f"protocol.speculate={speculate}"])
    summary = df[df.phase != "token"]
    assert not summary.duplicated(["phase", "metric", "source", "repeat"]).any()
    prompts = suite_ids("smollm2")
    for rep in (0, 1):
        assert one(df, "output", "top1_agreement", "host", rep) == 1.0  # tokens identical to greedy
        rate = one(df, "generate", "rounds_per_token", "socket", rep)
        accepted = one(df, "generate", "accepted_tokens", "host", rep)
        # rounds: the socket's request-reply exchanges = forward round trips + session open and close
        assert one(df, "generate", "rounds", "socket", rep) == pytest.approx(rate * NEW + 2)
        # every round trip yields its accepted drafts plus one token
        assert rate * (1 + accepted) == pytest.approx(1.0)
        # bytes per token: both directions' socket bytes of the whole request / generated tokens
        per_token_bytes = one(df, "uplink", "bytes_per_token", "socket", rep) \
            + one(df, "downlink", "bytes_per_token", "socket", rep)
        assert per_token_bytes * NEW == pytest.approx(one(df, "generate", "bytes", "socket", rep))
        # the repeats walk the prompt suite: the prefill's context is the prompt's token count
        prefill = df[(df.phase == "prefill") & (df.repeat == rep)]
        assert int(prefill.seq_len.iloc[0]) == prompts[rep][1].shape[1]
        tokens = df[(df.phase == "token") & (df.repeat == rep)]
        assert len(tokens) == NEW - 1
        per_token = one(df, "per_token", "latency", "socket", rep)
        if speculate == "none":
            assert rate == 1.0 and accepted == 0.0
            assert one(df, "generate", "drafted_tokens", "host", rep) == 0.0
            assert per_token == pytest.approx(tokens.value.mean())
        else:
            assert one(df, "generate", "drafted_tokens", "host", rep) > 0
            assert per_token > 0


def test_full_cloud_prompt_lookup_is_one_request_with_fewer_forward_passes(tmp_path):
    df = speculation_rows_for(tmp_path, ["protocol=full_cloud", "protocol.speculate=prompt_lookup", "run.task=generate",
                                         "run.inputs=prompt_suite"])
    for rep in (0, 1):
        assert one(df, "output", "top1_agreement", "host", rep) == 1.0
        assert one(df, "generate", "rounds", "socket", rep) == 1  # generation stays one request
        passes = one(df, "generate", "forward_passes_per_token", "host", rep)
        accepted = one(df, "generate", "accepted_tokens", "host", rep)
        assert passes * (1 + accepted) == pytest.approx(1.0)  # each forward pass: accepted drafts + one token


def test_security_labels_come_from_the_vocabulary():
    assert check_security("2pc-dealer-is-server") == "2pc-dealer-is-server" and check_security(None) is None
    with pytest.raises(ValueError, match="old label.*make bench"):
        check_security("2pc-dealer")
    with pytest.raises(ValueError, match="security 'secure'"):
        check_security("secure")
