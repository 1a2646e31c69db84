"""The float64 simulation of the MPC forward: exact variants reproduce transformers; approximations stay close."""
from __future__ import annotations

import pytest
import torch
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)

from baselines.mpc.approximations import get_approximation
from baselines.mpc.forward import CALIBRATION_MAX_ABS, extract_weights, simulate

TINY = {
    "bert": lambda: BertModel(BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                         intermediate_size=128, vocab_size=200)),
    "bert_mlm": lambda: BertForMaskedLM(BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                                   intermediate_size=128, vocab_size=200)),
    "gpt2": lambda: GPT2LMHeadModel(GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=200,
                                               bos_token_id=0, eos_token_id=0)),
    "llama": lambda: LlamaForCausalLM(LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                                  num_key_value_heads=2, intermediate_size=128, vocab_size=200)),
}


def _case(name: str):
    torch.manual_seed(0)
    model = TINY[name]().eval()
    ids = torch.randint(0, 200, (2, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask)
    ref = out.logits if hasattr(out, "logits") else out.last_hidden_state
    return model, ids, mask, ref.double()


@pytest.mark.parametrize("name", sorted(TINY))
@pytest.mark.parametrize("embedding", ["mpc", "device"])
def test_exact_simulation_reproduces_transformers(name: str, embedding: str) -> None:
    model, ids, mask, ref = _case(name)
    y = simulate(model, ids, mask, get_approximation("exact"), embedding=embedding)
    keep = mask.bool()
    assert (y - ref)[keep].abs().max() < 1e-5


@pytest.mark.parametrize("name", ["bert", "gpt2"])
@pytest.mark.parametrize("family, bound", [("puma", 0.05), ("nimbus", 0.3), ("mpcformer", 2.0)])
def test_approximate_simulation_stays_near_plaintext(name: str, family: str, bound: float) -> None:
    model, ids, mask, ref = _case(name)
    y = simulate(model, ids, mask, get_approximation(family))
    keep = mask.bool()
    assert 0 < (y - ref)[keep].abs().max() < bound


def test_unsupported_model_class_is_named() -> None:
    model = BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                     intermediate_size=64, vocab_size=50))
    with pytest.raises(ValueError, match="BertForSequenceClassification"):
        extract_weights(model)


@pytest.mark.parametrize("name", ["bert", "llama"])
def test_norm_scaling_is_mathematically_neutral(name: str) -> None:
    model, ids, mask, ref = _case(name)
    weights = extract_weights(model)
    weights.norm_scales = {k: 64.0 for k in weights.norm_scales}  # as if calibrated on massive activations
    for fam in ("exact", "puma"):
        y = simulate(model, ids, mask, get_approximation(fam), weights=weights)
        base = simulate(model, ids, mask, get_approximation(fam))
        assert (y - base)[mask.bool()].abs().max() < 1e-4


def test_calibration_gives_powers_of_two_that_bound_the_squares() -> None:
    model, *_ = _case("gpt2")
    scales = extract_weights(model).norm_scales
    assert set(scales) == {"0.ln1", "0.ln2", "1.ln1", "1.ln2", "ln_f"}
    assert all(s >= 1 and float(s).is_integer() and (int(s) & (int(s) - 1)) == 0 for s in scales.values())
    assert CALIBRATION_MAX_ABS == 16.0
