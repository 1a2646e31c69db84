"""One timed job at a time per host for protocols that are not `parallel_safe`, under any launcher.

Every run holds a lock on a per-host file: a shared lock when its protocol is `parallel_safe`, an exclusive
one when not (MPC: its two party processes' timings interfere with anything else running). Parallel jobs of
safe protocols overlap; an unsafe one waits until it is alone and keeps the host until it ends. The lock
file is node-local (the temp folder), so jobs on different cluster nodes never wait for each other; joblib
workers, submitit jobs and Ray workers are all ordinary processes of their node and share its lock.
"""
from __future__ import annotations

import fcntl
import logging
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)


def lock_path() -> Path:
    """The host's lock file (STIP_BENCH_HOST_LOCK overrides it, e.g. for tests)."""
    return Path(os.environ.get("STIP_BENCH_HOST_LOCK", Path(tempfile.gettempdir()) / "stip-bench-host.lock"))


@contextmanager
def host_slot(parallel_safe: bool, what: str = "run") -> Iterator[None]:
    """Hold the host shared (parallel_safe) or alone (not) for the duration of a timed run."""
    path = lock_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        mode = fcntl.LOCK_SH if parallel_safe else fcntl.LOCK_EX
        try:
            fcntl.flock(f, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("%s waits for the host (%s): %s", what, "shared" if parallel_safe else "alone", path)
            fcntl.flock(f, mode)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
