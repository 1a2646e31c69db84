"""One way to end a process tree: signal its process group and every descendant psutil can see.

The group catches descendants whose parent already died (reparented, so no longer children); psutil
catches descendants that left the group (their own session). Reaping stays with the caller, who owns
the process object (subprocess.Popen.wait, multiprocessing.Process.join).
"""
from __future__ import annotations

import os
import signal

import psutil


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
