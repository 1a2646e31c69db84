"""Every config composes; bad names fail with Hydra's list of choices; launcher configs compose uninstantiated."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import MissingConfigException
from omegaconf import OmegaConf

from bench.app import CONFIG_DIR
from transport.link import network_profile

ROOT = Path(CONFIG_DIR)
GROUPS = ("model", "protocol", "network", "experiment")
# model=local needs model.path (tests/test_bench_model_path.py composes it with one)
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((ROOT / g).glob("*.yaml")) if (g, p.stem) != ("model", "local")]
REQUIRED_MODELS = {
    "gpt2-124m", "gpt2-355m", "gpt2-774m", "gpt2-1.5b", "bert-tiny", "bert-medium", "bert-base", "bert-large",
    "vit-base", "vit-large", "vit-huge", "llama2-7b", "llama2-13b", "llama2-70b", "mixtral-8x7b", "minilm-l6",
    "smollm2-135m",
}


def test_configs_folder_is_not_a_package():
    assert not (ROOT / "__init__.py").exists()  # crypten ships a top-level `configs` package


def test_every_required_option_exists():
    names = {g: {p.stem for p in (ROOT / g).glob("*.yaml")} for g in GROUPS}
    assert REQUIRED_MODELS <= names["model"]
    assert {"stip", "full_cloud", "model_split", "random_projection"} <= names["protocol"]
    assert {"none", "lan", "wan", "wan_slow", "wired", "wireless"} <= names["network"]


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_config_composes(group, option):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[f"{group}={option}"])
    OmegaConf.resolve(cfg)
    assert cfg.model.name and cfg.model.model_type
    assert cfg.protocol._target_ and cfg.protocol.name
    profile = network_profile(cfg.network)
    assert profile.rtt_s >= 0 and profile.source
    assert cfg.run.task in {"forward", "generate", "memory", "shapes"}
    if group == "model":
        assert cfg.model.name == option
    if group == "network":
        assert cfg.network.name == option


def test_assumed_bandwidths_are_labelled():
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        for name, rtt in (("wired", 0.010), ("wireless", 0.250)):
            net = compose("config", overrides=[f"network={name}"]).network
            assert net.rtt_s == rtt and net.assumed is True and "ASSUMED" in net.source


@pytest.mark.parametrize("launcher", ["local_parallel", "slurm", "ray"])
def test_launcher_configs_compose(launcher):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    target = cfg.hydra.launcher._target_
    assert target.startswith("hydra_plugins.")
    assert {"local_parallel": "Joblib", "slurm": "Slurm", "ray": "Ray"}[launcher] in target


@pytest.mark.parametrize("group", ["model", "protocol", "network"])
def test_unknown_name_lists_choices(group):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        with pytest.raises(MissingConfigException) as e:
            compose("config", overrides=[f"{group}=no-such-thing"])
    assert "no-such-thing" in str(e.value)
    assert e.value.options  # Hydra names the available choices


def test_cli_unknown_model_prints_choices():
    proc = subprocess.run([sys.executable, "-m", "bench", "model=no-such-model"], capture_output=True, text=True,
                          timeout=120, cwd=ROOT.parent)
    assert proc.returncode != 0
    assert "Available options" in proc.stderr and "gpt2-124m" in proc.stderr
