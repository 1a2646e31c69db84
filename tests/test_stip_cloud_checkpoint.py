"""Non-intrusive: the stock class reloads the cloud checkpoint; nothing protected leaks into it."""
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import stip
from stip.families import DEVICE

from helpers.stip_models import FACTORIES, sample_inputs, tiny_gpt2, tiny_llama


def _load_checkpoint(folder):
    tensors = {}
    for shard in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(str(shard)))
    return tensors


@pytest.mark.parametrize("family", sorted(FACTORIES))
def test_cloud_checkpoint_reloads_with_stock_class_and_hides_protected_tensors(family, tmp_path):
    model = FACTORIES[family]()
    developer = stip.ModelDeveloper(model, seed=0)
    developer.cloud_model().save_pretrained(tmp_path)
    reloaded = type(model).from_pretrained(tmp_path).eval()  # the stock class, nothing patched
    assert not getattr(reloaded.config, "tie_word_embeddings", False)

    model.save_pretrained(tmp_path / "plain")  # same on-disk layout (Mixtral's differs from memory)
    original = _load_checkpoint(tmp_path / "plain")
    on_disk = _load_checkpoint(tmp_path)
    assert set(on_disk) <= set(original) | {"lm_head.weight"}
    for name, tensor in on_disk.items():
        spaces, _ = developer.family.spaces_for(name)
        if spaces == DEVICE:
            assert not tensor.any(), f"{name} belongs on the device but reached the cloud"
        elif all(space is None for space in spaces):
            # in the clear by design (q/k norms); docs/protocol-library.md says so
            assert torch.equal(tensor, original[name]), name
        elif spaces == ("k",) and developer.family.rope:
            # a RoPE K bias moves by whole KV groups only: with 2 groups, unchanged half the time
            assert torch.equal(tensor.sort().values, original[name].sort().values), name
        else:
            # a tied head is not stored in the plain checkpoint: compare it with the embedding it was
            plain = original[name] if name in original else model.get_input_embeddings().weight.detach()
            assert not torch.equal(tensor, plain), f"{name} appears unchanged in the cloud checkpoint"

    device = developer.data_owner()
    inputs = sample_inputs(model)
    main = inputs.pop(device.family.input_name)
    on_device = {k: inputs.pop(k) for k in device.family.device_inputs if k in inputs}
    expected = model(**{device.family.input_name: main}, **on_device, **inputs)
    out = device.decode(stip.ModelServer(reloaded).infer(device.encode(main, **on_device), **inputs))
    for name, value in out.items():
        assert torch.allclose(value, expected[name], rtol=1e-4, atol=1e-5), name


@pytest.mark.parametrize("factory, shard", [(tiny_gpt2, "60KB"), (tiny_llama, "60KB"), (tiny_llama, "50MB")],
                         ids=["gpt2", "llama-tied", "llama-tied-one-file"])
def test_shard_by_shard_transform_matches_in_memory(factory, shard, tmp_path):
    model = factory()
    model.save_pretrained(tmp_path / "plain", max_shard_size=shard)
    cmd = [sys.executable, "-m", "stip.cli", "transform", "--model", str(tmp_path / "plain"),
           "--out", str(tmp_path / "cloud"), "--keys", str(tmp_path / "keys"), "--seed", "5"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    summary = json.loads(done.stdout)
    assert summary["untied_head"] == bool(model.config.tie_word_embeddings)

    keys = stip.KeySet.load(tmp_path / "keys" / stip.DEVELOPER_KEYS_FILE)
    expected = stip.ModelDeveloper(model, keys=keys).cloud_model().state_dict()
    cloud = AutoModelForCausalLM.from_pretrained(tmp_path / "cloud").eval()
    for name, value in cloud.state_dict().items():
        assert torch.equal(value, expected[name]), name

    device = stip.DataOwner.from_model(model, stip.KeySet.load(tmp_path / "keys" / stip.USER_KEYS_FILE))
    ids = sample_inputs(model)["input_ids"]
    out = device.decode(stip.ModelServer(cloud).infer(device.encode(ids)))["logits"]
    assert torch.allclose(out, model(ids).logits, rtol=1e-4, atol=1e-5)

    shown = subprocess.run([sys.executable, "-m", "stip.cli", "keys",
                            str(tmp_path / "keys" / stip.DEVELOPER_KEYS_FILE)],
                           capture_output=True, text=True, check=True).stdout
    assert "pi_c" in shown and "valid permutation" in shown
    assert str(keys["pi"].tolist()[:6])[1:-1] not in shown, "key values must never be printed"


def test_transform_cli_reports_bad_input(tmp_path):
    done = subprocess.run([sys.executable, "-m", "stip.cli", "transform", "--model", str(tmp_path),
                           "--out", str(tmp_path / "o"), "--keys", str(tmp_path / "k")], capture_output=True, text=True)
    assert done.returncode == 2 and "has no config.json" in done.stderr
