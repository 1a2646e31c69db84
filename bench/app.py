"""The Hydra app: compose a run, hand it to its protocol, record tidy rows and a report, never crash a sweep.

`run(cfg)` is the Python API (what the CLI does); `main` is the Hydra entry point of `python -m bench`.
"""
from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time
import traceback
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import hydra
from filelock import FileLock, Timeout
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from bench.conditions import RunConditions
from bench.console_answer import RUN_POINTER, print_answer, run_line, sweep_runs
from bench.hostslot import host_slot
from bench.protocol_configs import protocol_class, register_protocol_defaults, with_defaults
from bench.results import (
    FINISHED,
    LOCK,
    RunReport,
    UnreadableReport,
    atomic_write_parquet,
    provenance,
    rows_problem,
    run_id,
    safe_name,
    to_frame,
)
from bench.schema import RootConfig, labelled_network
from bench.status import run_status
from bench.validate import ConfigError, check_run_config, sweep_without_multirun
from protocols.contract import PartiesConfig, Protocol, RemoteCloudConfig, RunRequest
from protocols.models import build_spec
from protocols.paths import config_dir
from protocols.results_schema import ROWS
from protocols.vocabulary import check_security
from transport.link import network_profile

log = logging.getLogger(__name__)

CONFIG_DIR = str(config_dir())
register_protocol_defaults()  # configs/protocol/<name>.yaml compose on their dataclass's defaults


def _plain(cfg: Any) -> Any:
    """A resolved plain-Python copy of a config node."""
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def _absolute(path: str) -> Path:
    """Paths in configs are relative to where the user launched, even inside Hydra jobs."""
    try:
        return Path(to_absolute_path(path))
    except ValueError:  # not inside a Hydra job
        return Path(path).resolve()


RUN_KEYS = ("experiment_name", "model", "protocol", "network", "run")


# A protocol class whose module was renamed is hashed under its first path, so finished runs stay findable
# (a run id hashes every composed value, `_target_` included).
RENAMED_TARGETS = {"protocols.stip_over_socket.StipProtocol": "protocols.stip_protocol.StipProtocol"}


def run_key(cfg: Mapping[str, Any]) -> dict:
    """What defines a run (and its id): experiment, model, protocol, network, workload (and a remote cloud).

    The network under its label (bench.schema.labelled_network): unchanged profiles keep their run ids."""
    key = {k: cfg.get(k) for k in RUN_KEYS}
    protocol = key.get("protocol")
    if isinstance(protocol, Mapping) and protocol.get("_target_") in RENAMED_TARGETS:
        key["protocol"] = {**protocol, "_target_": RENAMED_TARGETS[protocol["_target_"]]}
    if isinstance(key["network"], Mapping):
        key["network"] = labelled_network(key["network"])
    folder = (cfg.get("model") or {}).get("path")
    if folder:  # weights from a folder: rewriting it (a new distillation) is a new run, not a finished one
        key["model_files"] = folder_fingerprint(Path(str(folder)))
    address = (cfg.get("cloud") or {}).get("address")
    if address:  # a remote cloud is another measurement (a real link); local run ids stay as they were
        key["cloud_address"] = address
    parties = cfg.get("parties") or {}
    # MPC parties placed elsewhere (CrypTen: a rendezvous; SPU: hosts alone): another measurement (namespaces are not
    # part of it)
    if parties.get("rendezvous") or parties.get("hosts"):
        key["parties"] = {k: parties.get(k) for k in ("rendezvous", "hosts")}
    return key


def folder_fingerprint(folder: Path) -> list[list]:
    """Name, size and modification time of each file of a model folder (cheap: weights are not read)."""
    if not folder.is_dir():
        return []  # the model loader names the missing folder and the way out
    return [[p.relative_to(folder).as_posix(), p.stat().st_size, p.stat().st_mtime_ns]
            for p in sorted(folder.rglob("*")) if p.is_file()]


def remote_cloud_of(cfg: Mapping[str, Any]) -> RemoteCloudConfig | None:
    """The `cloud.*` options as a RemoteCloudConfig, or None when the runner starts its own cloud."""
    cloud = dict(cfg.get("cloud") or {})
    return RemoteCloudConfig(**cloud) if cloud.get("address") else None


