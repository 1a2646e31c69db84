"""The families of issue 7 (mistral .. llava): CLI transform, padding, device inputs, refusals."""
import subprocess
import sys

import pytest
import torch
from transformers import (
    AutoModelForSequenceClassification,
    CLIPVisionConfig,
    Gemma2Config,
    LlavaConfig,
    LlavaForConditionalGeneration,
    RobertaModel,
)

import stip

from helpers.equivalence import assert_equivalent, run_both
from helpers.stip_models import FACTORIES, randomise_vectors, sample_inputs, tiny_roberta

NEW = ("mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3", "roberta", "distilbert", "llava")
ROPE = ("llama", "mixtral", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3", "llava")


@pytest.mark.parametrize("family", NEW)
def test_cli_transform_of_a_saved_checkpoint_matches_in_memory(family, tmp_path):
    model = FACTORIES[family]()
    model.save_pretrained(tmp_path / "plain")
    cmd = [sys.executable, "-m", "stip.cli", "transform", "--model", str(tmp_path / "plain"),
           "--out", str(tmp_path / "cloud"), "--keys", str(tmp_path / "keys"), "--seed", "5"]
    subprocess.run(cmd, capture_output=True, text=True, check=True)

    keys = stip.KeySet.load(tmp_path / "keys" / stip.DEVELOPER_KEYS_FILE)
    expected = stip.ModelDeveloper(model, keys=keys).cloud_model().state_dict()
    cloud = type(model).from_pretrained(tmp_path / "cloud").eval()
    assert cloud.state_dict().keys() == expected.keys()
    for name, value in cloud.state_dict().items():
        assert torch.equal(value, expected[name]), name

    device = stip.DataOwner.from_model(model, stip.KeySet.load(tmp_path / "keys" / stip.USER_KEYS_FILE))
    inputs = sample_inputs(model)
    on_device = {k: inputs.pop(k) for k in device.family.device_inputs if k in inputs}
    out = device.decode(stip.ModelServer(cloud).infer(device.encode(inputs.pop("input_ids"), **on_device), **inputs))
    reference = model(**sample_inputs(model))
    assert_equivalent(reference, out)


@pytest.mark.parametrize("family", ROPE)
def test_rope_families_move_whole_heads_only(family):
    """q_norm/k_norm (qwen3, gemma3) stay unpermuted only because the within-head Q/K order is fixed."""
    model = FACTORIES[family]()
    dims = stip.get_family(model.config.model_type).dims(model.config)
    keys = stip.ModelDeveloper(model, seed=3).keys
    for name in ("pi_i1_q", "pi_i1_k"):
        heads = keys[f"layers.0.{name}"].view(-1, dims.head_dim)
        assert torch.equal(heads - heads[:, :1], torch.arange(dims.head_dim).expand_as(heads)), name


def _padded_ids(vocab: int, pad: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(3, vocab, (3, 10), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(ids)
    for row, n_pad in enumerate((0, 3, 6)):
        cols = slice(0, n_pad) if left else slice(10 - n_pad, 10)
        ids[row, cols], mask[row, cols] = pad, 0
    return ids, mask


@pytest.mark.parametrize("left", [False, True], ids=["right-padded", "left-padded"])
def test_roberta_positions_follow_padding_exactly(left):
    """RoBERTa numbers positions from the ids (pads keep padding_idx); the device reproduces it."""
    model = randomise_vectors(RobertaModel(tiny_roberta().config))
    ids, mask = _padded_ids(model.config.vocab_size, model.config.pad_token_id, left)
    embeddings = model.embeddings
    naive = model(inputs_embeds=embeddings.word_embeddings(ids), attention_mask=mask).last_hidden_state
    reference, decoded = run_both(model, {"input_ids": ids, "attention_mask": mask})
    assert set(decoded) == {"last_hidden_state", "pooler_output"}
    assert_equivalent(reference, decoded)
    # why the device must do it: transformers' own inputs_embeds path numbers the positions differently
    assert (naive - reference.last_hidden_state).abs().max() > 1e-2


def test_roberta_token_types_are_embedded_on_the_device_and_refused_by_the_server():
    model = tiny_roberta(type_vocab_size=2)
    inputs = sample_inputs(model)
    inputs["token_type_ids"] = torch.randint(0, 2, inputs["input_ids"].shape,
                                             generator=torch.Generator().manual_seed(1))
    reference, decoded = run_both(model, inputs)  # DataOwner.request embeds token_type_ids on the device
    assert_equivalent(reference, decoded)

    developer = stip.ModelDeveloper(model, seed=0)
    server, device = stip.ModelServer(developer.cloud_model()), developer.data_owner()
    with pytest.raises(ValueError, match="embeds it on the device; build the request with DataOwner.request"):
        server.infer(device.encode(inputs["input_ids"]), token_type_ids=inputs["token_type_ids"])


def test_device_refuses_inputs_its_family_does_not_embed():
    model = FACTORIES["mistral"]()
    device = stip.ModelDeveloper(model, seed=0).data_owner()
    with pytest.raises(stip.StipInputError, match=r"the mistral device embeds no \['pixel_values'\]"):
        device.encode(sample_inputs(model)["input_ids"], pixel_values=torch.zeros(1, 3, 16, 16))


def test_distilbert_padding_matches_plaintext():
    model = FACTORIES["distilbert"]()
    ids, mask = _padded_ids(model.config.vocab_size, 0, left=False)
    reference, decoded = run_both(model, {"input_ids": ids, "attention_mask": mask})
    assert_equivalent(reference, decoded)


def test_llava_with_another_language_model_is_refused_by_name():
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4,
                              image_size=16, patch_size=4)
    text = Gemma2Config(hidden_size=64, intermediate_size=96, num_hidden_layers=1, num_attention_heads=4,
                        num_key_value_heads=2, head_dim=16, vocab_size=103)
    model = LlavaForConditionalGeneration(LlavaConfig(vision_config=vision, text_config=text, image_token_id=102))
    with pytest.raises(stip.UnsupportedModelError, match="llava with a 'gemma2' language model has no STIP"):
        stip.ModelDeveloper(model, seed=0)


@pytest.mark.parametrize("model_type", ["gemma3", "opt", "t5", "qwen2_moe"])
def test_other_model_types_are_refused_with_the_supported_list(model_type):
    with pytest.raises(stip.UnsupportedModelError) as err:
        stip.get_family(model_type)
    assert f"model_type '{model_type}' has no STIP transform" in str(err.value)
    for supported in ("gpt2", "bert", "roberta", "distilbert", "llama", "mistral", "mixtral", "qwen2", "qwen3",
                      "gemma2", "gemma3_text", "phi3", "vit", "llava"):
        assert supported in str(err.value)
    assert len(stip.FAMILIES) == 14


@pytest.mark.parametrize("family", ["mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3"])
def test_decoder_sequence_classification_head(family):
    """docs/protocol-library.md lists `score` heads for the decoders: unpadded prompts pool the same last token."""
    config = FACTORIES[family]().config
    config.pad_token_id, config.num_labels = 0, 3
    torch.manual_seed(0)
    model = randomise_vectors(AutoModelForSequenceClassification.from_config(config))
    ids = torch.randint(2, config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(2))  # no pad id
    reference, decoded = run_both(model, {"input_ids": ids})
    assert decoded["logits"].shape == (2, 3)
    assert_equivalent(reference, decoded)
