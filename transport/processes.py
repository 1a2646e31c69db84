"""One way to start, watch and end child processes.

- `spawn`: a child program (a fresh interpreter) as the leader of its own session and process group,
  so `signal_tree` reaches everything it starts. The cloud process (`transport.client.CloudProcess`,
  long-lived, exits when its stdin closes, which also happens when its parent dies) and one-shot
  measurements (`run_to_end`, e.g. protocols.memory's tokenizer RSS) start this way.
- `die_with_parent`: what a child runs first so it never outlives its parent (prctl PR_SET_PDEATHSIG on
  Linux plus a watchdog on the parent's pid everywhere): used by the MPC parties.
- `signal_tree`: the one way to end a process tree: its process group (catches descendants whose parent
  already died) and every descendant psutil sees (catches those that left the group). Reaping stays
  with the caller, who owns the process object (Popen.wait, multiprocessing.Process.join).

Why the MPC parties are forked (multiprocessing, `baselines.mpc.launcher`) and not spawned: a party
inherits the model and the party function from the runner (closures over tensors of up to hundreds of
MB); a fresh interpreter would need them pickled or written to disk for every run. The cloud and the
tokenizer measurement need a fresh interpreter instead: the cloud is another machine in the model (no
state shared with the device), the tokenizer measurement counts RSS growth without the runner's caches.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Sequence

import psutil

log = logging.getLogger(__name__)
_PR_SET_PDEATHSIG = 1
WATCHDOG_INTERVAL_S = 0.2


def spawn(argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen:
    """Start `argv` as the leader of a new session and process group (Popen keywords pass through)."""
    clash = {"start_new_session", "process_group", "preexec_fn"} & set(popen_kwargs)
    if clash:
        raise ValueError(f"spawn() sets the child's session itself; drop {sorted(clash)}")
    return subprocess.Popen(list(argv), start_new_session=True, **popen_kwargs)


def run_to_end(argv: Sequence[str], *, timeout_s: float,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `argv` to its end and collect its text output; on timeout (subprocess.TimeoutExpired) or any
    interruption, kill its whole tree and reap it before raising."""
    proc = spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except BaseException:
        signal_tree(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def die_with_parent(parent_pid: int, cleanup: Callable[[], None]) -> None:
    """Make this process run `cleanup` and kill its own group as soon as its parent `parent_pid` is gone.

    Call it first thing in a child that leads its own process group.
    """
    def leave(*_: Any) -> None:
        try:
            cleanup()
        finally:
            try:
                os.killpg(0, signal.SIGKILL)  # this process and anything it started
            finally:
                os._exit(1)

    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            log.warning("prctl(PR_SET_PDEATHSIG) failed (errno %d); relying on the watchdog", ctypes.get_errno())
    signal.signal(signal.SIGTERM, leave)
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        leave()

    def watchdog() -> None:
        while os.getppid() == parent_pid:
            time.sleep(WATCHDOG_INTERVAL_S)
        leave()

    threading.Thread(target=watchdog, daemon=True, name="parent-watchdog").start()


def signal_tree(pid: int, sig: int = signal.SIGKILL) -> None:
    """Send `sig` to the group led by `pid` and to every live descendant of `pid`; gone processes are skipped."""
    try:
        descendants = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):  # no group of that id (not set up yet, or gone)
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    for child in descendants:
        try:
            child.send_signal(sig)
        except psutil.NoSuchProcess:
            pass
