"""Every head docs/protocol-library.md lists reloads from the cloud checkpoint with a stock from_pretrained.

Both ways of making the checkpoint: save_pretrained of the in-memory cloud model, and
`stip transform`. No tensor may be missing on reload (a missing tied target is initialised
fresh: BERT's masked-LM decoder bias gave 0% top-1), and the cloud output equals plaintext.
"""
import pytest
import torch
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertLMHeadModel,
    BertModel,
    GPT2Config,
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
    GPT2Model,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    MixtralConfig,
    MixtralForCausalLM,
    ViTConfig,
    ViTForImageClassification,
    ViTModel,
)

import stip
from stip.cli import main as stip_main

from helpers.stip_models import randomise_vectors, sample_inputs

VOCAB = 97


def _gpt2(**kw):
    return GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=64, bos_token_id=0,
                      eos_token_id=0, pad_token_id=VOCAB - 1, num_labels=3, **kw)


def _bert(**kw):
    return BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
                      vocab_size=VOCAB, max_position_embeddings=64, type_vocab_size=2, num_labels=3, **kw)


def _llama(tied=True):
    return LlamaConfig(hidden_size=64, intermediate_size=112, num_hidden_layers=2, num_attention_heads=8,
                       num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=128, tie_word_embeddings=tied,
                       bos_token_id=0, eos_token_id=1, pad_token_id=VOCAB - 1, num_labels=3)


def _mixtral():
    return MixtralConfig(hidden_size=64, intermediate_size=80, num_hidden_layers=2, num_attention_heads=8,
                         num_key_value_heads=4, vocab_size=VOCAB, num_local_experts=4, num_experts_per_tok=2,
                         max_position_embeddings=128, bos_token_id=0, eos_token_id=1)


def _vit():
    return ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
                     image_size=32, patch_size=8, num_labels=7)


HEADS = {
    "gpt2-lm": (GPT2LMHeadModel, _gpt2),
    "gpt2-seqcls": (GPT2ForSequenceClassification, _gpt2),
    "gpt2-base": (GPT2Model, _gpt2),
    "bert-base-pooler": (BertModel, _bert),
    "bert-seqcls": (BertForSequenceClassification, _bert),
    "bert-masked-lm": (BertForMaskedLM, _bert),
    "bert-lm-head": (BertLMHeadModel, lambda: _bert(is_decoder=True)),
    "llama-causal-tied": (LlamaForCausalLM, _llama),
    "llama-causal-untied": (LlamaForCausalLM, lambda: _llama(tied=False)),
    "llama-seqcls": (LlamaForSequenceClassification, _llama),
    "mixtral-causal": (MixtralForCausalLM, _mixtral),
    "vit-imgcls": (ViTForImageClassification, _vit),
    "vit-base": (ViTModel, _vit),
}


def _build(name):
    cls, config = HEADS[name]
    torch.manual_seed(0)
    return randomise_vectors(cls(config()))


def _assert_cloud_equals_plaintext(model, cloud, device):
    inputs = sample_inputs(model)
    main = inputs.pop(device.family.input_name)
    with torch.no_grad():
        expected = model(**{device.family.input_name: main}, **inputs)
    request = device.request(main, **inputs)
    out = device.decode(stip.ModelServer(cloud).infer(**request), input_ids=main)
    assert out
    for name, value in out.items():
        assert torch.allclose(value, expected[name], rtol=1e-4, atol=1e-5), name


def _reload(cls, folder):
    cloud, info = cls.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"], f"reload initialised {sorted(info['missing_keys'])} fresh"
    assert not info["mismatched_keys"]
    return cloud.eval()


@pytest.mark.parametrize("head", sorted(HEADS))
def test_in_memory_cloud_model_reloads(head, tmp_path):
    model = _build(head)
    developer = stip.ModelDeveloper(model, seed=0)
    developer.cloud_model().save_pretrained(tmp_path)
    cloud = _reload(type(model), tmp_path)
    assert cloud.config.stip_key_id == developer.keys.key_id
    _assert_cloud_equals_plaintext(model, cloud, developer.data_owner())


@pytest.mark.parametrize("head", sorted(HEADS))
def test_stip_transform_output_reloads(head, tmp_path):
    model = _build(head)
    model.save_pretrained(tmp_path / "plain", max_shard_size="40KB")
    assert stip_main(["transform", "--model", str(tmp_path / "plain"), "--out", str(tmp_path / "cloud"),
                      "--keys", str(tmp_path / "keys"), "--seed", "3"]) == 0
    cloud = _reload(type(model), tmp_path / "cloud")
    device = stip.DataOwner.from_model(model, stip.KeySet.load(tmp_path / "keys" / stip.USER_KEYS_FILE))
    assert cloud.config.stip_key_id == device.key_id
    _assert_cloud_equals_plaintext(model, cloud, device)
