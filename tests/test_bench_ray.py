"""`hydra/launcher=ray` against a local Ray cluster this module starts (`ray start --head`) and stops.

A sweep under Ray must give the rows of the same sweep under the basic launcher (same run ids; bytes, rounds
and counts equal; timings are not compared), and the host-slot rule (bench/hostslot.py) must hold per node:
Ray workers are ordinary processes of their node, so they flock the node's lock file like any other process.
Ray lives in .venv-ray (`make install-ray`): hydra-ray-launcher 1.2.2 pins cloudpickle<3.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pandas as pd
import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
RAY_PY = ROOT / ".venv-ray" / "bin" / "python"
TOY = ["model=bert-tiny", "network=none", "run.repeats=1", "run.warmup=0", "run.seq_len=8", "cloud_timeout_s=60"]
PROTOCOLS = "protocol=stip,mpc"  # stip is parallel_safe, mpc (CrypTen, two party processes) is not

pytestmark = [
    pytest.mark.slow,  # a Ray cluster (~20 s to start here) and two sweeps with a CrypTen pair: minutes
    pytest.mark.multihost,
    pytest.mark.skipif(not RAY_PY.exists(), reason=f"no {RAY_PY.relative_to(ROOT)}: `make install-ray` builds it "
                       "(hydra-ray-launcher 1.2.2 pins cloudpickle<3, so Ray is not in .venv nor in `make install`)"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen, temp_dir: str) -> None:
    """SIGTERM `ray start --block` (it shuts its node down), then end by pid whatever of this cluster is left:
    its processes are the ones whose command line names this cluster's own temp dir."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    left = [p for p in psutil.process_iter(["cmdline"]) if temp_dir in " ".join(p.info["cmdline"] or [])]
    for p in left:
        p.terminate()
    _, alive = psutil.wait_procs(left, timeout=10)
    for p in alive:
        p.kill()


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A one-node Ray cluster with token authentication (its GCS listens on every interface), 2 logical CPUs,
    and this module's host-lock file in its environment (Ray workers inherit the raylet's, not the driver's)."""
    work = tmp_path_factory.mktemp("ray")
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's unix sockets live under it
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex, "RAY_USAGE_STATS_ENABLED": "0",
           "HF_HUB_OFFLINE": "1", "STIP_BENCH_HOST_LOCK": str(work / "host.lock")}
    env.pop("PYTHONPATH", None)  # .venv-ray holds this checkout (editable): workers import it from there
    port = _free_port()
    cmd = [str(RAY_PY.parent / "ray"), "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
           "--include-dashboard=false", f"--temp-dir={temp_dir}", "--disable-usage-stats",
           f"--ray-client-server-port={_free_port()}", f"--dashboard-agent-listen-port={_free_port()}",
           f"--dashboard-agent-grpc-port={_free_port()}", f"--runtime-env-agent-port={_free_port()}"]
    log = open(work / "ray-start.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    address_file = Path(temp_dir) / "ray_current_cluster"
    try:
        deadline = time.monotonic() + 120
        while not address_file.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                log = (work / "ray-start.log").read_text()[-3000:]
                pytest.fail(f"ray start did not come up (rc {proc.poll()}): {log}")
            time.sleep(0.5)
        yield {"address": address_file.read_text().strip(), "env": env, "work": work}
    finally:
        _stop(proc, temp_dir)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _sweep(env: dict, out: Path, *launcher: str) -> subprocess.CompletedProcess:
    cmd = [str(RAY_PY), "-m", "bench", "-m", *TOY, PROTOCOLS, *launcher, f"output_root={out / 'runs'}",
           f"hydra.sweep.dir={out / 'sweep'}"]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-3000:])
    return result


def _rows(out: Path) -> dict[str, pd.DataFrame]:
    return {p.parent.name: pd.read_parquet(p) for p in sorted((out / "runs" / "adhoc").glob("*/rows.parquet"))}