def parties_of(cfg: Mapping[str, Any]) -> PartiesConfig | None:
    """The `parties.*` options as a PartiesConfig, or None when every MPC party runs on this host's loopback."""
    parties = dict(cfg.get("parties") or {})
    return PartiesConfig(**parties) if parties.get("rendezvous") or parties.get("hosts") else None


def run_dir_of(cfg: Mapping[str, Any]) -> Path:
    """<output_root>/<experiment>/<run_id>/."""
    return _absolute(cfg["output_root"]) / str(cfg["experiment_name"]) / run_id(run_key(cfg))


def _every_protocol_field(protocol_cfg: Mapping[str, Any]) -> dict:
    """The protocol node with its class's defaults for fields it lacks (Hydra's compose has them all already)."""
    try:
        return with_defaults(protocol_cfg)
    except (ValueError, ImportError, AttributeError):  # a bad _target_: named where the protocol is built
        return dict(protocol_cfg)


def make_protocol(protocol_cfg: Mapping[str, Any]) -> Protocol:
    """Instantiate a protocol with its typed config, validated once by the config's dataclass."""
    return protocol_class(protocol_cfg)(dict(protocol_cfg))


def _clear_stale_work(out: Path) -> None:
    """Remove work folders and temp files of earlier (killed) attempts; safe only while holding the run's lock."""
    for stale in [*out.glob("work-*"), out / "work"]:
        if stale.is_dir():
            log.info("removing the work folder of an earlier attempt: %s", stale)
            shutil.rmtree(stale, ignore_errors=True)
    for torn in out.glob(".*.tmp"):  # a temp file of an atomic write that was killed before its rename
        torn.unlink(missing_ok=True)


def run(cfg: DictConfig | Mapping[str, Any]) -> RunReport:
    """Run one configuration; skip it if already done (unless force); record failures instead of raising.

    Raises ConfigError (before anything is built) on values that cannot work. One writer per run
    folder at a time: a second one waits for the lock (saying so), then skips the run if the first
    finished it.
    """
    c = _plain(cfg) if isinstance(cfg, DictConfig) else dict(cfg)
    check_run_config(c)
    c["network"] = labelled_network(c["network"])  # a changed profile is no longer that profile: rows, report, line
    c["protocol"] = _every_protocol_field(c["protocol"])  # report.config and the runs table name every parameter
    rid = run_id(run_key(c))
    out = run_dir_of(c)
    out.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(out / LOCK))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        wait = float(c.get("lock_timeout_s", RootConfig.lock_timeout_s))
        log.warning("run %s (%s) is being written by another process (lock %s): waiting up to %.0f s",
                    rid, out, lock.lock_file, wait)
        try:
            lock.acquire(timeout=wait)
        except Timeout:
            log.error("run %s: still locked after %.0f s; not run (raise lock_timeout_s to wait longer)", rid, wait)
            return RunReport(run_id=rid, experiment=c["experiment_name"], config=c, status="failed",
                             error=f"run folder {out} locked by another writer for {wait:.0f} s")
    try:
        return _run_locked(c, rid, out)
    finally:
        lock.release()


