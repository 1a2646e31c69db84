"""A bert-tiny full_cloud run config under a temporary folder, and a finished run's files written without a
model: what the results-safety tests share (a child process imports this module as `tests.helpers.bench_runs`)."""
from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from bench.app import CONFIG_DIR
from bench.results import RunReport, atomic_write_parquet, to_frame
from protocols.contract import Row
from protocols.results_schema import ROWS


def make_cfg(tmp_path: Path, *overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("config", overrides=[f"output_root={tmp_path / 'runs'}", "model=bert-tiny",
                                            "protocol=full_cloud", *overrides])


def plain(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)


def fake_ok_run(folder: Path, run_id: str, experiment: str = "exp") -> None:
    """A finished run's files as the runner writes them (no model needed)."""
    df = to_frame([Row("total", "latency", 0.5, "socket")], {"run_id": run_id, "experiment": experiment,
                                                              "protocol": "p", "model": "m", "network": "none"})
    atomic_write_parquet(folder / ROWS, df)
    RunReport(run_id=run_id, experiment=experiment, config={}, status="ok", n_rows=1).save_json(folder)
