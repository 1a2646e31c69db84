"""A short scheduler slice for the harness's processes, so a request's wake-ups are not queued behind busy cores.

Within a request the device and the cloud take turns: each sleeps in `recv` until the other's message wakes
it. On a host whose cores other processes keep busy, Linux's EEVDF scheduler (kernel >= 6.6) lets a woken
task preempt the running one at once only if its slice is shorter (PREEMPT_SHORT, kernel >= 6.12); with the
default slice (0.7 ms x (1 + log2 cores)) it waits until a spinning process's slice runs out, once per
wake-up. An unprivileged process may ask for its own slice (`sched_setattr`, SCHED_OTHER, `sched_runtime`,
0.1-100 ms): no priority or nice change, and its CPU share stays the fair one; it is only scheduled in
shorter turns. Measured on a 2-core host with two `while True: pass` processes, an echo handler doing
0.6 ms of compute per call over transport.CloudProcess (both sides' slices switched per call, interleaved):
median `downlink` (the request's wake-ups) 14.8 ms with the kernel's slice, 1.75 ms with 0.1 ms
(docs/harness.md "Timing on a shared host", with a second, noisier run).

The slice is per thread and inherited by threads and child processes created afterwards (fork and exec
keep it), so the runner sets it in its main thread before it starts the cloud process or MPC parties,
and the cloud process sets it again before its server threads start. `STIP_SCHED_SLICE_US` carries the
setting to children: a number of microseconds, or `kernel` to leave the kernel's default. Where the
kernel or platform has no such call (not Linux, an architecture without its syscall number, a kernel
before 3.14), or refuses it, nothing changes and the returned record says why (`reason`), so every run
records the slice it really ran with.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import platform
import struct
import sys
import threading
from typing import Any, Iterator

DEFAULT_SLICE_US = 100  # the shortest slice the kernel accepts (0.1 ms)
MIN_SLICE_US, MAX_SLICE_US = 100, 100_000  # the kernel's own bounds for a SCHED_OTHER sched_runtime
SLICE_ENV_VAR = "STIP_SCHED_SLICE_US"
KERNEL = "kernel"  # the value that leaves the kernel's own slice alone

# sched_setattr / sched_getattr syscall numbers (no libc wrapper before glibc 2.41)
_SYSCALLS = {"x86_64": (314, 315), "aarch64": (274, 275), "arm64": (274, 275)}
_ATTR = struct.Struct("<IIQiIQQQ")  # struct sched_attr up to sched_period (SCHED_ATTR_SIZE_VER0 = 48 bytes)
_ATTR_SIZE = _ATTR.size
assert _ATTR_SIZE == 48
# The policy number, and the flag that keeps it from threads started meanwhile (they start at SCHED_OTHER, nice 0: no
# real-time thread the harness did not ask for, e.g. an OpenMP pool spinning at real-time priority)
_SCHED_FIFO, _RESET_ON_FORK = 1, 0x01


def _resolve_setting(requested: Any, env_var: str, default: int, off: str, bounds: tuple[int, int],
                     what: str, off_means: str) -> int | None:
    """`requested`, else $env_var, else `default`, as a whole number inside `bounds`; None for the word `off`.
    Raises ValueError naming the value, the variable and the way out."""
    value = os.environ.get(env_var) if requested is None else requested
    if value is None:
        return default
    if isinstance(value, str) and value.strip().lower() == off:
        return None
    lo, hi = bounds
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} {value!r} ({env_var}) is not a whole number; give {lo}..{hi} or {off!r} "
                         f"{off_means}") from None
    if not lo <= number <= hi:
        raise ValueError(f"{what} {number} ({env_var}) is outside {lo}..{hi}; give a value inside it or {off!r}")
    return number


def resolve_slice(requested: Any = None) -> int | None:
    """The slice in microseconds for this process: `requested`, else $STIP_SCHED_SLICE_US, else the default;
    None means the kernel's own slice (`kernel`)."""
    return _resolve_setting(requested, SLICE_ENV_VAR, DEFAULT_SLICE_US, KERNEL, (MIN_SLICE_US, MAX_SLICE_US),
                            "scheduler slice in us", "for the kernel's own")


