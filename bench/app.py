"""The Hydra app: compose a run, hand it to its protocol, record tidy rows and a report, never crash a sweep.

`run(cfg)` is the Python API (what the CLI does); `main` is the Hydra entry point of `python -m bench`.
"""
from __future__ import annotations

import logging
import shutil
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from protocols.contract import RunRequest
from transport.link import network_profile
from bench.results import (
    REPORT, ROWS, atomic_write_json, atomic_write_parquet, provenance, read_report, run_id, to_frame,
)

log = logging.getLogger(__name__)

# Protocols whose runs may share the host in parallel (plaintext compute; MPC timings would interfere).
PARALLEL_SAFE = {"stip", "full_cloud", "model_split", "random_projection"}
CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")


def _plain(cfg: Any) -> Any:
    """A resolved plain-Python copy of a config node."""
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def _absolute(path: str) -> Path:
    """Paths in configs are relative to where the user launched, even inside Hydra jobs."""
    try:
        from hydra.utils import to_absolute_path

        return Path(to_absolute_path(path))
    except ValueError:  # not inside a Hydra job
        return Path(path).resolve()


def run_key(cfg: Mapping[str, Any]) -> dict:
    """What defines a run (and its id): experiment, model, protocol, network and workload."""
    return {k: cfg.get(k) for k in ("experiment_name", "model", "protocol", "network", "run")}


def run_dir_of(cfg: Mapping[str, Any]) -> Path:
    """<output_root>/<experiment>/<run_id>/."""
    return _absolute(cfg["output_root"]) / str(cfg["experiment_name"]) / run_id(run_key(cfg))


def make_protocol(protocol_cfg: Mapping[str, Any]) -> Any:
    """Instantiate a protocol plug-in from its `_target_` class path (the runner knows nothing else)."""
    pcfg = dict(protocol_cfg)
    target = pcfg.pop("_target_", None)
    if not target:
        raise ValueError(f"protocol config {pcfg.get('name')!r} has no _target_; see configs/protocol/*.yaml")
    cls = hydra.utils.get_class(target)
    return cls(pcfg)


def run(cfg: DictConfig | Mapping[str, Any]) -> dict:
    """Run one configuration; skip it if already done (unless force); record failures instead of raising."""
    from protocols.models import build_spec

    c = _plain(cfg) if isinstance(cfg, DictConfig) else dict(cfg)
    rid = run_id(run_key(c))
    out = run_dir_of(c)
    previous = read_report(out)
    if previous and previous.get("status") == "ok" and not c.get("force", False):
        log.info("run %s (%s) already done: skipped; pass force=true to redo", rid, out)
        return {**previous, "skipped": True}
    out.mkdir(parents=True, exist_ok=True)
    (out / ROWS).unlink(missing_ok=True)  # never leave rows of an older run beside a new report
    work = out / "work"
    report: dict[str, Any] = {
        "run_id": rid, "experiment": c["experiment_name"], "status": "running", "config": c,
        "provenance": provenance(), "started": datetime.now(timezone.utc).isoformat(),
    }
    atomic_write_json(out / REPORT, report)
    t0 = time.perf_counter()
    try:
        spec = build_spec(c["model"], seed=int(c["run"]["seed"]))
        protocol = make_protocol(c["protocol"])
        network = network_profile(c["network"])
        r = dict(c["run"])
        options = {**(r.pop("options", None) or {}), "workdir": str(work),
                   "cloud_timeout_s": float(c.get("cloud_timeout_s", 120))}
        request = RunRequest(**r, options=options)
        log.info("run %s: model=%s protocol=%s network=%s task=%s", rid, spec.name,
                 getattr(protocol, "name", type(protocol).__name__), network.name, request.task)
        rows = protocol.run(spec, network, request)
        context = {
            "run_id": rid, "experiment": c["experiment_name"], "protocol": c["protocol"].get("name"),
            "approx": c["protocol"].get("approx"), "model": spec.name, "n_params": spec.n_params,
            "network": network.name, "batch_size": request.batch_size, "seq_len": request.seq_len,
            "seed": request.seed,
        }
        df = to_frame(rows, context)
        if df.empty:
            raise RuntimeError(f"protocol {context['protocol']!r} returned no rows")
        atomic_write_parquet(out / ROWS, df)
        report.update(status="ok", n_rows=len(df), n_params=spec.n_params,
                      measured=bool(spec.extra.get("fits_on_host", True)) and request.task != "shapes",
                      fits_on_host=bool(spec.extra.get("fits_on_host", True)))
    except Exception as e:  # noqa: BLE001 - a failed run is a result; the sweep goes on
        log.error("run %s failed: %s: %s", rid, type(e).__name__, e)
        report.update(status="failed", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
    finally:
        if not c.get("keep_checkpoints", False):
            shutil.rmtree(work, ignore_errors=True)
    report.update(finished=datetime.now(timezone.utc).isoformat(), duration_s=time.perf_counter() - t0)
    atomic_write_json(out / REPORT, report)
    return report


class SweepProgress(Callback):
    """A tqdm bar over the jobs of a multirun (the basic launcher runs them one after another)."""

    def __init__(self) -> None:
        self.bar = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from tqdm import tqdm

        self.bar = tqdm(desc="sweep", unit="run")

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.close()


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> float | None:
    """CLI: one run per Hydra job; the returned status keeps multirun going on failure."""
    logging.getLogger().setLevel(cfg.get("log_level", "INFO"))
    launcher = str(HydraConfig.get().launcher.get("_target_", "")) if HydraConfig.initialized() else ""
    if "Joblib" in launcher and cfg.protocol.get("name") not in PARALLEL_SAFE:
        raise ValueError(f"protocol {cfg.protocol.get('name')!r} must not run under the parallel joblib launcher "
                         f"(its timings interfere); use it only for {sorted(PARALLEL_SAFE)} or drop hydra/launcher")
    report = run(cfg)
    try:
        job = HydraConfig.get().job.num if HydraConfig.initialized() else None
    except Exception:  # noqa: BLE001
        job = None
    log.info("job %s: run %s %s", job, report["run_id"], report["status"])
    return None
