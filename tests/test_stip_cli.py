"""`stip transform` / `stip keys`: stale --out, keys placement, the hub GPT-2 layout, one-line errors."""
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import GPT2Config, GPT2LMHeadModel, LlamaForCausalLM, OPTConfig, OPTForCausalLM

import stip
from stip.cli import main as stip_main

from helpers.stip_models import sample_inputs, tiny_gpt2, tiny_llama


def transform(capsys, tmp_path, model_dir, out="cloud", keys="keys", *extra):
    capsys.readouterr()  # drop what earlier steps printed (save_pretrained's progress bars)
    return stip_main(["transform", "--model", str(model_dir), "--out", str(tmp_path / out),
                      "--keys", str(tmp_path / keys), *extra])


def assert_cloud_equals_plaintext(model, cloud_dir, keys_dir, cls):
    cloud, info = cls.from_pretrained(cloud_dir, output_loading_info=True)
    assert not info["missing_keys"], sorted(info["missing_keys"])
    device = stip.DataOwner.from_model(model, stip.KeySet.load(keys_dir / stip.USER_KEYS_FILE))
    ids = sample_inputs(model)["input_ids"]
    out = device.decode(stip.ModelServer(cloud.eval()).infer(device.encode(ids), key_id=device.key_id))["logits"]
    assert torch.allclose(out, model(ids).logits, rtol=1e-4, atol=1e-5)


