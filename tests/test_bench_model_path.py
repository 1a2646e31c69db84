"""`model=local model.path=DIR`: your own save_pretrained folder, family and head from its config.json."""
from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir
from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel

from bench.app import CONFIG_DIR, run
from protocols.models import build_spec

TOY = ["run.repeats=1", "run.warmup=0", "run.seq_len=8", "network=none", "cloud_timeout_s=60"]


def _bert_folder(tmp_path):
    torch.manual_seed(3)
    model = BertModel(BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=64, max_position_embeddings=64))
    folder = tmp_path / "my-bert"
    model.save_pretrained(folder)
    return model, folder


def test_spec_comes_from_the_folder_config(tmp_path):
    model, folder = _bert_folder(tmp_path)
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=["model=local", f"model.path={folder}"])
    spec = build_spec(cfg.model)
    assert (spec.name, spec.model_type, spec.head, spec.weights) == ("my-bert", "bert", "base", "path")
    assert spec.n_params == sum(p.numel() for p in model.parameters())
    built = spec.build()
    assert torch.equal(built.embeddings.word_embeddings.weight, model.embeddings.word_embeddings.weight)
    gpt = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=50, n_positions=32))
    gpt.save_pretrained(tmp_path / "g")
    assert build_spec({"path": str(tmp_path / "g")}).head == "causal_lm"


def test_folder_without_config_is_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="has no config.json"):
        build_spec({"path": str(tmp_path)})


@pytest.mark.slow
def test_stip_runs_on_your_own_folder(tmp_path):
    _, folder = _bert_folder(tmp_path)
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=["model=local", f"model.path={folder}", "protocol=stip",
                                           f"output_root={tmp_path / 'runs'}", *TOY])
    report = run(cfg)
    assert report.status == "ok", report.error
    assert report.n_rows > 0
