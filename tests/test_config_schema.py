"""Strict configs and links labelled by their values (issue 20, items 1 and 6).

Unknown keys are refused before anything is built, naming the nearest valid key; a network profile
changed by an override is filed under a label that says so, and rows carry the link's values; a
`model=local` folder keeps its head.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from transformers import BertConfig, BertForMaskedLM, BertForQuestionAnswering, BertForSequenceClassification

from bench.aggregate import aggregate
from bench.app import CONFIG_DIR, RENAMED_TARGETS, run, run_key
from bench.results import run_id
from bench.schema import field_names, labelled_network, schema_problems, unknown_key_problems
from bench.validate import ConfigError, check_run_config
from protocols.models import ModelConfig, build_spec
from protocols.results_schema import COLUMNS, with_runs
from transport.link import NetworkProfile

REPO = Path(CONFIG_DIR).parent
TOY = ["run.repeats=1", "run.warmup=0", "run.seq_len=8", "cloud_timeout_s=60"]
REFUSAL_S = 20.0  # the bound for refusing a misspelt key (a model build + cloud spawn costs about this)


def composed(*overrides: str) -> dict:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return OmegaConf.to_container(compose("config", overrides=list(overrides)), resolve=True)


# --- unknown keys ---------------------------------------------------------------------------------

MISSPELT = {  # group: (overrides, the unknown key, the suggestion)
    "network": (["+network.rtt=0.5"], "network.rtt", "network.rtt_s"),
    "network-bandwidth": (["+network.bandwidth=1e6"], "network.bandwidth", "network.bandwidth_bps"),
    "run": (["+run.seqlen=16"], "run.seqlen", "run.seq_len"),
    "model": (["+model.nlayers=1"], "model.nlayers", "model.n_layers"),
    "protocol-stip": (["protocol=stip", "+protocol.retrun_mode=topk"], "protocol.retrun_mode", "protocol.return_mode"),
    "protocol-mpc": (["protocol=mpc", "+protocol.engin=spu"], "protocol.engin", "protocol.engine"),
    "protocol-model_split": (["protocol=model_split", "+protocol.device_layer=1"], "protocol.device_layer",
                             "protocol.device_layers"),
    "cloud": (["+cloud.adress=127.0.0.1:7443"], "cloud.adress", "cloud.address"),
    "top-level": (["+lock_timeout=5"], "lock_timeout", "lock_timeout_s"),
}


@pytest.mark.parametrize("case", sorted(MISSPELT))
def test_unknown_key_refused_naming_the_nearest(case, tmp_path):
    overrides, key, suggestion = MISSPELT[case]
    cfg = composed("model=bert-tiny", f"output_root={tmp_path / 'runs'}", *overrides)
    with pytest.raises(ConfigError) as e:
        run(cfg)
    assert f"unknown key {key};" in str(e.value) and f"did you mean {suggestion}" in str(e.value)
    assert not (tmp_path / "runs").exists()  # refused before any folder, model or cloud


def test_declared_optional_keys_are_accepted():
    check_run_config(composed("model=bert-tiny", "+keep_checkpoints=true", "+lock_timeout_s=2"))


def test_every_model_and_network_file_passes_the_schema():
    for group, cls in (("model", ModelConfig), ("network", NetworkProfile)):
        for path in sorted((Path(CONFIG_DIR) / group).glob("*.yaml")):
            assert unknown_key_problems(OmegaConf.load(path), field_names(cls), f"{group}.") == [], path


def test_every_experiment_and_its_sweep_values_pass_the_schema():
    for path in sorted((Path(CONFIG_DIR) / "experiment").glob("*.yaml")):
        params = (OmegaConf.load(path).get("hydra") or {}).get("sweeper", {}).get("params") or {}
        variants = [[]] + [[f"{axis}={v}"] for axis, values in params.items() if axis not in ("model", "network")
                           for v in str(values).split(",")]  # model and network files: the test above
        for extra in variants:
            cfg = composed(f"experiment={path.stem}", *extra)
            assert schema_problems(cfg) == [], (path.stem, extra)


def test_cli_refuses_a_misspelt_link_key_fast(tmp_path):
    cmd = [sys.executable, "-m", "bench", "model=bert-tiny", "protocol=stip", "+network.rtt=0.5",
           f"output_root={tmp_path / 'runs'}", f"hydra.run.dir={tmp_path / 'hydra'}"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)})
    took = time.perf_counter() - t0
    assert proc.returncode != 0
    assert "unknown key network.rtt; did you mean network.rtt_s?" in proc.stderr, proc.stderr[-2000:]
    assert took < REFUSAL_S, took
    assert not (tmp_path / "runs").exists()


# --- a link is its values -------------------------------------------------------------------------

def test_unchanged_profiles_keep_their_name_and_run_id():
    for name in ("none", "lan", "wan", "wired", "wireless_oneway"):
        cfg = composed("model=bert-tiny", f"network={name}")
        assert labelled_network(cfg["network"]) == cfg["network"]
        old_key = {k: cfg.get(k) for k in ("experiment_name", "model", "protocol", "network", "run")}
        target = old_key["protocol"]["_target_"]
        old_key["protocol"] = {**old_key["protocol"], "_target_": RENAMED_TARGETS.get(target, target)}
        assert run_id(run_key(cfg)) == run_id(old_key)  # committed results keep their run ids


def test_two_links_with_different_rtt_never_share_a_label():
    labels = set()
    for overrides in (["network=wan"], ["network=wan", "network.rtt_s=0.1"], ["network=wan", "network.rtt_s=0.3"],
                      ["network=wan", "network.bandwidth_bps=1e6"],
                      ["network=lan", "network.name=mylink", "network.rtt_s=0.1"],
                      ["network=lan", "network.name=mylink", "network.rtt_s=0.3"],
                      ["network=lan", "network.name=wan"]):  # a shipped name on other values is not that profile
        net = composed("model=bert-tiny", *overrides)["network"]
        label = labelled_network(net)["name"]
        assert labelled_network(labelled_network(net)) == labelled_network(net)  # idempotent
        labels.add(label)
    assert len(labels) == 7, labels
    assert "wan[rtt_s=0.3]" in labels and "wan[bandwidth_bps=1e+06]" in labels
    assert "mylink[bandwidth_bps=3e+09,rtt_s=0.3]" in labels


def test_overridden_link_is_relabelled_in_rows_report_and_runs_table(tmp_path):
    cfg = composed("model=bert-tiny", "protocol=full_cloud", "network=wan", "network.rtt_s=0.3",
                   f"output_root={tmp_path / 'runs'}", *TOY)
    report = run(cfg)
    assert report.status == "ok", report.error
    assert report.config["network"]["name"] == "wan[rtt_s=0.3]"
    rows = pd.read_parquet(tmp_path / "runs" / "adhoc" / report.run_id / "rows.parquet")
    assert list(rows.columns) == COLUMNS
    assert set(rows.network) == {"wan[rtt_s=0.3]"}
    assert set(rows.rtt_s) == {0.3} and set(rows.bandwidth_bps) == {2e8}
    aggregate(tmp_path / "runs", tmp_path / "results")
    runs = pd.read_parquet(tmp_path / "results" / "adhoc" / "runs.parquet")
    assert list(runs.network) == ["wan[rtt_s=0.3]"]
    joined = with_runs(pd.read_parquet(tmp_path / "results" / "adhoc" / "rows.parquet"), runs)
    assert joined.columns.is_unique and {"rtt_s", "bandwidth_bps"} <= set(joined.columns)
    assert set(joined.rtt_s) == {0.3}


def test_with_runs_fills_link_values_of_rows_written_before_the_columns():
    rows = pd.DataFrame({"run_id": ["a", "b"], "rtt_s": [None, 0.3], "bandwidth_bps": [None, 2e8]})
    runs = pd.DataFrame({"run_id": ["a", "b"], "rtt_s": [0.04, 0.3], "bandwidth_bps": [2e8, 2e8]})
    joined = with_runs(rows, runs)
    assert joined.columns.is_unique and list(joined.rtt_s) == [0.04, 0.3]


# --- model=local keeps its head -------------------------------------------------------------------

def _folder(tmp_path, cls, name):
    torch.manual_seed(1)
    model = cls(BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=64, num_labels=3)).eval()
    model.save_pretrained(tmp_path / name)
    return model, tmp_path / name


@pytest.mark.parametrize("cls,head", [(BertForSequenceClassification, "sequence_classification"),
                                      (BertForMaskedLM, "masked_lm")])
def test_local_folder_keeps_its_head(tmp_path, cls, head):
    model, folder = _folder(tmp_path, cls, "mine")
    spec = build_spec(composed("model=local", f"model.path={folder}")["model"])
    assert spec.head == head
    built = spec.build()
    assert type(built) is cls
    inputs = spec.make_inputs(1, 8, 0)
    with torch.no_grad():
        assert torch.allclose(built(**inputs).logits, model(**inputs).logits, atol=1e-6)  # its own head weights


def test_local_head_can_be_named_and_an_unsupported_one_is_refused(tmp_path):
    _, folder = _folder(tmp_path, BertForSequenceClassification, "cls")
    spec = build_spec(composed("model=local", f"model.path={folder}", "model.head=base")["model"])
    assert spec.head == "base"
    named = build_spec({"path": str(folder), "head": "sequence_classification"})
    assert named.head == "sequence_classification"
    _, qa = _folder(tmp_path, BertForQuestionAnswering, "qa")
    with pytest.raises(ValueError, match=r"BertForQuestionAnswering.*supported heads: .*sequence_classification"):
        build_spec({"path": str(qa)})


def test_stip_runs_a_sequence_classifier_folder(tmp_path):
    _, folder = _folder(tmp_path, BertForSequenceClassification, "cls")
    report = run(composed("model=local", f"model.path={folder}", "protocol=stip", "network=none",
                          f"output_root={tmp_path / 'runs'}", *TOY))
    assert report.status == "ok", report.error
    rows = pd.read_parquet(tmp_path / "runs" / "adhoc" / report.run_id / "rows.parquet")
    agree = rows[(rows.phase == "output") & (rows.metric == "top1_agreement")].value
    assert list(agree) == [1.0]
    down = rows[(rows.phase == "downlink") & (rows.metric == "bytes")]
    socket, shapes = (down[down.source == s].value.iloc[0] for s in ("socket", "shapes"))
    assert 0 < socket - shapes < 1024  # the reply is the 3 class scores (+ framing), as the shapes say
