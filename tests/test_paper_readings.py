"""The arithmetic that reads the paper's numbers: latency readings, traffic token counts, key spaces."""
from __future__ import annotations

import math

import pytest

from report.paper_readings import (
    PAPER_MODELS,
    key_space,
    log10_factorial,
    model_key_space,
    paper_readings,
    per_token_latency_s,
    slope_readings_ms,
    table_mib,
    tokens_for_traffic,
)
from report.reported import load_reported
from stip.families import Dims
from stip.keys import PermutationSource, head_structured_permutations


def test_log10_factorial_matches_exact_values():
    assert log10_factorial(0) == 0 and log10_factorial(1) == 0
    assert log10_factorial(10) == pytest.approx(math.log10(math.factorial(10)))
    assert log10_factorial(768) == pytest.approx(math.log10(math.factorial(768)), rel=1e-12)
    with pytest.raises(ValueError):
        log10_factorial(-1)


def test_per_token_latency_counts_two_messages_and_transfer():
    assert per_token_latency_s(0.012, 0.010) == pytest.approx(0.032)
    # LLaMA2-7b: 4,096 fp32 values up, 32,000 fp32 logits down, at 100 Mbps: +11.55 ms
    with_bytes = per_token_latency_s(0.012, 0.010, 4096 * 4, 32000 * 4, 1e8)
    assert with_bytes == pytest.approx(0.032 + 144384 * 8 / 1e8)
    with pytest.raises(ValueError, match="bandwidth"):
        per_token_latency_s(0.012, 0.010, 1, 1, 0)


def test_one_way_reading_reproduces_the_paper_slopes():
    wired, wireless = slope_readings_ms(12, 10), slope_readings_ms(12, 250)
    assert (wired["one_way"], wireless["one_way"]) == pytest.approx((32, 512))  # paper: 30, 510
    assert (wired["rtt"], wireless["rtt"]) == pytest.approx((22, 262))
    # full fp32 logits over the wired profile's assumed 100 Mbps leave the one-way reading at 43.6 ms
    assert slope_readings_ms(12, 10, (4096 + 32000) * 4, 1e8)["one_way"] == pytest.approx(43.55, abs=0.01)


def test_traffic_and_table_sizes():
    assert tokens_for_traffic(1.0, 256, 4) == 1024
    assert table_mib(32000, 8192, 2) == 500
    with pytest.raises(ValueError):
        tokens_for_traffic(1.0, 0)


@pytest.mark.parametrize("rope", [False, True])
def test_key_space_counts_what_keys_py_draws(rope):
    """Enumerate head_structured_permutations on tiny shapes: the distinct draws are the formula's count."""
    dims = Dims(hidden=8, n_layers=1, n_heads=4, n_kv_heads=2, head_dim=2, ffn=3, rope=rope)
    qk, joint = set(), set()
    for seed in range(3000):
        keys = head_structured_permutations(4, 2, 2, rope, PermutationSource(seed))
        qk_key = tuple(keys["pi_i1_q"].tolist() + keys["pi_i1_k"].tolist())
        qk.add(qk_key)
        joint.add(qk_key + tuple(keys["pi_i2_v"].tolist() + keys["pi_i2_o"].tolist()))
    space = key_space(dims, out_dim=None)
    assert len(qk) == round(10 ** space.qk) == (8 if rope else 32)  # 2! (2!)^2 [(2!)^2]
    assert len(joint) == round(10 ** space.attention) == (32 if rope else 128)
    assert space.vo == pytest.approx(math.log10(32))
    assert space.pi_c is None and space.ffn == pytest.approx(math.log10(6))


def test_paper_models_key_spaces():
    llama = model_key_space("llama2-7b")
    assert llama.pi == pytest.approx(log10_factorial(4096))  # the data key: 4096!, ~10^13020
    assert llama.qk == pytest.approx(log10_factorial(32))  # RoPE, MHA: whole heads only, 32! ~ 10^35
    assert llama.qk_reduction > 12_900
    assert llama.pi_c == pytest.approx(log10_factorial(32000))
    llama70 = model_key_space("llama2-70b")  # GQA: 8 KV groups of 8 query heads
    assert llama70.qk == pytest.approx(9 * log10_factorial(8))
    gpt2 = model_key_space("gpt2-124m")  # no RoPE: within-head orders are keys too
    assert gpt2.qk == pytest.approx(log10_factorial(12) + 12 * log10_factorial(64))
    assert gpt2.qk < gpt2.qk_unstructured == pytest.approx(log10_factorial(768))
    mixtral = model_key_space("mixtral-8x7b")
    assert mixtral.ffn == pytest.approx(8 * log10_factorial(14336))
    assert model_key_space("vit-base").pi_c == pytest.approx(log10_factorial(1000))
    assert model_key_space("bert-base").pi_c is None


def test_model_key_space_refuses_shapeless_configs():
    with pytest.raises(ValueError, match="holds no shapes"):
        model_key_space("smollm2-135m")
    with pytest.raises(FileNotFoundError, match="choose one of"):
        model_key_space("gpt5")


def test_paper_readings_from_the_reported_values():
    readings = {r.id: r for r in paper_readings(load_reported())}
    assert readings["throughput-ratio"].value == pytest.approx(6.77e7, rel=1e-3)
    assert "6.8e+07" in readings["throughput-ratio"].statement and "6.7e+06" in readings["throughput-ratio"].statement
    assert readings["slope-wired"].value == 32 and readings["slope-wireless"].value == 512
    assert readings["uplink-tokens"].value == pytest.approx(1980, abs=1)
    assert readings["param-fold"].value == pytest.approx(208.33, abs=0.01)
    assert readings["llama2-70b-embedding"].value == 1000
    for reading in readings.values():
        assert reading.from_ids and reading.statement


def test_paper_readings_name_a_missing_entry():
    values = [v for v in load_reported() if v.id != "traffic-ciphergpt"]
    with pytest.raises(KeyError, match="traffic-ciphergpt"):
        paper_readings(values)


def test_every_paper_model_has_a_key_space():
    spaces = {name: model_key_space(name) for name in PAPER_MODELS}
    assert all(s.pi > 200 and s.total > s.pi for s in spaces.values())  # bert-tiny: 128! ~ 10^216
    rope = [n for n in PAPER_MODELS if n.startswith(("llama2", "mixtral"))]
    assert all(spaces[n].qk < 50 for n in rope)  # only whole heads move under RoPE
    assert all(spaces[n].qk > 100 for n in PAPER_MODELS if n not in rope)