def test_ray_sweep_gives_the_basic_launchers_rows_and_keeps_the_host_slot(ray_cluster):
    env, work = ray_cluster["env"], ray_cluster["work"]
    _sweep(env, work / "basic")
    ray = _sweep(env, work / "ray", "hydra/launcher=ray", f"hydra.launcher.ray.init.address={ray_cluster['address']}",
                 "hydra.launcher.ray.remote.num_cpus=1")  # two jobs at once on the 2-CPU node
    assert "Connected to Ray cluster" in ray.stdout + ray.stderr, ray.stderr[-2000:]
    assert "bert-tiny · seq 8 · batch 1" in ray.stdout and "mpc" in ray.stdout and "failed" not in ray.stdout

    expected, got = _rows(work / "basic"), _rows(work / "ray")
    assert len(expected) == 2 and set(got) == set(expected)  # same configs -> same run ids
    key = ["phase", "metric", "source", "unit"]
    for run_id, want in expected.items():
        have = got[run_id]
        assert have[key].equals(want[key]), run_id  # the same rows, in the same order
        counted = want["unit"].isin(["B", "count"])
        # Socket bytes of replies carry the cloud's timings as JSON numbers in the frame header
        # (transport/cloud_server.py, RUNTIME_META_KEY): their decimal length varies by a few bytes from run to run.
        timed_header = counted & (want["source"] == "socket") & want["phase"].isin(["downlink", "total"]) \
            & (want["metric"] == "bytes")
        exact = counted & ~timed_header
        assert exact.sum() >= 7, run_id  # stip: 7 of its 9 counted rows; mpc: all 15
        pd.testing.assert_series_equal(have.loc[exact, "value"], want.loc[exact, "value"], obj=f"{run_id} counts")
        replies = want.loc[(want["phase"] == "downlink") & (want["metric"] == "messages"), "value"].sum()
        drift = (have.loc[timed_header, "value"] - want.loc[timed_header, "value"]).abs()
        assert (drift <= 32 * replies).all(), (run_id, drift.tolist())

    # The slot: mpc (not parallel_safe) never overlapped the stip run, and one job waited for it, so the two
    # jobs were in flight together (Ray started both on the 2-CPU node) and the lock, not Ray, kept them apart.
    spans = {}
    for report in (work / "ray" / "runs" / "adhoc").glob("*/report.json"):
        r = json.loads(report.read_text())
        spans[r["config"]["protocol"]["name"]] = (r["started"], r["finished"])
    (mpc_start, mpc_end), (stip_start, stip_end) = spans["mpc"], spans["stip"]
    assert mpc_end <= stip_start or stip_end <= mpc_start, spans
    logs = "".join(p.read_text() for p in (work / "ray" / "sweep").glob("*/*.log"))
    assert "waits for the host" in logs, logs[-2000:]


HOLD = """
import sys, time
import ray
from bench.hostslot import host_slot, lock_path
ray.init(address=sys.argv[1])

@ray.remote(num_cpus=1)
def hold(marker, seconds):
    with host_slot(False, "ray task"):
        open(marker, "w").write(str(lock_path()))
        time.sleep(seconds)

ray.get(hold.remote(sys.argv[2], 10))
"""


def test_a_ray_task_holds_the_nodes_slot_against_other_processes(ray_cluster, tmp_path):
    """A Ray task taking the host alone blocks a process outside Ray on the same node (the same lock file)."""
    env, marker = ray_cluster["env"], tmp_path / "held"
    driver = subprocess.Popen([str(RAY_PY), "-c", HOLD, ray_cluster["address"], str(marker)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() or not marker.read_text():
            assert driver.poll() is None and time.monotonic() < deadline, driver.communicate()[0][-3000:]
            time.sleep(0.2)
        lock = Path(marker.read_text())
        assert lock == Path(env["STIP_BENCH_HOST_LOCK"])  # the worker's slot is this node's lock file
        with open(lock, "a+") as f:
            with pytest.raises(BlockingIOError):
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)  # even a parallel-safe run would wait
        assert driver.wait(timeout=120) == 0, driver.communicate()[0][-3000:]
        with open(lock, "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released when the task ended
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
