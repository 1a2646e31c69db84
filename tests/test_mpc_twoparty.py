"""Two-party CrypTen runs: MPC agrees with its float64 simulation and with plaintext, traffic is counted,
the launcher leaves no process behind. One fast test; the rest are `slow`."""
from __future__ import annotations

import time

import psutil
import pytest
import torch
from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel

from baselines.mpc.approximations import get_approximation
from baselines.mpc.forward import simulate
from baselines.mpc.launcher import MpcRunError, MpcTimeout, run_parties
from baselines.mpc.session import run_mpc_forward

FIXED_POINT_TOL = 0.02  # 16 fractional bits, a few hundred truncations deep: MPC vs its float64 simulation


def _agree(out: torch.Tensor, sim: torch.Tensor) -> None:
    """MPC agrees with its float64 simulation within fixed-point error."""
    assert (out - sim).abs().max() < FIXED_POINT_TOL


def _children() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if p.is_running()
            and p.status() != psutil.STATUS_ZOMBIE]


def _tiny_bert() -> BertModel:
    torch.manual_seed(0)
    return BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=64, vocab_size=100)).eval()


def _tiny_gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=100,
                                      bos_token_id=0, eos_token_id=0)).eval()


def _check_forward(model, approx: str, provider: str = "TFP", embedding: str = "mpc") -> None:
    ids = torch.randint(0, 100, (1, 6), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask)
    ref = (out.logits if hasattr(out, "logits") else out.last_hidden_state).double()
    res = run_mpc_forward(model, ids, mask, approx=approx, provider=provider, embedding=embedding, timeout_s=120,
                          seed=0)
    sim = simulate(model, ids, mask, get_approximation(approx), embedding=embedding)
    assert res.output.shape == ref.shape
    _agree(res.output, sim)
    assert (res.output - ref).abs().max() < 0.1
    phases = res.runs[0].phases
    for name in ("embedding", "linear", "attention_softmax", "activation", "layernorm", "head", "total"):
        assert phases[name]["rounds"] > 0 or (name == "embedding" and embedding == "device")
    tot = phases["total"]
    assert tot["bytes"] > 0 and tot["bytes_party0"] > 0 and tot["bytes_party1"] > 0
    assert tot["bytes"] == pytest.approx((tot["bytes_party0"] + tot["bytes_party1"]) / 2)
    parts = sum(p["bytes"] for n, p in phases.items() if n != "total")
    assert parts == pytest.approx(tot["bytes"])  # every operator is charged to exactly one class
    if provider == "TTP":
        assert tot["preprocessing_bytes"] > 0
    else:
        assert tot["preprocessing_bytes"] == 0
    assert not _children()


@pytest.mark.timeout(120)
def test_tiny_bert_mpc_matches_simulation_and_plaintext_with_traffic() -> None:
    _check_forward(_tiny_bert(), "puma")


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("approx", ["crypten", "nimbus", "mpcformer"])
def test_tiny_gpt2_mpc_each_approximation(approx: str) -> None:
    model = _tiny_gpt2()
    ids = torch.randint(0, 100, (1, 6), generator=torch.Generator().manual_seed(0))
    res = run_mpc_forward(model, ids, approx=approx, timeout_s=120, seed=0)
    sim = simulate(model, ids, torch.ones_like(ids), get_approximation(approx))
    _agree(res.output, sim)
    assert res.runs[0].phases["total"]["bytes"] > 0


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_tiny_gpt2_mpc_puma_causal_matches_plaintext() -> None:
    _check_forward(_tiny_gpt2(), "puma")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ttp_provider_reports_preprocessing_apart() -> None:
    _check_forward(_tiny_bert(), "puma", provider="TTP")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_device_embedding_skips_the_one_hot_matmul() -> None:
    _check_forward(_tiny_bert(), "puma", embedding="device")


def _sleep_forever(rank: int, crypten, payload) -> None:
    time.sleep(600)


def _fail_at_device(rank: int, crypten, payload) -> int:
    if rank == 1:
        raise ValueError("boom at the device")
    return rank


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_launcher_timeout_kills_every_party() -> None:
    t0 = time.monotonic()
    with pytest.raises(MpcTimeout, match="timeout_s=5"):
        run_parties(_sleep_forever, timeout_s=5)
    assert time.monotonic() - t0 < 30
    assert not _children()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_launcher_party_exception_is_reported_and_cleaned_up() -> None:
    with pytest.raises(MpcRunError, match="boom at the device"):
        run_parties(_fail_at_device, timeout_s=60)
    assert not _children()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_launcher_rejects_unknown_provider() -> None:
    with pytest.raises(ValueError, match="HE"):
        run_parties(_fail_at_device, provider="HE")