def one_line_error(capsys, code, *needles):
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("stip transform: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return err


def test_reused_out_is_refused_and_force_replaces_stale_weights(tmp_path, capsys):
    model = tiny_llama()  # tied: one input file becomes two files + an index
    model.save_pretrained(tmp_path / "plain")
    (tmp_path / "cloud").mkdir()
    stale = {"model.embed_tokens.weight": torch.zeros(3)}
    save_file(stale, str(tmp_path / "cloud" / "model.safetensors"))  # e.g. a run with other keys
    one_line_error(capsys, transform(capsys, tmp_path, tmp_path / "plain"), str(tmp_path / "cloud"), "--force")
    assert transform(capsys, tmp_path, tmp_path / "plain", "cloud", "keys", "--force", "--seed", "1") == 0
    summary = json.loads(capsys.readouterr().out)
    assert "model.safetensors" in summary["replaced"]
    assert not (tmp_path / "cloud" / "model.safetensors").exists(), "the stock loader would prefer the stale file"
    assert_cloud_equals_plaintext(model, tmp_path / "cloud", tmp_path / "keys", LlamaForCausalLM)


def test_existing_key_files_are_not_overwritten_without_force(tmp_path, capsys):
    model = tiny_gpt2()
    model.save_pretrained(tmp_path / "plain")
    assert transform(capsys, tmp_path, tmp_path / "plain", "cloud1", "keys") == 0
    capsys.readouterr()
    before = (tmp_path / "keys" / stip.DEVELOPER_KEYS_FILE).read_bytes()
    one_line_error(capsys, transform(capsys, tmp_path, tmp_path / "plain", "cloud2", "keys"), stip.DEVELOPER_KEYS_FILE,
                   "--force")
    assert (tmp_path / "keys" / stip.DEVELOPER_KEYS_FILE).read_bytes() == before
    assert not (tmp_path / "cloud2").exists(), "nothing is written before every check passed"


@pytest.mark.parametrize("keys", ["cloud", "cloud/keys"])
def test_keys_inside_out_are_refused(tmp_path, capsys, keys):
    tiny_gpt2().save_pretrained(tmp_path / "plain")
    one_line_error(capsys, transform(capsys, tmp_path, tmp_path / "plain", "cloud", keys, "--force"), "inside --out")
    assert not (tmp_path / "cloud").exists()


def _hub_gpt2_layout(model, folder):
    """Rewrite a saved GPT2LMHeadModel as the hub ships GPT-2: base-model names, mask buffers, no head."""
    model.save_pretrained(folder)
    tensors = load_file(str(folder / "model.safetensors"))
    hub = {name.removeprefix("transformer."): t for name, t in tensors.items() if name != "lm_head.weight"}
    n = model.config.n_positions
    for i in range(model.config.n_layer):
        hub[f"h.{i}.attn.bias"] = torch.tril(torch.ones(n, n)).view(1, 1, n, n)
        hub[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    save_file(hub, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text())
    config.update(architectures=["GPT2LMHeadModel"], tie_word_embeddings=True)
    (folder / "config.json").write_text(json.dumps(config))


def test_hub_gpt2_layout_transforms_and_reloads(tmp_path, capsys):
    model = tiny_gpt2()
    _hub_gpt2_layout(model, tmp_path / "hub")
    plain = GPT2LMHeadModel.from_pretrained(tmp_path / "hub").eval()  # the hub layout loads as it is
    ids = sample_inputs(model)["input_ids"]
    assert torch.allclose(plain(ids).logits, model(ids).logits)
    assert transform(capsys, tmp_path, tmp_path / "hub") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["materialised"] == ["lm_head.weight"]
    assert sorted(summary["skipped"]) == sorted(f"h.{i}.attn.{b}" for i in range(2) for b in ("bias", "masked_bias"))
    assert summary["renamed"] > 0
    config = json.loads((tmp_path / "cloud" / "config.json").read_text())
    user = stip.KeySet.load(tmp_path / "keys" / stip.USER_KEYS_FILE)
    assert config["stip_key_id"] == user.key_id and config["tie_word_embeddings"] is False
    assert_cloud_equals_plaintext(model, tmp_path / "cloud", tmp_path / "keys", GPT2LMHeadModel)


def test_cli_errors_are_one_line(tmp_path, capsys):
    one_line_error(capsys, transform(capsys, tmp_path, tmp_path / "missing"), str(tmp_path / "missing"), "not a folder")
    OPTForCausalLM(OPTConfig(hidden_size=32, num_hidden_layers=1, ffn_dim=64, num_attention_heads=4, vocab_size=50,
                             word_embed_proj_dim=32)).save_pretrained(tmp_path / "opt")
    one_line_error(capsys, transform(capsys, tmp_path, tmp_path / "opt"), "model_type 'opt'", "supported: ")
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "config.json").write_text(json.dumps({"model_type": "not-a-model"}))
    one_line_error(capsys, transform(capsys, tmp_path, tmp_path / "odd"), "'not-a-model'")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text((tmp_path / "opt" / "config.json").read_text()
                                                    .replace('"opt"', '"gpt2"'))
    one_line_error(capsys, transform(capsys, tmp_path, tmp_path / "empty"), "no *.safetensors")
    tiny_llama().save_pretrained(tmp_path / "noarch")  # tied head, but which class ties what is unknown
    config = json.loads((tmp_path / "noarch" / "config.json").read_text())
    del config["architectures"]
    (tmp_path / "noarch" / "config.json").write_text(json.dumps(config))
    one_line_error(capsys, transform(capsys, tmp_path, tmp_path / "noarch"), "no architectures")
    # as a console script, without the in-process harness: still one line, exit status 2
    done = subprocess.run([sys.executable, "-m", "stip.cli", "transform", "--model", str(tmp_path / "opt"),
                           "--out", str(tmp_path / "o"), "--keys", str(tmp_path / "o" / "k")],
                          capture_output=True, text=True)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "inside --out" in done.stderr


def test_keys_command_takes_a_folder_and_lists_layers_in_numeric_order(tmp_path, capsys):
    model = GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=12, n_head=2, vocab_size=31, n_positions=16))
    developer = stip.ModelDeveloper(model, seed=0)
    developer.save_keys(tmp_path / "keys")
    assert stip_main(["keys", str(tmp_path / "keys")]) == 0
    shown = capsys.readouterr().out
    assert stip.DEVELOPER_KEYS_FILE in shown and stip.USER_KEYS_FILE in shown
    assert shown.index("layers.2.pi_i3") < shown.index("layers.10.pi_i3")
    assert developer.keys.key_id in shown
    assert str(developer.keys["pi"].tolist()[:6])[1:-1] not in shown, "key values must never be printed"
