"""The conditions a run was measured under, and whether they make its timings doubtful (report.conditions, .noisy).

A run's repeats can agree with each other and still all be slow because other processes held the cores
(docs/harness.md "Timing on a shared host"): so the runner records thread counts per process, the host's cores, the
load average before and after, the cores other processes kept busy during the run, CPU time beside wall
time per phase, torch's parallel backend and the accelerator the cloud computed on ('cpu', or the GPUs' names and
count as the cloud process reported them; None where no cloud process said, e.g. the MPC baselines), and flags the
run `noisy` when they say the host was oversubscribed, whatever the repeats' spread.
"""
from __future__ import annotations

import os
import re
import time
from dataclasses import asdict
from typing import Any, Iterable, Mapping

import pandas as pd
import psutil
import torch

from protocols.contract import Row
from transport.threads import apply_threads, inherited_threads, usable_cores

MIN_CPU_WALL = 0.5  # a compute phase below this CPU/wall ratio waited for a core for half its time
MIN_JUDGED_WALL_S = 2e-3  # phases whose summed wall time is shorter are not judged (timer and tick granularity)


def _cpu_ids() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:
        return list(range(psutil.cpu_count() or 1))


def _busy_seconds(cpus: Iterable[int]) -> float:
    """CPU seconds the given cores spent on anything but idle/iowait since boot (every process on the host)."""
    per = psutil.cpu_times(percpu=True)
    return sum(sum(per[i]) - per[i].idle - getattr(per[i], "iowait", 0.0) for i in cpus if i < len(per))


def _own_seconds() -> float:
    """CPU seconds of this process and its reaped children (the cloud process, MPC parties, SPU's driver)."""
    t = psutil.Process().cpu_times()
    return t.user + t.system + t.children_user + t.children_system


class OtherLoad:
    """Cores other processes keep busy from construction on: the busy CPU seconds of this process's cores less
    this process's and its reaped children's, over the wall time. Unlike the load average, whose minute-long
    memory holds the harness's own previous job, it sees only others (a run's conditions, a whole profile)."""

    def __init__(self) -> None:
        self.cpus = _cpu_ids()
        self.wall, self.busy, self.own = time.perf_counter(), _busy_seconds(self.cpus), _own_seconds()

    def sample(self) -> tuple[float, float, float]:
        """(wall seconds, own CPU seconds, cores others kept busy) since construction."""
        wall = time.perf_counter() - self.wall
        busy, own = _busy_seconds(self.cpus) - self.busy, _own_seconds() - self.own
        return wall, own, max(busy - own, 0.0) / wall if wall > 0 else 0.0


def backend_summary() -> dict[str, Any]:
    """torch's parallel backend (torch.__config__.parallel_info() lines) and its BLAS (BLAS_INFO of the build)."""
    blas = re.search(r"BLAS_INFO=([\w-]+)", torch.__config__.show())
    return {"parallel_info": [ln.strip() for ln in torch.__config__.parallel_info().splitlines() if ln.strip()],
            "blas": blas.group(1) if blas else None}


class RunConditions:
    """Sample the host around `protocol.run`: `start()` before (also sets the device's threads), `finish()` after."""

    def __init__(self, threads: int | None = None) -> None:
        self.requested = threads
        self.device_threads: dict[str, Any] = {}

    def start(self) -> RunConditions:
        """Apply the thread policy to this (the device's) process, then take the 'before' sample."""
        self.device_threads = apply_threads(self.requested)
        self.load_before = list(psutil.getloadavg())
        self.load = OtherLoad()
        return self

    def finish(self, rows: list[Row], process_threads: Mapping[str, Any] | None = None,
               accelerator: Mapping[str, Any] | str | None = None) -> tuple[dict, list[str]]:
        """(report.conditions, report.noisy) of the run whose rows these are; `accelerator` is what the cloud process
        reported it computed on (transport.cloud_server.process_accelerator), None where none did."""
        wall, own, others = self.load.sample()
        usable = usable_cores()
        children = {"requested": inherited_threads()}  # what MPC parties and SPU's driver take (OMP_NUM_THREADS)
        device = {**self.device_threads, "intra_op_after": torch.get_num_threads()}
        threads = {"device": device, **(dict(process_threads) if process_threads else {"children": children})}
        harness = max(int(t.get("intra_op") or t.get("requested") or 1) for t in threads.values())
        cpu_wall = phase_cpu_wall(rows)
        conditions = {
            "threads": threads,
            "cores": {"logical": psutil.cpu_count(logical=True), "physical": psutil.cpu_count(logical=False),
                      "usable": usable},
            "load_before": self.load_before, "load_after": list(psutil.getloadavg()),
            "other_load_cores": round(others, 3), "run_wall_s": round(wall, 3), "run_cpu_s": round(own, 3),
            "cpu_wall": cpu_wall, "backend": backend_summary(),
            "accelerator": dict(accelerator) if isinstance(accelerator, Mapping) else accelerator,
        }
        return conditions, noisy_reasons(conditions, harness)


def phase_cpu_wall(rows: list[Row]) -> dict[str, dict[str, float]]:
    """Per phase with `cpu_time` rows: CPU and wall seconds summed over the repeats, and their ratio."""
    df = pd.DataFrame([asdict(r) for r in rows])
    if df.empty or "cpu_time" not in set(df["metric"]):
        return {}
    out = {}
    for phase, cpu in df[df.metric == "cpu_time"].groupby("phase")["value"].sum().items():
        wall = df[(df.metric == "latency") & (df.phase == phase) & (df.source != "modelled")]["value"].sum()
        if wall > 0:
            out[str(phase)] = {"cpu_s": float(cpu), "wall_s": float(wall), "ratio": round(float(cpu / wall), 3)}
    return out


def noisy_reasons(conditions: Mapping[str, Any], harness_threads: int) -> list[str]:
    """Why the conditions make the timings doubtful: cores taken by others, compute phases waiting for a core."""
    usable = int(conditions["cores"]["usable"])
    room = usable - harness_threads  # cores other processes may take before the harness's threads must queue
    reasons = []
    others = float(conditions["other_load_cores"])
    if others > room + 0.25:
        reasons.append(f"other processes kept {others:.2f} of {usable} usable cores busy during the run while the "
                       f"harness needed {harness_threads}: host oversubscribed")
    # The load average before the run is recorded, not judged: its minute-long memory holds the harness's own
    # previous job of a sweep (two MPC parties leave it near 2), so it flagged back-to-back runs on a quiet host.
    device = conditions["threads"].get("device", {})
    if device.get("intra_op_after", device.get("intra_op")) != device.get("intra_op"):
        reasons.append(f"the device's torch threads changed during the run ({device['intra_op']} -> "
                       f"{device['intra_op_after']}): a library reset them (transport.threads)")
    for phase, cw in conditions["cpu_wall"].items():
        if cw["wall_s"] >= MIN_JUDGED_WALL_S and cw["ratio"] < MIN_CPU_WALL:
            reasons.append(f"{phase}: CPU time / wall time {cw['ratio']:.2f} (< {MIN_CPU_WALL}): the process waited "
                           "for a core (host oversubscribed)")
    return reasons