def _syscalls() -> tuple[int, int] | None:
    if not sys.platform.startswith("linux"):
        return None
    return _SYSCALLS.get(platform.machine())


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _getattr() -> tuple[int, int, int]:
    """(policy, nice, sched_runtime in ns) of the calling thread; raises OSError."""
    numbers = _syscalls()
    if numbers is None:
        raise OSError(f"no sched_getattr on {sys.platform}/{platform.machine()}")
    buf = ctypes.create_string_buffer(_ATTR_SIZE)
    if _libc().syscall(numbers[1], 0, buf, _ATTR_SIZE, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    _, policy, _, nice, _, runtime, _, _ = _ATTR.unpack(buf.raw)
    return policy, nice, runtime


def _setattr(policy: int, nice: int = 0, priority: int = 0, runtime_ns: int = 0, flags: int = 0) -> str | None:
    """sched_setattr on the calling thread; None where it held, else the kernel's reason."""
    numbers = _syscalls()
    if numbers is None:
        return f"no sched_setattr on {sys.platform}/{platform.machine()}"
    attr = ctypes.create_string_buffer(_ATTR.pack(_ATTR_SIZE, policy, flags, nice, priority, runtime_ns, 0, 0),
                                       _ATTR_SIZE)
    if _libc().syscall(numbers[0], 0, attr, 0) != 0:
        return os.strerror(ctypes.get_errno())
    return None


def read_slice() -> dict[str, Any]:
    """The calling thread's scheduler slice as the kernel reports it: {"slice_us": float | None, ...}."""
    try:
        policy, _, runtime = _getattr()
    except OSError as exc:
        return {"slice_us": None, "reason": f"sched_getattr unavailable: {exc}"}
    if policy == _SCHED_FIFO and getattr(_request_path, "saved", None) is not None:
        runtime = _request_path.saved[1]  # inside request_path: the slice it puts back after the request
    elif policy != 0:  # SCHED_OTHER = 0; a batch/idle/real-time policy has no EEVDF slice to read
        return {"slice_us": None, "reason": f"scheduling policy {policy} is not SCHED_OTHER"}
    return {"slice_us": runtime / 1000 if runtime else None,
            **({} if runtime else {"reason": "the kernel reports no slice (before 6.12: the default is fixed)"})}


def apply_slice(requested: Any = None) -> dict[str, Any]:
    """Ask the kernel for this thread's slice (see module doc), export it for children, return what holds.

    Returns {"requested_us": int | None, "slice_us": ..., "reason": ...} with `slice_us` read back from the
    kernel (None requested: the kernel's default, restored if a parent's slice was inherited); never raises
    for a platform without the call (the record says so), raises ValueError for a bad setting.
    """
    us = resolve_slice(requested)
    os.environ[SLICE_ENV_VAR] = KERNEL if us is None else str(us)
    numbers = _syscalls()
    if numbers is None:
        return {"requested_us": us, "slice_us": None,
                "reason": f"no sched_setattr on {sys.platform}/{platform.machine()}"}
    try:
        policy, nice, _ = _getattr()
    except OSError as exc:
        return {"requested_us": us, "slice_us": None, "reason": f"sched_getattr failed: {exc}"}
    if policy != 0:
        return {"requested_us": us, **read_slice()}
    refused = _setattr(0, nice, runtime_ns=0 if us is None else us * 1000)  # 0: the kernel's default slice
    if refused is not None:
        return {"requested_us": us, "slice_us": None, "reason": f"sched_setattr refused: {refused}"}
    return {"requested_us": us, **read_slice()}


# -- priority: the nice value of the harness's processes -------------------------------------------------------------
# A short slice gets a woken request onto a busy core at once, but its CPU share stays the fair one: with every core
# kept busy by other processes, a 1-thread forward still shares its core with a spinner (measured, 4 pairs on 2
# cores with two spinners: compute loaded / quiet 1.08, 1.57, 1.34, 0.98; total up to 4.2x). A lower nice value
# weights the scheduler's fair share: at -10 a process weighs 9548 against a nice-0 process's 1024 (the kernel's
# sched_prio_to_weight table), ~90% of a contended core. Lowering it needs root or CAP_SYS_NICE (or RLIMIT_NICE);
# where that is refused the process keeps its nice value and the record says why. Nice is per thread on Linux and
# inherited by threads and children created afterwards, so it is set where the slice is (apply_threads).
DEFAULT_NICE = -10
MIN_NICE, MAX_NICE = -20, 19
NICE_ENV_VAR = "STIP_NICE"
KEEP = "keep"  # the value that leaves the nice value the process started with


def resolve_nice(requested: Any = None) -> int | None:
    """The nice value for this process: `requested`, else $STIP_NICE, else DEFAULT_NICE; None means keep it."""
    return _resolve_setting(requested, NICE_ENV_VAR, DEFAULT_NICE, KEEP, (MIN_NICE, MAX_NICE), "nice value",
                            "to keep the one the process started with")


def read_nice() -> int:
    """The calling thread's nice value."""
    return os.getpriority(os.PRIO_PROCESS, 0)


def apply_nice(requested: Any = None) -> dict[str, Any]:
    """Set this thread's nice value (see the block comment above), export the setting for children, return what
    holds: {"requested": int | None, "nice": int, "reason": ...} (a reason only where the kernel refused)."""
    want = resolve_nice(requested)
    os.environ[NICE_ENV_VAR] = KEEP if want is None else str(want)
    before = read_nice()
    if want is None or want == before:
        return {"requested": want, "nice": before}
    try:
        os.setpriority(os.PRIO_PROCESS, 0, want)
    except OSError as exc:  # EPERM/EACCES: lowering the nice value without the privilege
        return {"requested": want, "nice": before,
                "reason": f"nice {want} refused ({exc.strerror}): lowering it needs root or CAP_SYS_NICE; timed at "
                          f"nice {before}, the fair share of a busy core ({NICE_ENV_VAR}={KEEP} says so up front)"}
    return {"requested": want, "nice": read_nice()}


# -- real-time policy for the request path ---------------------------------------------------------------------------
# The short slice lets a woken thread preempt a busy core only if EEVDF finds it eligible, and it does not when the
# thread has lately run more than its fair share (negative lag: the case of a request's handler, which computes as
# soon as it is woken, every time): it then waits for the running task's tick (4 ms at HZ=250). Traced with
# `perf sched timehist` (2-core host, two nice-0 spinners, bert-tiny full cloud at nice -10, 0.1 ms slice): the
# cloud's connection thread, woken by a request, waited 2.4 and 4.1 ms while a spinner ran out its turn. A thread at
# SCHED_FIFO preempts every SCHED_OTHER task at once on wake-up. Switching to it only for the wait does not help: on
# the switch back the kernel reschedules at once (switched_to_fair) and the thread, still not eligible, loses its core
# right after the wake-up (measured: no better than without). So the whole request path runs at SCHED_FIFO priority 1:
# the device's call (send, wait, receive) and the cloud's connection threads (wait, compute, reply); nothing else the
# harness does (model loading, attacks, MPC parties, SPU). Measured (benchmarks/bench_loaded_host.py, 4 pairs, 2-core
# host, two spinners): total loaded / quiet 1.04, 1.31, 1.14, 1.27 at `fifo`, 4.08, 2.79, 0.66, 1.76 without.
# What it costs others: while the cloud computes a forward, its core is the harness's (the kernel keeps 5% of each
# core for SCHED_OTHER tasks: RT throttling, the fair server on kernels >= 6.12); one thread per process by default,
# so one core at a time. It needs root or CAP_SYS_NICE (or RLIMIT_RTPRIO >= 1); where refused the path stays
# SCHED_OTHER and the run records why. $STIP_SCHED_POLICY: `fifo` (default) or `fair` (SCHED_OTHER throughout).
POLICY_ENV_VAR = "STIP_SCHED_POLICY"
FAIR, FIFO = "fair", "fifo"
_fifo_refused: str | None = None  # the kernel's reason, once it refused SCHED_FIFO in this process
_request_path = threading.local()  # .saved: (nice, slice in ns) a thread inside request_path puts back


def resolve_policy(requested: Any = None) -> str:
    """`fifo` or `fair`: `requested`, else $STIP_SCHED_POLICY, else `fifo`; raises ValueError naming a bad value."""
    value = os.environ.get(POLICY_ENV_VAR, FIFO) if requested is None else requested
    if not isinstance(value, str) or value.strip().lower() not in (FAIR, FIFO):
        raise ValueError(f"scheduling policy {value!r} ({POLICY_ENV_VAR}) is neither {FIFO!r} (the request path at "
                         f"SCHED_FIFO priority 1, the default) nor {FAIR!r} (SCHED_OTHER throughout); give one of them")
    return value.strip().lower()


@contextlib.contextmanager
def request_path() -> Iterator[None]:
    """Run the enclosed request path at SCHED_FIFO priority 1 under `fifo` (see the block comment above), then put
    the thread's policy, nice value and slice back; a no-op under `fair`, where refused, or on a non-SCHED_OTHER
    thread (a nested path)."""
    global _fifo_refused
    if _fifo_refused is not None or os.environ.get(POLICY_ENV_VAR, FIFO) != FIFO:
        yield
        return
    try:
        policy, nice, runtime = _getattr()
    except OSError as exc:
        _fifo_refused = f"sched_getattr unavailable: {exc}"
        yield
        return
    if policy != 0:
        yield
        return
    refused = _setattr(_SCHED_FIFO, priority=1, flags=_RESET_ON_FORK)
    if refused is not None:
        _fifo_refused = (f"SCHED_FIFO refused ({refused}): it needs root or CAP_SYS_NICE (or RLIMIT_RTPRIO >= 1); "
                         "the request path ran at SCHED_OTHER")
        yield
        return
    _request_path.saved = (nice, runtime)
    try:
        yield
    finally:
        _request_path.saved = None
        _setattr(0, nice, runtime_ns=runtime)


def apply_policy(requested: Any = None) -> dict[str, Any]:
    """Export the policy setting for children and try it once here; returns read_policy()."""
    os.environ[POLICY_ENV_VAR] = resolve_policy(requested)
    with request_path():
        pass
    return read_policy()


def thread_policy() -> str | None:
    """What the calling thread runs at now: `fifo` (inside request_path) or `fair`; None where it cannot be read."""
    try:
        return FIFO if _getattr()[0] == _SCHED_FIFO else FAIR
    except OSError:
        return None


def read_policy() -> dict[str, Any]:
    """The request path's policy in this process: {"policy": "fifo" | "fair", "reason": ...} (refused: fair + why)."""
    setting = os.environ.get(POLICY_ENV_VAR, FIFO)
    if setting == FIFO and _fifo_refused is not None:
        return {"policy": FAIR, "reason": _fifo_refused}
    return {"policy": setting}
