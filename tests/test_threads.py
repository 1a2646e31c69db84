"""Thread discipline: every process the harness starts gets the policy's threads, and runs record their conditions."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from baselines.mpc.launcher import run_parties
from baselines.spu.engine import spu_env
from bench.app import CONFIG_DIR, run
from bench.conditions import RunConditions, noisy_reasons
from transport import CloudProcess
from transport.cloud_server import process_accelerator
from transport.sched import read_nice, read_policy, read_slice
from transport.threads import DEFAULT_THREADS, THREAD_ENV_VARS, apply_threads, resolve_threads

FACTORY = "helpers.thread_probe:make_probe"


def test_resolve_threads_default_and_refusals():
    assert resolve_threads(None) == DEFAULT_THREADS == 1
    assert resolve_threads(3) == 3 and resolve_threads("2") == 2
    for bad in (0, -1, 1.5, "two"):
        with pytest.raises(ValueError, match="threads="):
            resolve_threads(bad)


@pytest.mark.parametrize("threads", [None, 2])
def test_cloud_process_sets_and_reports_its_threads(threads):
    with CloudProcess(FACTORY, {}, threads=threads) as cloud:
        _, meta = cloud.call("threads", {}, {})
        call = cloud.last_call
        _, described = cloud.call("describe", {}, {})
    n = threads or DEFAULT_THREADS
    assert meta["intra_op"] == n and meta["inter_op"] == n
    assert meta["env"] == {v: str(n) for v in THREAD_ENV_VARS}
    assert call.cloud_threads == n  # reported with every reply's timing
    assert call.cloud_compute_cpu is not None and call.cloud_compute_cpu >= 0
    assert described["threads"]["intra_op"] == n
    assert cloud.accelerator == described["accelerator"] == "cpu"  # the probe puts nothing on a GPU, whatever the host


def test_process_accelerator_names_the_gpus_only_once_cuda_is_used(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    assert process_accelerator() == "cpu"  # a GPU on the host the cloud never used (protocol.cloud_device=cpu)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: f"NVIDIA H100 #{i}")
    assert process_accelerator() == {"device": "cuda", "count": 2, "names": ["NVIDIA H100 #0", "NVIDIA H100 #1"]}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert process_accelerator() == "cpu"


def test_conditions_record_the_clouds_accelerator(restore_threads):
    sampler = RunConditions(1).start()
    gpu = {"device": "cuda", "count": 1, "names": ["NVIDIA H100 80GB HBM3"]}
    assert sampler.finish([], None, gpu)[0]["accelerator"] == gpu
    assert sampler.finish([], None, "cpu")[0]["accelerator"] == "cpu"
    assert sampler.finish([])[0]["accelerator"] is None  # no cloud process said (the MPC baselines)


def _party_threads(rank, crypten, payload):
    return {"intra_op": torch.get_num_threads(), "omp": os.environ.get("OMP_NUM_THREADS"),
            "slice_us": read_slice()["slice_us"]}


def test_mpc_parties_take_the_runners_threads(restore_threads):
    apply_threads(2)  # what the runner does with run.threads=2
    slice_us = read_slice()["slice_us"]  # transport.sched's default where the kernel has slices, else None
    got = run_parties(_party_threads, timeout_s=120)
    assert got == [{"intra_op": 2, "omp": "2", "slice_us": slice_us}] * 2
    got = run_parties(_party_threads, timeout_s=120, threads_per_party=1)
    assert got == [{"intra_op": 1, "omp": "1", "slice_us": slice_us}] * 2


def test_spu_driver_env(restore_threads, monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x")
    apply_threads(1)
    env = spu_env()
    assert {v: env[v] for v in THREAD_ENV_VARS} == {v: "1" for v in THREAD_ENV_VARS}
    assert env["XLA_FLAGS"] == "--xla_dump_to=/tmp/x --xla_cpu_multi_thread_eigen=false"
    apply_threads(2)
    assert spu_env()["OMP_NUM_THREADS"] == "2" and "eigen" not in spu_env()["XLA_FLAGS"]


@pytest.mark.slow  # numba's import alone takes 5-20 s on a shared 2-core host
def test_numba_keeps_the_policy_threads():
    """`dcor` loads numba, whose OpenMP layer reset torch's threads to every core (the privacy rows did it)."""
    code = ("from transport.threads import apply_threads; import torch; apply_threads(1); import dcor; "
            "print(torch.get_num_threads())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True,
                         env={k: v for k, v in os.environ.items() if k not in THREAD_ENV_VARS})
    assert out.stdout.strip() == "1"


def _conditions(others=0.1, load=0.2, ratio=0.95, usable=2, after=1):
    return {"cores": {"usable": usable}, "other_load_cores": others, "load_before": [load, 0, 0],
            "threads": {"device": {"intra_op": 1, "intra_op_after": after}},
            "cpu_wall": {"cloud_compute": {"cpu_s": ratio * 0.01, "wall_s": 0.01, "ratio": ratio}}}


def test_noisy_reasons():
    assert noisy_reasons(_conditions(), 1) == []
    assert "1.90 of 2 usable cores" in noisy_reasons(_conditions(others=1.9), 1)[0]
    assert noisy_reasons(_conditions(load=2.5), 1) == []  # recorded only: it remembers the sweep's previous job
    assert "cloud_compute: CPU time / wall time 0.20" in noisy_reasons(_conditions(ratio=0.2), 1)[0]
    assert "changed during the run (1 -> 2)" in noisy_reasons(_conditions(after=2), 1)[0]
    assert noisy_reasons(_conditions(others=1.9, usable=16), 1) == []  # a big host has room for others


def test_report_records_conditions(tmp_path, restore_threads):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[f"output_root={tmp_path / 'runs'}", "model=bert-tiny", "protocol=stip",
                                           "network=none", "run.repeats=2", "run.warmup=0", "run.seq_len=8",
                                           "protocol.log_dcor=false", "protocol.cloud_threads=2"])
    report = run(cfg)
    assert report.status == "ok", report.error
    saved = json.loads((Path(report.config["output_root"]) / report.experiment / report.run_id
                        / "report.json").read_text())
    cond = saved["conditions"]
    assert cond["threads"]["device"]["intra_op"] == 1 and cond["threads"]["device"]["inter_op"] >= 1
    assert cond["threads"]["cloud"] == {"intra_op": 2, "requested": 2,  # as the cloud process reported it
                                        "sched_slice_us": read_slice()["slice_us"],  # transport.sched: inherited
                                        "nice": read_nice(), "sched_policy": read_policy()["policy"]}
    assert cond["threads"]["device"]["sched_slice_us"] == read_slice()["slice_us"]
    assert cond["threads"]["device"]["sched_policy"] == read_policy()["policy"]  # fifo where permitted
    assert cond["threads"]["device"]["nice"] == read_nice()
    assert cond["cores"]["usable"] == len(os.sched_getaffinity(0)) and cond["cores"]["logical"] == os.cpu_count()
    assert len(cond["load_before"]) == 3 and len(cond["load_after"]) == 3
    assert cond["cpu_wall"]["cloud_compute"]["cpu_s"] > 0 and cond["cpu_wall"]["cloud_compute"]["wall_s"] > 0
    assert cond["backend"]["parallel_info"] and "other_load_cores" in cond
    assert isinstance(saved["noisy"], list)
    gpu = torch.cuda.is_available()  # protocol.cloud_device=auto: the cloud takes the GPU where torch sees one
    assert (cond["accelerator"]["device"] == "cuda") if gpu else (cond["accelerator"] == "cpu")
    assert saved["provenance"]["host"]["cpu_usable"] == len(os.sched_getaffinity(0))