def _run_locked(c: dict, rid: str, out: Path) -> RunReport:
    """The run itself, with the run folder's lock held."""
    try:
        previous: RunReport | None = RunReport.read(out)
    except FileNotFoundError:
        previous = None
    except (OSError, UnreadableReport) as e:  # damaged: never trusted, never a reason to stop; the run is redone
        log.warning("run %s: %s; redoing the run", rid, e)
        previous = None
    if previous and previous.status in FINISHED and not c.get("force", False):
        damaged = rows_problem(out, previous.n_rows)  # finished only if its rows read back (footer only: cheap)
        if damaged is None:
            log.info("run %s (%s) already done: skipped; pass force=true to redo", rid, out)
            previous.skipped = True
            return previous
        log.warning("run %s was recorded %s but %s; redoing the run", rid, previous.status, damaged)
    keep = bool(c.get("keep_checkpoints", RootConfig.keep_checkpoints))
    if not keep:
        _clear_stale_work(out)
    report = RunReport(run_id=rid, experiment=c["experiment_name"], config=c, provenance=provenance(),
                       started=datetime.now(timezone.utc).isoformat())
    report.save_json(out)  # first "running", then drop old rows: an "ok" report never stands without its rows
    (out / ROWS).unlink(missing_ok=True)
    work = out / f"work-{os.getpid()}-{uuid.uuid4().hex[:8]}"  # this attempt's own folder
    t0 = time.perf_counter()
    try:
        spec = build_spec(c["model"], seed=int(c["run"]["seed"]))
        protocol = make_protocol(c["protocol"])
        network = network_profile(c["network"])
        request = RunRequest(**c["run"], workdir=work, cloud_timeout_s=float(c.get("cloud_timeout_s", 120)),
                             remote_cloud=remote_cloud_of(c), parties=parties_of(c))
        log.info("run %s: model=%s protocol=%s network=%s task=%s", rid, spec.name, protocol.name, network.name,
                 request.task)
        sampler = RunConditions(request.threads).start()  # sets the device's threads; host load before
        rows = protocol.run(spec, network, request)
        report.conditions, report.noisy = sampler.finish(rows, getattr(protocol, "process_threads", None),
                                                         getattr(protocol, "cloud_accelerator", None))
        for reason in report.noisy:
            log.warning("run %s noisy: %s", rid, reason)
        context = {
            "run_id": rid, "experiment": c["experiment_name"], "protocol": protocol.name,
            "approx": protocol.approx_name(), "security": check_security(protocol.security_label()),
            "engine": protocol.engine_name(), "model": spec.name,
            "n_params": spec.n_params,
            "network": network.name, "bandwidth_bps": network.bandwidth_bps, "rtt_s": network.rtt_s,
            "batch_size": request.batch_size, "seq_len": request.seq_len,
            "seed": request.seed,
        }
        df = to_frame(rows, context)
        if df.empty:
            raise RuntimeError(f"protocol {context['protocol']!r} returned no rows")
        atomic_write_parquet(out / ROWS, df)
        report.status, report.n_rows, report.n_params = "ok", len(df), spec.n_params
        # A model judged against another (a distilled student against its teacher): the gap is the model's, not
        # the approximation's, so only a non-finite output makes it diverged.
        bound = protocol.accuracy_bound() if spec.build_reference is None else None
        report.status, report.status_reason = run_status(df, bound)  # diverged: rows kept
        if report.status == "diverged":
            log.warning("run %s DIVERGED: %s", rid, report.status_reason)
        report.measured, report.fits_on_host = spec.fits_on_host and request.task != "shapes", spec.fits_on_host
    except Exception as e:  # noqa: BLE001 - a failed run is a result; the sweep goes on
        log.error("run %s failed: %s: %s", rid, type(e).__name__, e)
        report.status, report.error, report.traceback = "failed", f"{type(e).__name__}: {e}", traceback.format_exc()
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    report.finished, report.duration_s = datetime.now(timezone.utc).isoformat(), time.perf_counter() - t0
    report.save_json(out)
    return report


class SweepProgress(Callback):
    """A tqdm bar over the jobs of a multirun and, at its end, the per-model answer table with failed runs named.

    Launchers pickle callbacks with each job (joblib, submitit, Ray): the bar never travels, so in a worker
    this is a stateless copy that only records where its job's run folder is (<job folder>/run_dir.txt).
    """

    def __init__(self) -> None:
        self.bar = None

    def __getstate__(self) -> dict:
        return {"bar": None}  # a tqdm bar holds locks and a stream; it stays in the launching process

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.bar = tqdm(desc="sweep", unit="run")

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        cfg = {k: _plain(config[k]) for k in (*RUN_KEYS, "output_root") if k in config}
        job_dir = Path(str(config.hydra.runtime.output_dir))
        if job_dir.is_dir():
            (job_dir / RUN_POINTER).write_text(str(run_dir_of(cfg)) + "\n")
        if self.bar is not None:
            self.bar.update(1)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = _absolute(str(config.hydra.sweep.dir))
        if self.bar is not None:  # parallel launchers run on_job_end in their workers: count the jobs here
            self.bar.n = sum(1 for p in sweep_dir.glob(f"*/{RUN_POINTER}"))
            self.bar.close()
        rows, failed = sweep_runs(sweep_dir)
        print_answer(rows, failed, title=str(config.get("experiment_name", "sweep")))


FAILURES_ENV = "STIP_BENCH_FAILURES"  # file where each job of a sweep appends its failed run (set by cli())


