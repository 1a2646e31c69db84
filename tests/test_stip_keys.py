"""Keys: reproducible when seeded, secret otherwise, owner-only files, lossless round trip."""
import stat

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, OPTConfig, OPTForCausalLM

import stip

from helpers.stip_models import sample_inputs, tiny_gpt2, tiny_llama


def test_seeded_keys_are_reproducible_and_unseeded_differ():
    model = tiny_gpt2()
    a, b = stip.ModelDeveloper(model, seed=7).keys, stip.ModelDeveloper(model, seed=7).keys
    assert a.tensors.keys() == b.tensors.keys()
    assert all(torch.equal(a[k], b[k]) for k in a.tensors)
    other = stip.ModelDeveloper(model, seed=8).keys
    assert not torch.equal(a["pi"], other["pi"])
    r1, r2 = stip.ModelDeveloper(model).keys, stip.ModelDeveloper(model).keys
    assert not torch.equal(r1["pi_c"], r2["pi_c"]), "unseeded keys must come from fresh OS randomness"
    assert r1.metadata["seeded"] == "False"


def test_key_files_are_owner_only_and_round_trip(tmp_path):
    model = tiny_llama()
    developer = stip.ModelDeveloper(model, seed=1)
    dev_file, user_file = developer.save_keys(tmp_path / "keys")
    for path in (dev_file, user_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = stip.KeySet.load(dev_file)
    assert loaded.tensors.keys() == developer.keys.tensors.keys()
    assert all(torch.equal(loaded[k], developer.keys[k]) for k in loaded.tensors)
    user = stip.KeySet.load(user_file)
    assert set(user.tensors) == {"pi", "pi_c"}, "a user gets the input and output permutations only"
    # the reloaded keys rebuild the same cloud model
    again = stip.ModelDeveloper(model, keys=loaded).cloud_model().state_dict()
    first = developer.cloud_model().state_dict()
    assert all(torch.equal(first[k], again[k]) for k in first)


def test_keys_never_print_values():
    keys = stip.ModelDeveloper(tiny_gpt2(), seed=0).keys
    text = repr(keys) + str(keys.describe())
    assert str(keys["pi"].tolist()[:6])[1:-1] not in text
    assert all(row["is_permutation"] for row in keys.describe())


def test_keys_of_another_model_are_refused():
    gpt2_keys = stip.ModelDeveloper(tiny_gpt2(), seed=0).keys
    with pytest.raises(stip.KeyMismatchError, match="another model"):
        stip.ModelDeveloper(tiny_llama(), keys=gpt2_keys)
    with pytest.raises(stip.KeyMismatchError, match="hidden=64 but this model has hidden=96"):
        wider = GPT2LMHeadModel(GPT2Config(n_embd=96, n_layer=2, n_head=4, vocab_size=97))
        stip.DataOwner.from_model(wider, gpt2_keys)


def test_wrong_hidden_size_and_rank_are_refused():
    developer = stip.ModelDeveloper(tiny_gpt2(), seed=0)
    server = stip.ModelServer(developer.cloud_model())
    with pytest.raises(stip.StipInputError, match="hidden size 32"):
        server.infer(torch.zeros(1, 4, 32))
    with pytest.raises(stip.StipInputError, match="float tensor"):
        server.infer(torch.zeros(4, 64, dtype=torch.long))
    with pytest.raises(stip.StipInputError, match="unknown session"):
        server.infer(torch.zeros(1, 4, 64), session="nope")


def test_unknown_model_type_names_it_and_lists_supported():
    model = OPTForCausalLM(OPTConfig(hidden_size=32, num_hidden_layers=1, ffn_dim=64, num_attention_heads=4,
                                     vocab_size=50, word_embed_proj_dim=32))
    with pytest.raises(stip.UnsupportedModelError,
                       match=r"'opt'.*supported: bert, distilbert, gemma2, gemma3_text, gpt2, "
                       r"llama, llava, mistral, mixtral, phi3, qwen2, qwen3, roberta, vit"):
        stip.ModelDeveloper(model)


def test_wrong_key_does_not_decode():
    model = tiny_gpt2()
    inputs = sample_inputs(model, batch=4, seq=32)["input_ids"]
    reference = model(inputs).logits
    developer = stip.ModelDeveloper(model, seed=0)
    server = stip.ModelServer(developer.cloud_model())
    wrong = stip.ModelDeveloper(model, seed=99).data_owner()
    out = wrong.decode(server.infer(wrong.encode(inputs)))["logits"]
    agreement = (out.argmax(-1) == reference.argmax(-1)).float().mean().item()
    assert agreement < 0.1, f"a wrong key decoded {agreement:.0%} of top-1 tokens"


def test_plaintext_embeddings_to_cloud_agree_no_better_than_chance():
    model = tiny_llama()
    inputs = sample_inputs(model, batch=4, seq=32)["input_ids"]
    reference = model(inputs).logits.argmax(-1)
    developer = stip.ModelDeveloper(model, seed=0)
    server = stip.ModelServer(developer.cloud_model())
    device = developer.data_owner()
    out = device.decode(server.infer(device.embed(inputs)))["logits"].argmax(-1)  # skipped the permutation
    agreement = (out == reference).float().mean().item()
    chance = 1 / model.config.vocab_size
    assert agreement < chance + 0.05, f"unpermuted input agreed on {agreement:.1%} (chance {chance:.1%})"
