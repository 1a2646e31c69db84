"""The scheduler slice, nice value and request-path policy (transport.sched): parsed, applied, inherited by the cloud
process, recorded."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from transport import CloudProcess
from transport.client import CallRecord
from transport.sched import (
    DEFAULT_NICE,
    DEFAULT_SLICE_US,
    FAIR,
    FIFO,
    KERNEL,
    NICE_ENV_VAR,
    POLICY_ENV_VAR,
    SLICE_ENV_VAR,
    apply_nice,
    apply_policy,
    apply_slice,
    read_nice,
    read_policy,
    read_slice,
    request_path,
    resolve_nice,
    resolve_policy,
    resolve_slice,
    thread_policy,
)
from transport.threads import apply_threads

FACTORY = "helpers.thread_probe:make_probe"
SUPPORTED = read_slice()["slice_us"] is not None  # Linux >= 6.12 reports its EEVDF slice
PRIVILEGED = os.geteuid() == 0  # root may lower the nice value (as CAP_SYS_NICE may)


@pytest.fixture
def restore_slice():
    before = os.environ.get(SLICE_ENV_VAR)
    yield
    apply_slice(before or KERNEL)  # exports its value: the variable is put back after it
    if before is None:
        os.environ.pop(SLICE_ENV_VAR, None)
    else:
        os.environ[SLICE_ENV_VAR] = before


def test_resolve_slice(monkeypatch):
    monkeypatch.delenv(SLICE_ENV_VAR, raising=False)
    assert resolve_slice() == DEFAULT_SLICE_US == 100
    assert resolve_slice(250) == 250 and resolve_slice("kernel") is None and resolve_slice("KERNEL") is None
    monkeypatch.setenv(SLICE_ENV_VAR, "3000")
    assert resolve_slice() == 3000
    for bad, match in ((50, "outside"), (200_000, "outside"), ("fast", "not a whole number")):
        with pytest.raises(ValueError, match=match):
            resolve_slice(bad)


@pytest.mark.skipif(not SUPPORTED, reason="this kernel reports no EEVDF slice (Linux < 6.12)")
def test_apply_reads_back_and_kernel_restores_the_default(restore_slice):
    default = apply_slice("kernel")["slice_us"]
    assert default and default >= 100
    got = apply_slice(250)
    assert got == {"requested_us": 250, "slice_us": 250.0} and os.environ[SLICE_ENV_VAR] == "250"
    assert apply_slice("kernel")["slice_us"] == default and os.environ[SLICE_ENV_VAR] == "kernel"


def test_unsupported_platform_says_why(monkeypatch, restore_slice):
    monkeypatch.setattr("transport.sched._syscalls", lambda: None)
    got = apply_slice(100)
    assert got["slice_us"] is None and "no sched_setattr" in got["reason"]
    assert read_slice()["slice_us"] is None


@pytest.mark.skipif(not SUPPORTED, reason="this kernel reports no EEVDF slice (Linux < 6.12)")
def test_children_inherit_the_slice(restore_slice, restore_threads, monkeypatch):
    monkeypatch.delenv(SLICE_ENV_VAR, raising=False)
    apply_threads(1)  # what the runner does: threads and the default slice
    assert read_slice()["slice_us"] == DEFAULT_SLICE_US
    code = "from transport.sched import read_slice; print(read_slice()['slice_us'])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert float(out.stdout) == DEFAULT_SLICE_US  # fork + exec keep it: MPC parties and SPU's driver too


def _one_served_call(monkeypatch, env: dict[str, str | None]) -> tuple[CallRecord, dict]:
    """One `threads` call and one `describe` through a cloud process started with `env` (None: the variable unset,
    the default); returns the call's record (what the thread that ran the handler reported) and the description."""
    for var, value in env.items():
        if value is None:
            monkeypatch.delenv(var, raising=False)
        else:
            monkeypatch.setenv(var, value)
    with CloudProcess(FACTORY, {}) as cloud:
        cloud.call("threads", {}, {})
        call = cloud.last_call
        _, described = cloud.call("describe", {}, {})
    return call, described


@pytest.mark.skipif(not SUPPORTED, reason="this kernel reports no EEVDF slice (Linux < 6.12)")
@pytest.mark.parametrize("setting", [None, "kernel", "300"])
def test_cloud_process_serves_with_the_slice_and_reports_it(setting, restore_slice, monkeypatch):
    default = apply_slice("kernel")["slice_us"]
    call, described = _one_served_call(monkeypatch, {SLICE_ENV_VAR: setting})
    want = {None: DEFAULT_SLICE_US, "kernel": default, "300": 300}[setting]
    assert call.cloud_sched_slice_us == want  # the thread that ran the handler
    assert described["threads"]["sched_slice_us"] == want


