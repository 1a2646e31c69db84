"""What the CrypTen arm pays, checked on tiny tensors and a tiny BERT: the row max as a comparison tree (same
values as CrypTen's max, less traffic), GeLU's comparisons in one call (one comparison's rounds), the weight
re-opening bytes (exactly the weights' elements), bytes and rounds identical across repeats, and one
generated token (the greedy token, computed in MPC)."""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel

from baselines.mpc.approximations import get_approximation, indicators
from baselines.mpc.forward import extract_weights, simulate
from baselines.mpc.launcher import run_parties
from baselines.mpc.ops import MpcOps, PlainOps
from baselines.mpc.protocol import MpcProtocol
from baselines.mpc.session import run_mpc_forward
from protocols.contract import RunRequest
from protocols.models import build_spec
from transport.link import NetworkProfile

TESTS = [("lt", -4.0), ("lt", -1.95), ("gt", 3.0)]


def _traffic(crypten: Any) -> np.ndarray:
    stats = crypten.communicator.get().get_communication_stats()
    return np.array([stats["rounds"], stats["bytes"]])


def _ops_party(rank: int, crypten: Any, x: torch.Tensor) -> dict[str, Any]:
    """Tree max vs CrypTen's max(dim), batched vs sequential comparisons: values and (rounds, bytes)."""
    ops = MpcOps(crypten, rank)
    sx = ops.private_input(x)
    out: dict[str, Any] = {}
    t0 = _traffic(crypten)
    tree = ops.max(sx, -1)
    t1 = _traffic(crypten)
    theirs = sx.max(dim=-1, keepdim=True)[0]
    t2 = _traffic(crypten)
    batched = indicators(ops, sx, TESTS)
    t3 = _traffic(crypten)
    one_by_one = [ops.lt(sx, c) if op == "lt" else ops.gt(sx, c) for op, c in TESTS]
    t4 = _traffic(crypten)
    out["cost"] = {"tree": t1 - t0, "crypten_max": t2 - t1, "batched": t3 - t2, "sequential": t4 - t3}
    out["tree"], out["crypten_max"] = tree.get_plain_text().numpy(), theirs.get_plain_text().numpy()
    out["batched"] = [b.get_plain_text().numpy() for b in batched]
    out["sequential"] = [b.get_plain_text().numpy() for b in one_by_one]
    return out


@pytest.mark.timeout(120)
def test_tree_max_and_batched_comparisons_cost_less_for_the_same_values() -> None:
    x = torch.randn(2, 4, 16, 13, generator=torch.Generator().manual_seed(0)) * 4  # odd row length: 13
    got = run_parties(_ops_party, x, seed=0)[0]
    ref = x.amax(-1, keepdim=True).numpy()
    assert np.abs(got["tree"] - ref).max() < 1e-3 and np.abs(got["crypten_max"] - ref).max() < 1e-3
    assert np.allclose(PlainOps().max(x.double(), -1).numpy(), ref)
    cost = got["cost"]
    assert cost["tree"][1] < 0.6 * cost["crypten_max"][1]  # bytes: no one-hot argmax, no pairwise stage
    assert cost["tree"][0] < cost["crypten_max"][0]  # rounds
    for b, s in zip(got["batched"], got["sequential"]):
        assert np.array_equal(b, s)
    assert cost["batched"][1] == cost["sequential"][1]  # same bytes ...
    assert cost["batched"][0] * 3 == cost["sequential"][0]  # ... in the rounds of one comparison


def _tiny_bert() -> BertModel:
    torch.manual_seed(0)
    return BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=64, vocab_size=100)).eval()


@pytest.mark.timeout(120)
def test_repeats_give_identical_traffic_and_weight_openings_are_the_weights() -> None:
    model = _tiny_bert()
    ids = torch.randint(0, 100, (1, 6), generator=torch.Generator().manual_seed(0))
    res = run_mpc_forward(model, ids, approx="puma", n_runs=3, timeout_s=120, seed=0)
    first = res.runs[0]
    for run in res.runs[1:]:
        assert run.weight_open_bytes == first.weight_open_bytes
        for name, stats in first.phases.items():
            assert run.phases[name]["bytes"] == stats["bytes"] and run.phases[name]["rounds"] == stats["rounds"]
    t = extract_weights(model).tensors
    # every weight that multiplies: the token table (one-hot matmul), the matrices, the norm gains; the
    # position/segment rows and the biases are added, which costs nothing
    used = sum(v.numel() for k, v in t.items() if k == "wte" or k.endswith((".w", ".g")))
    assert first.weight_open_bytes == 2 * 8 * used
    assert 0 < first.weight_open_bytes < first.phases["total"]["bytes"]


@pytest.mark.timeout(120)
def test_one_generated_token_in_mpc_is_the_greedy_token_and_reveals_only_its_id() -> None:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=100,
                                       bos_token_id=0, eos_token_id=0)).eval()
    ids = torch.randint(0, 100, (2, 6), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0  # right padding: row 1's next token follows position 3
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    greedy = logits[torch.arange(2), mask.sum(-1) - 1].argmax(-1)
    res = run_mpc_forward(model, ids, mask, approx="puma", timeout_s=120, seed=0, next_token=True)
    assert res.output_name == "next_token" and res.output.shape == (2, 1, 1)  # one id per row, no logits
    assert torch.equal(res.output.round().long().view(2), greedy)
    sim = simulate(model, ids, mask, get_approximation("puma"), next_token=True)
    assert torch.equal(sim.view(2).long(), greedy)
    with pytest.raises(ValueError, match="causal LM head"):
        simulate(_tiny_bert(), ids, mask, get_approximation("puma"), next_token=True)


TINY_GPT2 = {"name": "tiny-gpt2", "model_type": "gpt2", "head": "causal_lm", "weights": "random", "tokenizer": None,
             "dtype": "float32", "source": "test",
             "config": {"vocab_size": 100, "n_embd": 32, "n_layer": 1, "n_head": 2, "n_positions": 64,
                        "bos_token_id": 0, "eos_token_id": 0}}


@pytest.mark.timeout(120)
def test_protocol_generate_task_gives_generate_rows_and_refuses_a_second_token() -> None:
    spec, lan = build_spec(TINY_GPT2), NetworkProfile("lan", bandwidth_bps=3e9, rtt_s=0.8e-3)
    proto = MpcProtocol({"approx": "puma"})
    rows = proto.run(spec, lan, RunRequest(batch_size=1, seq_len=6, repeats=2, warmup=0, seed=0, task="generate",
                                           max_new_tokens=1))
    got = {(r.phase, r.metric, r.source, r.repeat): r.value for r in rows}
    assert ("total", "bytes", "engine", 0) not in got  # end to end is phase generate for a generation
    assert got[("generate", "bytes", "engine", 0)] == got[("generate", "bytes", "engine", 1)] > 0
    assert got[("generate", "rounds", "engine", 0)] == got[("generate", "rounds", "engine", 1)] > 0
    assert 0 < got[("weight_open", "bytes", "engine", 0)] < got[("generate", "bytes", "engine", 0)]
    assert got[("output", "top1_agreement", "engine", 0)] == 1.0
    assert got[("output", "top1_agreement", "simulated", 0)] == 1.0
    with pytest.raises(ValueError, match="max_new_tokens=1"):
        proto.run(spec, lan, RunRequest(batch_size=1, seq_len=6, repeats=1, warmup=0, seed=0, task="generate",
                                        max_new_tokens=2))
