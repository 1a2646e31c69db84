"""Keys are checked against the model by metadata and structure, not by shape only; key ids match.

Each case below has the right shapes and used to give a silently wrong model.
"""
import dataclasses
import re

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel

import stip
from stip.keys import KeySet
from stip.transform import generate_keys

from helpers.stip_models import randomise_vectors, sample_inputs, tiny_gpt2, tiny_llama


def _copy(keys: KeySet, **tensors) -> KeySet:
    return KeySet({**{k: v.clone() for k, v in keys.tensors.items()}, **tensors}, dict(keys.metadata))


def test_a_key_that_is_not_a_permutation_is_refused():
    model = tiny_gpt2()
    keys = stip.ModelDeveloper(model, seed=0).keys
    broken = keys["layers.1.pi_i3"].clone()
    broken[0] = broken[1]
    with pytest.raises(stip.KeyMismatchError, match=r"'layers.1.pi_i3' is not a permutation"):
        stip.ModelDeveloper(model, keys=_copy(keys, **{"layers.1.pi_i3": broken}))
    with pytest.raises(stip.KeyMismatchError, match="not a permutation"):
        stip.ModelDeveloper(model, keys=_copy(keys, pi=keys["pi"].flip(0) * 0))


def test_keys_of_another_head_layout_with_the_same_shapes_are_refused():
    four_heads = tiny_gpt2()
    torch.manual_seed(0)
    eight_heads = randomise_vectors(GPT2LMHeadModel(GPT2Config(n_embd=64, n_layer=2, n_head=8, vocab_size=97,
                                                               n_positions=64)))
    keys = stip.ModelDeveloper(four_heads, seed=0).keys
    with pytest.raises(stip.KeyMismatchError, match=r"n_heads=4 but this model has n_heads=8"):
        stip.ModelDeveloper(eight_heads, keys=keys)
    with pytest.raises(stip.KeyMismatchError, match=r"n_heads=4 but this model has n_heads=8"):
        stip.DataOwner.from_model(eight_heads, keys.user_keys())


def test_keys_of_another_family_with_the_same_shapes_are_refused():
    gpt2 = tiny_gpt2()  # hidden 64, 2 layers, 4 heads, ffn 256, vocabulary 97
    torch.manual_seed(0)
    bert = BertForMaskedLM(BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=256, vocab_size=97, max_position_embeddings=64))
    keys = stip.ModelDeveloper(gpt2, seed=0).keys
    with pytest.raises(stip.KeyMismatchError, match=r"model_type=gpt2 but this model has model_type=bert"):
        stip.ModelDeveloper(bert, keys=keys)
    with pytest.raises(stip.KeyMismatchError, match=r"model_type=gpt2"):
        stip.DataOwner.from_model(bert, keys.user_keys())


def _layer0(keys, name):
    return keys[f"layers.0.{name}"]


def test_keys_must_move_whole_heads_consistently():
    model = tiny_llama()  # 8 query heads in 2 KV groups, head_dim 8, RoPE
    developer = stip.ModelDeveloper(model, seed=0)
    keys = developer.keys
    cases = {
        "mixes features of different heads": {
            "layers.0.pi_i1_k": torch.randperm(16, generator=torch.Generator().manual_seed(1))},
        "K and V keys move the KV heads in different orders": {
            "layers.0.pi_i2_v": _layer0(keys, "pi_i2_v").view(2, 8).flip(0).reshape(-1)},
        "query heads do not move with their KV group": {
            "layers.0.pi_i1_q": _layer0(keys, "pi_i1_q").view(8, 8).roll(1, 0).reshape(-1)},
        "O-projection key does not follow the query heads": {
            "layers.0.pi_i2_o": _layer0(keys, "pi_i2_o").view(2, 4, 8).flip(1).reshape(-1)},
    }
    for message, change in cases.items():
        with pytest.raises(stip.KeyMismatchError, match=re.escape(message)):
            stip.ModelDeveloper(model, keys=_copy(keys, **change))
    # keys drawn without the RoPE constraint but labelled for this model: the within-head order moved
    free = generate_keys(dataclasses.replace(developer.dims, rope=False), 103, "llama", seed=0)
    with pytest.raises(stip.KeyMismatchError, match="under RoPE"):
        stip.ModelDeveloper(model, keys=KeySet(free.tensors, dict(keys.metadata)))


def test_keys_without_model_metadata_are_refused():
    model = tiny_gpt2()
    keys = stip.ModelDeveloper(model, seed=0).keys
    with pytest.raises(stip.KeyMismatchError, match=r"no 'n_heads' metadata"):
        stip.ModelDeveloper(model,
                            keys=KeySet(keys.tensors, {k: v for k, v in keys.metadata.items() if k != "n_heads"}))


def test_key_metadata_records_the_model():
    meta = stip.ModelDeveloper(tiny_llama(), seed=0).keys.metadata
    assert {k: meta[k] for k in ("model_type", "hidden", "n_layers", "n_heads", "n_kv_heads", "head_dim", "rope",
                                 "ffn", "n_experts", "out_dim")} == {
        "model_type": "llama", "hidden": "64", "n_layers": "2", "n_heads": "8", "n_kv_heads": "2", "head_dim": "8",
        "rope": "True", "ffn": "112", "n_experts": "0", "out_dim": "103"}


def test_key_ids_seeded_from_content_unseeded_random(tmp_path):
    model = tiny_gpt2()
    a, b = stip.ModelDeveloper(model, seed=7).keys, stip.ModelDeveloper(model, seed=7).keys
    assert re.fullmatch(r"[0-9a-f]{32}", a.key_id) and a.key_id == b.key_id
    assert stip.ModelDeveloper(model, seed=8).keys.key_id != a.key_id
    r1, r2 = stip.ModelDeveloper(model).keys, stip.ModelDeveloper(model).keys
    assert re.fullmatch(r"[0-9a-f]{32}", r1.key_id) and r1.key_id != r2.key_id
    developer = stip.ModelDeveloper(model, seed=7)
    _, user_file = developer.save_keys(tmp_path)
    assert KeySet.load(user_file).key_id == a.key_id, "the user key file carries the key id"
    assert developer.data_owner().key_id == a.key_id


def test_server_refuses_a_device_with_other_keys():
    model = tiny_gpt2()
    developer = stip.ModelDeveloper(model, seed=0)
    server = stip.ModelServer(developer.cloud_model())
    device = developer.data_owner()
    assert server.key_id == device.key_id == developer.keys.key_id
    ids = sample_inputs(model)["input_ids"]
    out = device.decode(server.infer(device.encode(ids), key_id=device.key_id))["logits"]
    assert torch.allclose(out, model(ids).logits, rtol=1e-4, atol=1e-5)

    stale = stip.ModelDeveloper(model, seed=1).data_owner()  # e.g. keys re-drawn, cloud not redeployed
    with pytest.raises(stip.KeyMismatchError, match=f"device holds keys {stale.key_id} but the cloud model has "
                                                    f"key id {server.key_id}"):
        server.infer(stale.encode(ids), key_id=stale.key_id)
    with pytest.raises(stip.KeyMismatchError, match="other keys"):
        stip.generate(stale, server, ids, max_new_tokens=2)
    plaintext = stip.ModelServer(model)  # a model that was never transformed has no key id
    with pytest.raises(stip.KeyMismatchError, match="no stip_key_id"):
        stip.generate(device, plaintext, ids, max_new_tokens=2)
