"""Decoder sequence classifiers pool at the last non-pad token, which only the device can find."""
import pytest
import torch
from transformers import GPT2Config, GPT2ForSequenceClassification, LlamaConfig, LlamaForSequenceClassification

import stip

from helpers.stip_models import randomise_vectors

PAD = 5


def tiny_gpt2_classifier(pad_token_id=PAD, eos_token_id=0):
    torch.manual_seed(0)
    cfg = GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=97, n_positions=64, num_labels=3,
                     bos_token_id=0, eos_token_id=eos_token_id, pad_token_id=pad_token_id)
    return randomise_vectors(GPT2ForSequenceClassification(cfg))


def tiny_llama_classifier(pad_token_id=PAD, eos_token_id=1):
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=112, num_hidden_layers=2, num_attention_heads=8,
                      num_key_value_heads=2, vocab_size=103, max_position_embeddings=128, num_labels=3,
                      bos_token_id=0, eos_token_id=eos_token_id, pad_token_id=pad_token_id)
    return randomise_vectors(LlamaForSequenceClassification(cfg))


CLASSIFIERS = {"gpt2": tiny_gpt2_classifier, "llama": tiny_llama_classifier}


def _ids(n_rows=3, seq=9, seed=0):
    ids = torch.randint(10, 90, (n_rows, seq), generator=torch.Generator().manual_seed(seed))
    return ids


def _stip_logits(model, ids, mask=None):
    developer = stip.ModelDeveloper(model, seed=0)
    device, server = developer.data_owner(), stip.ModelServer(developer.cloud_model())
    request = device.request(ids, attention_mask=mask)
    assert {k for k, v in request.items() if isinstance(v, torch.Tensor)} == \
        {"inputs_embeds"} | ({"attention_mask"} if mask is not None else set())
    return device.decode(server.infer(**request), input_ids=ids)["logits"]


def _pooled_at_last_position(model, ids, mask=None):
    """What a cloud pooling blind to padding computes: the score at position -1."""
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
        return model.score(hidden[:, -1])


def _assert_same(stip_logits, plain_logits):
    assert stip_logits.shape == plain_logits.shape
    rel = (stip_logits - plain_logits).abs().max() / plain_logits.abs().max()
    assert rel < 1e-4, f"relative error {rel:.2e}"


@pytest.mark.parametrize("family", sorted(CLASSIFIERS))
def test_right_padded_batch_pools_the_last_real_token(family):
    model = CLASSIFIERS[family]()
    ids, mask = _ids(), torch.ones(3, 9, dtype=torch.long)
    for row, length in enumerate((9, 6, 3)):  # right padding, the GPT-2 tokenizer's default
        ids[row, length:], mask[row, length:] = PAD, 0
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=mask).logits
    assert not torch.allclose(_pooled_at_last_position(model, ids, mask)[1:], plain[1:], atol=1e-3)
    _assert_same(_stip_logits(model, ids, mask), plain)


@pytest.mark.parametrize("family", sorted(CLASSIFIERS))
def test_prompts_ending_in_the_pad_token_when_pad_is_eos(family):
    eos = 0 if family == "gpt2" else 1
    model = CLASSIFIERS[family](pad_token_id=eos, eos_token_id=eos)
    ids = _ids()
    ids[0, -1] = eos  # a prompt that ends in eos == pad: transformers pools the token before it
    ids[1, -2:] = eos
    with torch.no_grad():
        plain = model(input_ids=ids).logits
    assert not torch.allclose(_pooled_at_last_position(model, ids)[:2], plain[:2], atol=1e-3)
    _assert_same(_stip_logits(model, ids), plain)


@pytest.mark.parametrize("family", sorted(CLASSIFIERS))
def test_left_padded_batch_and_single_row_without_pad_token(family):
    model = CLASSIFIERS[family]()
    ids, mask = _ids(seed=1), torch.ones(3, 9, dtype=torch.long)
    ids[1, :4], mask[1, :4] = PAD, 0
    with torch.no_grad():
        _assert_same(_stip_logits(model, ids, mask), model(input_ids=ids, attention_mask=mask).logits)
    no_pad = CLASSIFIERS[family](pad_token_id=None)
    with torch.no_grad():
        _assert_same(_stip_logits(no_pad, ids[:1]), no_pad(input_ids=ids[:1]).logits)
    device = stip.ModelDeveloper(no_pad, seed=0).data_owner()
    with pytest.raises(stip.StipInputError, match="pad_token_id"):  # transformers refuses it too
        device.request(ids)


def test_device_pools_and_the_server_returns_every_position():
    model = tiny_gpt2_classifier()
    developer = stip.ModelDeveloper(model, seed=0)
    device, server = developer.data_owner(), stip.ModelServer(developer.cloud_model())
    ids = _ids()
    out = server.infer(**device.request(ids))
    assert set(out) == {"position_logits"} and out["position_logits"].shape == (3, 9, 3)
    with pytest.raises(stip.StipInputError, match="input_ids=ids"):
        device.decode(out)
    with pytest.raises(stip.StipInputError, match="ids this request was built from"):
        device.decode(out, input_ids=ids[:, :-1])
    with pytest.raises(stip.StipInputError, match="server pooled itself"):
        device.decode({"logits": out["position_logits"][:, -1]}, input_ids=ids)
    with pytest.raises(stip.StipInputError, match="per-position scores"):
        server.infer(**{**device.request(ids), "last_only": True})
