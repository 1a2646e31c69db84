"""How many threads each process the harness starts may use: the one place the policy lives.

Every computing process (the device = the runner, the cloud process, each MPC party, SPU's runtime) gets
an explicit intra-op and inter-op count, and its children get the same count in OMP_NUM_THREADS,
MKL_NUM_THREADS, OPENBLAS_NUM_THREADS (read by those libraries when they load, so they must be in the
child's environment before it imports torch/numpy/jax).

The default is DEFAULT_THREADS = 1 per process. Why not a share of the cores: the harness runs on shared
hosts, and a multi-threaded parallel region collapses as soon as other processes take the cores (its
threads wait at each barrier for a peer the scheduler parked). Measured on a 2-core host with both cores
kept busy (docs/harness.md "Timing on a shared host"): bert-tiny cloud compute 111 ms with torch's default threads,
1.38 ms with 1 thread (1.14 ms quiet); in one process, 1 thread 0.90 ms median, 2 threads 4.88 ms median,
145 ms p90. One thread per process never oversubscribes while the processes computing at once (device and
cloud take turns; two MPC parties) number no more than the cores. On a dedicated many-core host, pass a
larger count (`run.threads`, `protocol.cloud_threads`); the run records what it used.

`apply_threads` also asks for a short scheduler slice and a lower nice value (transport.sched), so that the
wake-ups within a request are not queued behind other processes' busy cores and a forward is not halved by them,
and runs the request path at SCHED_FIFO where permitted; `read_threads` reports them (`sched_slice_us`,
`nice`, `sched_policy`; `nice_reason` and `policy_reason` where the kernel refused).
"""
from __future__ import annotations

import os
from typing import Any

import torch

from transport.sched import apply_nice, apply_policy, apply_slice, read_nice, read_policy, read_slice

DEFAULT_THREADS = 1
# NUMBA_NUM_THREADS: numba's OpenMP layer (loaded by `dcor`, the privacy rows) sets the process-wide OpenMP count
# to NUMBA_NUM_THREADS (default: every core) when it loads, which silently undid torch.set_num_threads(1) in the
# runner from the first dcor on (measured: 1 -> 2 on this 2-core host); with it set, it keeps the policy's count.
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), which can be fewer than the host's logical CPUs."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows: no affinity call
        return os.cpu_count() or 1


def resolve_threads(requested: Any = None) -> int:
    """The thread count for one process: `requested` if given (an int >= 1), else DEFAULT_THREADS."""
    if requested is None:
        return DEFAULT_THREADS
    try:
        n = int(requested)
    except (TypeError, ValueError):
        raise ValueError(f"threads={requested!r} is not a whole number; give an int >= 1, or null for the "
                         f"default ({DEFAULT_THREADS})") from None
    if n < 1 or n != requested and not isinstance(requested, str):
        raise ValueError(f"threads={requested!r} must be a whole number >= 1 (or null for the default, "
                         f"{DEFAULT_THREADS})")
    return n


def inherited_threads(requested: Any = None) -> int:
    """`requested`, else the count the starting process put in OMP_NUM_THREADS (apply_threads does), else the
    default: how a forked or spawned child of the runner follows `run.threads`."""
    return resolve_threads(requested if requested is not None else os.environ.get("OMP_NUM_THREADS"))


def xla_flags(n: int, existing: str = "") -> str:
    """XLA_FLAGS for a JAX child (SPU's driver): Eigen's own pool off at 1 thread (XLA has no flag for a count)."""
    flag = "--xla_cpu_multi_thread_eigen=false"
    if int(n) != 1 or flag in existing:
        return existing
    return f"{existing} {flag}".strip()


def thread_env(n: int) -> dict[str, str]:
    """Environment variables that make a child's OpenMP/MKL/OpenBLAS pools `n` threads wide."""
    return {var: str(int(n)) for var in THREAD_ENV_VARS}


def apply_threads(requested: Any = None) -> dict[str, Any]:
    """Set this process's torch intra-op and inter-op threads and its children's environment; return what holds.

    torch refuses a new inter-op count once inter-op work has started in the process (a runner that ran an
    earlier job): then the count already in force stays, and the returned `inter_op` says which it is.
    """
    n = resolve_threads(requested)
    os.environ.update(thread_env(n))
    nice = apply_nice()  # the priority ($STIP_NICE, default -10 where permitted): transport.sched
    apply_slice()  # the scheduler slice ($STIP_SCHED_SLICE_US, default 0.1 ms): transport.sched
    apply_policy()  # the request path's policy ($STIP_SCHED_POLICY, default fifo): transport.sched
    torch.set_num_threads(n)
    if torch.get_num_interop_threads() != n:
        try:
            torch.set_num_interop_threads(n)
        except RuntimeError:  # inter-op pool already started; recorded below as it is
            pass
    return {**read_threads(requested=n), **({"nice_reason": nice["reason"]} if "reason" in nice else {})}


def read_threads(requested: int | None = None) -> dict[str, Any]:
    """The thread settings in force in this process (what a run records for each of its processes)."""
    out: dict[str, Any] = {"intra_op": torch.get_num_threads(), "inter_op": torch.get_num_interop_threads(),
                           "env": {var: os.environ.get(var) for var in THREAD_ENV_VARS},
                           "sched_slice_us": read_slice()["slice_us"], "nice": read_nice()}
    policy = read_policy()
    out["sched_policy"] = policy["policy"]
    if "reason" in policy:
        out["policy_reason"] = policy["reason"]
    if requested is not None:
        out["requested"] = int(requested)
    return out
