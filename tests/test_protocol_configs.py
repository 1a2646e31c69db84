"""Plug-ins typed by their config: defaults live in the dataclass, configs/protocol/*.yaml list only what differs.

The yamls compose on their dataclass's defaults (bench.protocol_configs), so a run sees every field, overrides
need no `+`, and run ids stay those the full yamls gave (committed results are found again).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from baselines.full_cloud import FullCloudConfig
from bench.app import CONFIG_DIR, run, run_key
from bench.protocol_configs import (
    DEFAULTS_SUFFIX,
    dataclass_defaults,
    file_values,
    protocol_class,
    register_protocol_defaults,
    with_defaults,
)
from bench.results import run_id
from bench.runs_table import run_record
from bench.schema import labelled_network

PROTOCOL_FILES = sorted((Path(CONFIG_DIR) / "protocol").glob("*.yaml"))
# Run ids the configs gave before the yamls lost their defaults (an id hashes every composed value, so a resumed
# sweep finds its finished runs only if these hold).
PINNED_RUN_IDS = {
    ("protocol=stip",): "5b2258efa03f",
    ("protocol=full_cloud",): "c2b521a82052",
    ("protocol=mpc",): "cfa7721b1db3",
    ("protocol=model_split",): "d8fc03b333e6",
    ("protocol=random_projection",): "acc235fc43e5",
    ("experiment=speculation", "network=wired", "protocol.speculate=prompt_lookup"): "3f1f8c338f12",
    ("experiment=mpc_spu", "protocol.mpc_protocol=cheetah", "protocol.approx=nimbus"): "8f659f3533e8",
}


def composed(*overrides: str) -> dict:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return OmegaConf.to_container(compose("config", overrides=list(overrides)), resolve=True)


@pytest.mark.parametrize("path", PROTOCOL_FILES, ids=lambda p: p.stem)
def test_yaml_lists_only_fields_that_differ_from_the_dataclass(path: Path):
    node = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    assert node.pop("defaults") == [f"{path.stem}{DEFAULTS_SUFFIX}", "_self_"], path
    defaults = dataclass_defaults(protocol_class(node).config_class)
    assert set(node) <= set(defaults), sorted(set(node) - set(defaults))
    repeated = [k for k, v in node.items() if k not in ("_target_", "name") and v == defaults[k]]
    assert repeated == [], f"{path.name} repeats the dataclass default of {repeated}"


@pytest.mark.parametrize("path", PROTOCOL_FILES, ids=lambda p: p.stem)
def test_composed_group_has_every_field_and_builds(path: Path):
    node = composed(f"protocol={path.stem}")["protocol"]
    cls = protocol_class(node)
    assert list(node) == [f.name for f in dataclasses.fields(cls.config_class)]
    assert node == file_values(path.stem) == with_defaults(node)
    assert cls(node).cfg.name == path.stem  # the typed config validates the composed values


def test_overrides_of_defaulted_fields_need_no_plus():
    node = composed("protocol=stip", "protocol.draft_tokens=4", "protocol.speculate=prompt_lookup")["protocol"]
    assert node["draft_tokens"] == 4 and node["max_ngram"] == 3 and node["draft_latest"] is True


def test_stip_speculation_defaults_are_the_ones_runs_used():
    cfg = protocol_class({"_target_": "protocols.stip_over_socket.StipProtocol"})({}).cfg
    assert (cfg.draft_tokens, cfg.max_ngram, cfg.draft_latest) == (16, 3, True)
    full = protocol_class({"_target_": "baselines.full_cloud.FullCloudProtocol"})({}).cfg
    assert (full.draft_tokens, full.max_ngram, full.draft_latest) == (8, 2, False)


@pytest.mark.parametrize("overrides", sorted(PINNED_RUN_IDS))
def test_run_ids_are_those_of_the_full_yamls(overrides):
    cfg = composed(*overrides)
    cfg["network"] = labelled_network(cfg["network"])
    assert run_id(run_key(cfg)) == PINNED_RUN_IDS[overrides], json.dumps(cfg["protocol"])


def test_a_hand_built_node_gains_the_defaults():
    node = with_defaults({"_target_": "baselines.mpc.protocol.MpcProtocol", "name": "mpc", "engine": "crypten"})
    assert node["timeout_s"] == 1800 and node["approx"] == "puma" and node["mpc_protocol"] is None


def test_a_broken_protocol_file_registers_nothing_and_stops_nothing(tmp_path):
    (tmp_path / "mine.yaml").write_text("_target_: protocols.stip_over_socket.StipProtocol\nname: mine\n")
    (tmp_path / "typo.yaml").write_text("_target_: protocols.no_such.Protocol\nname: typo\n")
    assert register_protocol_defaults(tmp_path) == ("mine",)


def test_a_hand_built_protocol_node_still_fills_every_runs_column(tmp_path, restore_threads):
    """`run({...})` with a protocol node of two keys: report.config and the runs table carry every field."""
    cfg = composed("model=bert-tiny", "protocol=full_cloud", f"output_root={tmp_path / 'runs'}", "run.repeats=1",
                   "run.warmup=0", "run.seq_len=8")
    cfg["protocol"] = {"_target_": "baselines.full_cloud.FullCloudProtocol", "name": "full_cloud"}
    report = run(cfg)
    assert report.status == "ok", report.error
    assert report.config["protocol"] == composed("protocol=full_cloud")["protocol"]
    record = run_record(report)
    assert {f"protocol.{k}" for k in dataclass_defaults(FullCloudConfig)
            if k not in ("_target_", "name")} <= set(record)