def test_resolve_nice(monkeypatch):
    monkeypatch.delenv(NICE_ENV_VAR, raising=False)
    assert resolve_nice() == DEFAULT_NICE == -10
    assert resolve_nice(5) == 5 and resolve_nice("keep") is None and resolve_nice("-20") == -20
    monkeypatch.setenv(NICE_ENV_VAR, "3")
    assert resolve_nice() == 3
    for bad, match in ((-21, "outside"), (20, "outside"), ("high", "not a whole number")):
        with pytest.raises(ValueError, match=match):
            resolve_nice(bad)


def test_a_refused_nice_value_is_recorded_not_raised(monkeypatch, restore_threads):
    def refuse(*_: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr("transport.sched.os.setpriority", refuse)
    before = read_nice()
    got = apply_nice(before - 1)
    assert got["nice"] == before == read_nice() and "refused (Operation not permitted)" in got["reason"]
    monkeypatch.delenv(NICE_ENV_VAR, raising=False)
    if before != DEFAULT_NICE:  # apply_threads asks for the default: refused, it says why in the conditions
        assert "CAP_SYS_NICE" in apply_threads(1)["nice_reason"]


@pytest.mark.skipif(not PRIVILEGED, reason="lowering the nice value needs root or CAP_SYS_NICE")
def test_children_and_the_cloud_process_inherit_the_nice_value(monkeypatch, restore_threads):
    monkeypatch.delenv(NICE_ENV_VAR, raising=False)
    threads = apply_threads(1)  # what the runner does
    assert threads["nice"] == read_nice() == DEFAULT_NICE and "nice_reason" not in threads
    out = subprocess.run([sys.executable, "-c", "import os; print(os.getpriority(os.PRIO_PROCESS, 0))"],
                         capture_output=True, text=True, check=True, timeout=60)
    assert int(out.stdout) == DEFAULT_NICE  # MPC parties and SPU's driver too
    monkeypatch.setenv(NICE_ENV_VAR, "-3")
    with CloudProcess(FACTORY, {}) as cloud:  # the cloud applies $STIP_NICE itself before it serves
        cloud.call("threads", {}, {})
        call = cloud.last_call
        _, described = cloud.call("describe", {}, {})
    assert call.cloud_nice == -3 and described["threads"]["nice"] == -3
    assert apply_nice(0) == {"requested": 0, "nice": 0} and os.environ[NICE_ENV_VAR] == "0"


def test_resolve_policy(monkeypatch):
    monkeypatch.delenv(POLICY_ENV_VAR, raising=False)
    assert resolve_policy() == FIFO and resolve_policy("FAIR") == FAIR
    monkeypatch.setenv(POLICY_ENV_VAR, "fair")
    assert resolve_policy() == FAIR
    with pytest.raises(ValueError, match=r"'realtime' \(STIP_SCHED_POLICY\) is neither 'fifo'"):
        resolve_policy("realtime")


@pytest.mark.skipif(not (PRIVILEGED and SUPPORTED), reason="SCHED_FIFO needs root or CAP_SYS_NICE; the slice 6.12")
def test_the_request_path_runs_at_fifo_and_puts_nice_and_slice_back(monkeypatch, restore_threads, restore_slice):
    monkeypatch.setenv(POLICY_ENV_VAR, FIFO)
    apply_slice(250)
    apply_nice(-3)
    assert thread_policy() == FAIR
    with request_path():
        assert thread_policy() == FIFO
        assert read_slice()["slice_us"] == 250.0  # the slice it goes back to, not "no slice"
        with request_path():  # nested: a no-op, the outer one puts things back
            assert thread_policy() == FIFO
    assert thread_policy() == FAIR and read_slice()["slice_us"] == 250.0 and read_nice() == -3
    monkeypatch.setenv(POLICY_ENV_VAR, FAIR)
    with request_path():
        assert thread_policy() == FAIR


def test_a_refused_fifo_is_recorded_and_the_path_stays_fair(monkeypatch, restore_threads):
    monkeypatch.setattr("transport.sched._fifo_refused", None)  # put back after the test
    monkeypatch.setattr("transport.sched._setattr", lambda *a, **k: "Operation not permitted")
    monkeypatch.setenv(POLICY_ENV_VAR, FIFO)
    got = apply_policy()
    assert got["policy"] == FAIR and "SCHED_FIFO refused (Operation not permitted)" in got["reason"]
    assert "CAP_SYS_NICE" in got["reason"] and read_policy() == got
    assert "CAP_SYS_NICE" in apply_threads(1)["policy_reason"]  # a run's conditions say so
    with request_path():
        assert thread_policy() == FAIR


@pytest.mark.skipif(not PRIVILEGED, reason="SCHED_FIFO needs root or CAP_SYS_NICE")
@pytest.mark.parametrize("setting", [None, FAIR])
def test_the_cloud_serves_a_request_at_the_policy_and_reports_it(setting, monkeypatch, restore_threads):
    call, _ = _one_served_call(monkeypatch, {SLICE_ENV_VAR: None, POLICY_ENV_VAR: setting})
    assert call.cloud_sched_policy == (setting or FIFO)  # the thread that ran the handler, while it ran
    assert call.cloud_sched_slice_us == DEFAULT_SLICE_US or not SUPPORTED  # the slice it goes back to, not "none"
