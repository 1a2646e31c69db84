"""transport.processes: the one way to start a child, and its tree dies with it on a timeout."""
from __future__ import annotations

import subprocess
import sys
import time

import psutil
import pytest

from transport.processes import run_to_end, spawn


def test_run_to_end_kills_the_whole_tree_on_timeout():
    code = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(61)']);"
            "print('started', flush=True); time.sleep(61)")
    with pytest.raises(subprocess.TimeoutExpired):
        run_to_end([sys.executable, "-c", code], timeout_s=3.0)
    time.sleep(0.5)
    leftover = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if "time.sleep(61)" in " ".join(p.info["cmdline"] or []) and p.status() != psutil.STATUS_ZOMBIE:
                leftover.append(p.pid)
        except psutil.NoSuchProcess:
            pass
    assert leftover == []


def test_run_to_end_returns_the_output_and_spawn_owns_the_session():
    assert run_to_end([sys.executable, "-c", "print('ok')"], timeout_s=30).stdout == "ok\n"
    child = spawn([sys.executable, "-c", "import os; print(os.getsid(0) == os.getpid())"], stdout=subprocess.PIPE,
                  text=True)
    assert child.communicate(timeout=30)[0] == "True\n"
    with pytest.raises(ValueError, match="start_new_session"):
        spawn([sys.executable, "-c", "pass"], start_new_session=False)