def _record_failure(line: str) -> None:
    """Append one failed run to the sweep's failure list (shared by every launcher's job processes)."""
    path = os.environ.get(FAILURES_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as f:  # one short line per write: appends do not interleave
            f.write(line.replace("\n  - ", " | ").replace("\n", " ") + "\n")


def _record_crash(c: dict, error: str, trace: str) -> Path | None:
    """Record a job that crashed outside the protocol as a `failed` report in its run folder (unless another
    writer holds the folder or a finished run is there); returns the folder, or None when nothing was written."""
    if not safe_name(c.get("experiment_name")):
        return None  # never build a folder from an unchecked name
    try:
        out = run_dir_of(c)
        out.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(out / LOCK))
        lock.acquire(timeout=0)
    except Exception:  # noqa: BLE001 - no folder for this config (or it is busy): the failure line still names it
        return None
    try:
        previous = RunReport.from_json(out)
        if previous and previous.status in FINISHED and rows_problem(out, previous.n_rows) is None:
            return out  # a finished run stays finished; this job's crash is named on its failure line
        rid = out.name
        RunReport(run_id=rid, experiment=str(c.get("experiment_name")), config=c, status="failed", error=error,
                  traceback=trace, finished=datetime.now(timezone.utc).isoformat()).save_json(out)
        return out
    finally:
        lock.release()


def _multirun_params() -> tuple[bool, dict, list[str]]:
    """(is multirun, hydra.sweeper.params, the command line's overrides) of this Hydra job."""
    if not HydraConfig.initialized():
        return True, {}, []
    hc = HydraConfig.get()
    params = _plain(hc.sweeper.get("params")) or {}
    return str(hc.mode) == "RunMode.MULTIRUN", dict(params), list(hc.overrides.task)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> float | None:
    """CLI: one run per Hydra job; failures are listed (and make `python -m bench` exit 1), never stop a sweep."""
    logging.getLogger().setLevel(cfg.get("log_level", "INFO"))
    multirun, params, overrides = _multirun_params()
    refusal = None if multirun else sweep_without_multirun(params, overrides)
    if refusal:
        _record_failure(f"refused: {refusal}")
        if os.environ.get(FAILURES_ENV):
            log.error("%s", refusal)
            return None
        raise ConfigError(refusal)
    try:
        check_run_config(_plain(cfg))  # unknown keys and bad values refused before waiting for the host
        with host_slot(protocol_class(cfg.protocol).parallel_safe, what=f"protocol {cfg.protocol.get('name')!r}"):
            report = run(cfg)
    except ConfigError as e:
        _record_failure(f"{' '.join(overrides) or '(defaults)'}: {e}")
        if os.environ.get(FAILURES_ENV):
            log.error("%s", e)
            return None
        raise
    except Exception as e:  # noqa: BLE001 - a crash outside the protocol: recorded and named, the sweep goes on
        error = f"{type(e).__name__}: {e}"
        where = _record_crash(_plain(cfg), error, traceback.format_exc())
        _record_failure(f"crashed ({' '.join(overrides) or 'defaults'}): {error}" + (f" [{where}]" if where else ""))
        if os.environ.get(FAILURES_ENV):
            log.exception("job crashed (%s)", " ".join(overrides) or "defaults")
            return None
        raise
    print(run_line(report, run_dir_of(_plain(cfg))), flush=True)
    if report.status == "failed":
        _record_failure(f"run {report.run_id} ({' '.join(overrides) or 'defaults'}): {report.error} "
                        f"[{run_dir_of(_plain(cfg))}]")
    return None


def cli() -> int:
    """`python -m bench`: run Hydra, then exit 1 listing every failed run (any launcher), 0 when all were ok."""
    fd, path = tempfile.mkstemp(prefix="stip-bench-failures-", suffix=".txt")
    os.close(fd)
    os.environ[FAILURES_ENV] = path
    code: int | str | None = 0
    try:
        try:
            main()
        except SystemExit as e:
            code = e.code
        failed = [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    finally:
        Path(path).unlink(missing_ok=True)
    if failed:
        print(f"{len(failed)} run(s) failed:", file=sys.stderr)
        for line in failed:
            print(f"  - {line}", file=sys.stderr)
        return 1
    return code if isinstance(code, int) else (0 if code is None else 1)
