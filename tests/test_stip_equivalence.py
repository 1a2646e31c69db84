"""decode(infer(request(x))) equals the plaintext model on every family (randomised norms)."""
import pytest
import torch

import stip

from helpers.equivalence import assert_equivalent, run_both
from helpers.stip_models import FACTORIES, sample_inputs, tiny_bert, tiny_llama


@pytest.mark.parametrize("family", sorted(FACTORIES))
def test_family_equivalence(family):
    model = FACTORIES[family]()
    reference, decoded = run_both(model, sample_inputs(model))
    assert_equivalent(reference, decoded)


def test_bert_base_model_with_pooler_and_token_types():
    model = tiny_bert(head=False)
    inputs = sample_inputs(model)
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    inputs["attention_mask"][0, -3:] = 0  # padding must behave the same
    reference, decoded = run_both(model, inputs)
    assert set(decoded) == {"last_hidden_state", "pooler_output"}
    assert_equivalent(reference, decoded)


def test_llama_untied_head_and_gqa():
    model = tiny_llama(tied=False)
    assert model.config.num_key_value_heads < model.config.num_attention_heads
    reference, decoded = run_both(model, sample_inputs(model))
    assert_equivalent(reference, decoded)


def test_rope_keeps_within_head_order_of_qk():
    model = tiny_llama()
    keys = stip.ModelDeveloper(model, seed=3).keys
    hd = model.config.hidden_size // model.config.num_attention_heads
    q = keys["layers.0.pi_i1_q"].view(-1, hd)
    assert torch.equal(q - q[:, :1], torch.arange(hd).expand_as(q)), "RoPE Q/K may only move whole heads"
    v = keys["layers.0.pi_i2_v"].view(-1, hd)
    assert not torch.equal(v - v[:, :1], torch.arange(hd).expand_as(v)), "V keeps a private within-head order"


def test_naive_feature_permutation_breaks_multihead_attention():
    """Why head structure matters: an arbitrary pi_i1 mixes heads and changes the output."""
    model = tiny_bert(head=False)
    with torch.no_grad():  # peaked attention: at init scores are ~0 and softmax hides any Q/K error
        for layer in model.encoder.layer:
            layer.attention.self.query.weight.mul_(30)
            layer.attention.self.key.weight.mul_(30)
    developer = stip.ModelDeveloper(model, seed=0)
    keys = developer.keys
    n = keys["layers.0.pi_i1_q"].numel()
    naive = torch.randperm(n, generator=torch.Generator().manual_seed(1))
    for name in ("pi_i1_q", "pi_i1_k"):
        keys.tensors[f"layers.0.{name}"] = naive
    server = stip.ModelServer(developer.cloud_model())
    device = developer.data_owner()
    inputs = sample_inputs(model)
    reference = model(**inputs).last_hidden_state
    honest = stip.ModelDeveloper(model, seed=0)
    honest_out = honest.data_owner().decode(stip.ModelServer(honest.cloud_model()).infer(
        honest.data_owner().encode(inputs["input_ids"]), token_type_ids=inputs["token_type_ids"]))
    assert (honest_out["last_hidden_state"] - reference).abs().max() / reference.abs().max() < 1e-4
    out = device.decode(server.infer(device.encode(inputs.pop("input_ids")), **inputs))["last_hidden_state"]
    assert (out - reference).abs().max() / reference.abs().max() > 1e-2
