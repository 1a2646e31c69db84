"""Tidy long rows and per-run reports, written atomically so a killed sweep never leaves half a table."""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import platform
import re
import socket
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd
import psutil
import pyarrow.parquet as pq
import torch

from protocols.contract import Row
from protocols.paths import REPO_ROOT
from protocols.results_schema import COLUMNS, ROWS, typed
from transport.threads import usable_cores

log = logging.getLogger(__name__)

PROVENANCE_PACKAGES = (
    "torch", "transformers", "hydra-core", "omegaconf", "numpy", "pandas", "pyarrow", "dcor",
    "safetensors", "crypten", "stip-bench",
)
REPORT = "report.json"
LOCK = ".lock"  # the run folder's writer lock (filelock; released by the OS if its holder dies)
FINISHED = ("ok", "diverged")  # statuses of a run that ended with its rows: shown, tabled, not redone unless forced
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.=+-]{0,127}")  # one path component: no '/', '..', or absolute path


class UnreadableReport(ValueError):
    """A report.json that cannot be trusted (not JSON, not an object, wrong types, unsafe names): redo the run."""


def safe_name(value: object) -> bool:
    """Whether `value` may become one folder name of an output path (experiment names, run ids)."""
    return isinstance(value, str) and SAFE_NAME.fullmatch(value) is not None and ".." not in value


def rows_problem(run_dir: Path, n_rows: int | None = None) -> str | None:
    """Why a run's rows.parquet does not read back (absent, torn, row count off), or None when it does.

    Cheap: reads the parquet footer only, never the rows."""
    path = Path(run_dir) / ROWS
    try:
        meta = pq.read_metadata(path)
    except FileNotFoundError:
        return f"{path} is missing"
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for damaged files
        return f"{path} does not read back ({type(e).__name__}: {e})"
    if n_rows is not None and meta.num_rows != n_rows:
        return f"{path} holds {meta.num_rows} rows, its report says {n_rows}"
    return None


def run_id(key: Mapping[str, Any]) -> str:
    """Deterministic id of a run from what defines it, so a resumed sweep finds its finished runs."""
    blob = json.dumps(key, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def to_frame(rows: Iterable[Row], context: Mapping[str, Any]) -> pd.DataFrame:
    """Protocol rows plus the runner's context -> the typed tidy table."""
    records = [{**context, **{k: v for k, v in asdict(r).items() if v is not None}} for r in rows]
    return typed(pd.DataFrame.from_records(records, columns=COLUMNS))


def _fsync_dir(folder: Path) -> None:
    """fsync a folder so a rename inside it survives a power cut (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a folder; the file itself is already on disk
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """The one atomic writer: temp file in the same folder, fsync, os.replace, fsync the folder.

    Readers (and a rerun after kill -9) see the old file or the new one, never a truncated one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_json(path: Path, obj: Any) -> None:
    """JSON via atomic_write_bytes."""
    atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())


def atomic_write_parquet(path: Path, df: pd.DataFrame) -> None:
    """Parquet via atomic_write_bytes (serialised in memory first: result tables are small)."""
    buffer = io.BytesIO()
    df.to_parquet(buffer, index=False)
    atomic_write_bytes(path, buffer.getvalue())


def atomic_write_csv(path: Path, df: pd.DataFrame) -> None:
    """CSV via atomic_write_bytes."""
    atomic_write_bytes(path, df.to_csv(index=False).encode())


@dataclass
class RunReport:
    """What one run was and how it ended: <run folder>/report.json beside rows.parquet."""

    run_id: str
    experiment: str
    config: dict
    status: str = "running"  # running | ok | failed | diverged (rows kept, outputs not to be trusted: status_reason)
    status_reason: str | None = None  # why a finished run is not plainly ok (diverged: the failed check and bound)
    conditions: dict = field(default_factory=dict)  # threads per process, cores, load before/after, CPU vs wall
    noisy: list = field(default_factory=list)  # reasons the host's conditions make its timings doubtful; [] = clean
    provenance: dict = field(default_factory=dict)
    started: str | None = None
    finished: str | None = None
    duration_s: float | None = None
    n_rows: int | None = None
    n_params: int | None = None
    measured: bool | None = None  # False: shape-derived figures only (the model does not fit this host)
    fits_on_host: bool | None = None
    error: str | None = None
    traceback: str | None = None
    skipped: bool = False  # this call found it done and ran nothing (never saved as such)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save_json(self, run_dir: Path) -> None:
        """Write report.json atomically (without the `skipped` flag of this call)."""
        atomic_write_json(run_dir / REPORT, {k: v for k, v in self.to_dict().items() if k != "skipped"})

    @classmethod
    def read(cls, run_dir: Path) -> RunReport:
        """The run's report; raises FileNotFoundError when absent, UnreadableReport (naming why) when damaged."""
        path = Path(run_dir) / REPORT
        raw = path.read_bytes()
        try:
            data = json.loads(raw.decode("utf-8"))
        except ValueError as e:  # UnicodeDecodeError and JSONDecodeError
            raise UnreadableReport(f"{path} is not JSON text ({type(e).__name__})") from None
        if not isinstance(data, dict):
            raise UnreadableReport(f"{path} holds a {type(data).__name__}, not a report object")
        wrong = [f"{k}={data.get(k)!r:.60}" for k, kind in _REPORT_TYPES.items()
                 if not isinstance(data.get(k, _DEFAULTS.get(k)), kind)]
        if wrong:
            raise UnreadableReport(f"{path} has fields of the wrong type: {', '.join(wrong)}")
        for k in ("experiment", "run_id"):
            if not safe_name(data[k]):
                raise UnreadableReport(f"{path} has an unsafe {k}={data[k]!r:.80} (one folder name expected: "
                                       f"letters, digits, _ . = + -)")
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    @classmethod
    def from_json(cls, run_dir: Path) -> RunReport | None:
        """The run's report, or None when absent or unreadable (then the run is redone)."""
        try:
            return cls.read(run_dir)
        except (OSError, UnreadableReport):
            return None


_REPORT_TYPES: dict[str, type | tuple[type, ...]] = {
    "run_id": str, "experiment": str, "config": dict, "status": str, "status_reason": (str, type(None)),
    "conditions": dict, "noisy": list, "provenance": dict, "error": (str, type(None)),
    "n_rows": (int, type(None)),
}
_DEFAULTS: dict[str, Any] = {"status_reason": None, "conditions": {}, "noisy": [], "provenance": {}, "error": None,
                             "n_rows": None, "status": "running"}


def git_sha(cwd: Path | None = None) -> str | None:
    """HEAD of the checkout (with a -dirty mark), or None outside git."""
    cwd = cwd or REPO_ROOT
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if sha.returncode != 0:
        return None
    return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def library_versions() -> dict[str, str | None]:
    """Installed versions of the libraries a result depends on."""
    out: dict[str, str | None] = {}
    for name in PROVENANCE_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def host_info() -> dict[str, Any]:
    """The machine a result was measured on."""
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpu_usable": usable_cores(),  # this process's CPU affinity (containers, taskset)
        "torch_threads": torch.get_num_threads(),  # before the run sets its own: those are in report.conditions
        "memory_total_bytes": psutil.virtual_memory().total,
    }


def provenance() -> dict[str, Any]:
    """git sha, library versions and host, for report.json."""
    return {"git_sha": git_sha(), "versions": library_versions(), "host": host_info()}
