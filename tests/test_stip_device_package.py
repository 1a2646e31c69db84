"""The docs/protocol-library.md recipe end to end: `stip transform`, `stip device-package`, a stock
from_pretrained server, and a device loaded in one call gives the plaintext model's outputs."""
from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel

import stip
from stip.cli import main as stip_main


def _models():
    torch.manual_seed(0)
    yield GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=64, n_positions=32)), GPT2LMHeadModel
    yield BertModel(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=64, max_position_embeddings=32)), BertModel


@pytest.mark.parametrize("model,cls", list(_models()), ids=["gpt2-lm", "bert"])
def test_recipe_from_transform_to_a_working_device(tmp_path, model, cls):
    model.eval().save_pretrained(tmp_path / "orig")
    assert stip_main(["transform", "--model", str(tmp_path / "orig"), "--out", str(tmp_path / "cloud"),
                      "--keys", str(tmp_path / "keys"), "--seed", "1"]) == 0
    assert stip_main(["device-package", "--model", str(tmp_path / "orig"), "--keys", str(tmp_path / "keys"),
                      "--out", str(tmp_path / "device")]) == 0
    assert not (tmp_path / "device" / "model.safetensors").exists()  # the transformer stays off the device
    device = stip.load_device_package(tmp_path / "device")
    server = stip.ModelServer(cls.from_pretrained(tmp_path / "cloud").eval())  # a stock from_pretrained
    ids = torch.randint(0, 64, (2, 7))
    mask = torch.ones_like(ids)
    out = device.decode(server.infer(**device.request(ids, attention_mask=mask)), input_ids=ids)
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask)
    key = "logits" if "logits" in out else "last_hidden_state"
    torch.testing.assert_close(out[key], ref[key], atol=1e-4, rtol=1e-4)
    # a second package into the same folder is refused without --force
    assert stip_main(["device-package", "--model", str(tmp_path / "orig"), "--keys", str(tmp_path / "keys"),
                      "--out", str(tmp_path / "device")]) != 0


def test_missing_package_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="stip device-package"):
        stip.load_device_package(tmp_path)
