"""The MPC accuracy study as experiments: real sentences through the tokenizer, MPC simulated or run, one table."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from baselines.mpc.protocol import MpcConfig
from bench.aggregate import aggregate
from bench.app import CONFIG_DIR, run
from protocols.models import build_spec, load_tokenizer
from protocols.sentences import SENTENCES, sentence_inputs
from protocols.summaries import accuracy_table


def cfg(tmp_path: Path, *overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("config", overrides=[f"output_root={tmp_path / 'runs'}", *overrides])


def test_sentence_inputs_are_real_tokens_padded_to_seq_len():
    tok = load_tokenizer("minilm")
    got = sentence_inputs(tok, 3, 16, seed=1)
    assert got["input_ids"].shape == (3, 16) and got["attention_mask"].shape == (3, 16)
    assert tok.decode(got["input_ids"][0][got["attention_mask"][0].bool()], skip_special_tokens=True) \
        == SENTENCES[1].lower()
    assert (got["attention_mask"][:, -1] == 0).all()  # right padding: every sentence is shorter than 16
    assert sentence_inputs(tok, 2, 4, seed=0)["input_ids"].shape == (2, 4)  # cut to seq_len


def test_model_inputs_option_is_checked():
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        model = dict(compose("config", overrides=["model=bert-tiny"])["model"])
    with pytest.raises(ValueError, match="inputs='words' is unknown"):
        build_spec({**model, "inputs": "words"})
    ids = build_spec({**model, "inputs": "sentences"}).make_inputs(2, 16, 0)["input_ids"]
    assert ids[0, 0] == 101 and 102 in ids[0]  # [CLS] sentence [SEP], not random ids


def test_simulate_mode_validation():
    assert MpcConfig(approx="exact", mode="simulate").mode == "simulate"
    with pytest.raises(ValueError, match="plaintext-only"):
        MpcConfig(approx="exact", mode="mpc")
    with pytest.raises(ValueError, match="unknown mode 'fast'"):
        MpcConfig(mode="fast")


def test_simulated_study_at_toy_size_gives_the_accuracy_table(tmp_path):
    for approx in ("exact", "puma"):
        report = run(cfg(tmp_path, "experiment=mpc_accuracy_sim", "model.n_layers=1", "run.batch_size=4",
                         f"protocol.approx={approx}"))
        assert report.status == "ok", report.error
    aggregate(tmp_path / "runs", tmp_path / "results")
    table = pd.read_csv(tmp_path / "results" / "mpc_accuracy" / "accuracy_table.csv")
    assert set(table.source) == {"simulated"} and set(table.model) == {"minilm-l6"}
    by = table.set_index("approx")
    assert by.loc["exact", "cosine_similarity"] == pytest.approx(1.0, abs=1e-9)
    assert by.loc["exact", "max_abs_error"] < 1e-4
    assert 0.99 < by.loc["puma", "cosine_similarity"] < 1.0  # an approximation costs a little, not nothing
    assert (tmp_path / "results" / "mpc_accuracy" / "accuracy_table.md").read_text().count("| minilm-l6 |") == 2


def test_accuracy_table_sets_engine_beside_simulation():
    rows = pd.DataFrame([
        dict(model="m", seq_len=8, batch_size=1, protocol="mpc", approx="puma", source=s, phase="output",
             metric=k, value=v, repeat=0)
        for s, cos in (("engine", 0.98), ("simulated", 0.99))
        for k, v in (("cosine_similarity", cos), ("top1_agreement", 1.0), ("max_abs_error", 0.1),
                     ("diverged_fraction", 0.0), ("sum_abs_error", 3.0))])
    table = accuracy_table(rows)
    assert list(table.source) == ["engine", "simulated"]
    assert list(table.cosine_similarity) == [0.98, 0.99] and "sum_abs_error" not in table


@pytest.mark.slow
def test_mpc_mode_on_real_sentences_agrees_with_its_simulation(tmp_path):
    reports = [run(cfg(tmp_path, f"experiment={e}", "model.n_layers=1", "run.batch_size=2", "run.seq_len=12"))
               for e in ("mpc_accuracy", "mpc_accuracy_sim")]
    assert all(r.status == "ok" for r in reports), [r.error for r in reports]
    aggregate(tmp_path / "runs", tmp_path / "results")
    table = pd.read_csv(tmp_path / "results" / "mpc_accuracy" / "accuracy_table.csv").set_index("source")
    assert table.loc["engine", "cosine_similarity"] == pytest.approx(table.loc["simulated", "cosine_similarity"],
                                                                     abs=5e-3)
