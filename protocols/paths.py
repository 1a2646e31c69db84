"""Where the harness finds its configs and files: the one place that knows the checkout's layout.

In a checkout (or an editable install) the configs are `configs/` beside the packages; a non-editable install
has no such folder, so `$STIP_CONFIG_DIR` names it, and `config_dir()` says so when neither exists.
stip/ and transport/ never import this (they sit below it); the runner passes them the paths they need.
"""
from __future__ import annotations

import os
from pathlib import Path

CONFIG_DIR_ENV = "STIP_CONFIG_DIR"
# The folder that holds the packages (stip/, transport/, protocols/, ...): the checkout in a source install.
REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = Path(os.environ.get(CONFIG_DIR_ENV) or REPO_ROOT / "configs")
COMMITTED_RESULTS_DIR = REPO_ROOT / "results"  # the results the repository ships (results/REPORT.md, the tables)


def config_dir() -> Path:
    """The configs folder (Hydra's config_path), refusing a missing one with the two ways out."""
    if not (CONFIG_DIR / "config.yaml").is_file():
        raise FileNotFoundError(
            f"no configs at {CONFIG_DIR} (config.yaml missing): run from a checkout installed with "
            f"`pip install -e .`, or set {CONFIG_DIR_ENV} to the repository's configs/ folder")
    return CONFIG_DIR


def config_group(group: str) -> Path:
    """One config group's folder (configs/<group>: model, network, protocol, reported, ...)."""
    return CONFIG_DIR / group
