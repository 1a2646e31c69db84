"""The report names the host that measured the results (their recorded conditions), not the one rebuilding it."""
import json
import os

import pandas as pd

from report import style
from report.artifacts._shared import host, host_differences, measured_host, measured_in


def _runs(folder, cores, accelerators=None):
    """A runs table as bench/runs_table.py writes it: dict conditions as JSON, 'cpu' / None as they are."""
    folder.mkdir(parents=True)
    table = {"run_id": ["a"], "conditions.cores": [json.dumps(cores)]}
    if accelerators is not None:
        table = {"run_id": [str(i) for i in range(len(accelerators))],
                 "conditions.cores": [json.dumps(cores)] * len(accelerators),
                 "conditions.accelerator": [json.dumps(a) if isinstance(a, dict) else a for a in accelerators]}
    pd.DataFrame(table).to_parquet(folder / "runs.parquet")


def test_the_host_comes_from_the_runs_conditions_not_this_machine(tmp_path, monkeypatch):
    _runs(tmp_path / "exp", {"logical": 96, "physical": 48, "usable": 96})
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    assert measured_host(tmp_path) == "96-core CPU, GPU not recorded, device and cloud on one host"
    with measured_in(tmp_path):
        assert host_differences("x").startswith("here: 96-core CPU, GPU not recorded") and "3-core" not in host()


def test_runs_on_different_hosts_and_usable_cores_are_named(tmp_path):
    _runs(tmp_path / "a", {"logical": 2, "physical": 2, "usable": 2})
    _runs(tmp_path / "b", {"logical": 8, "physical": 4, "usable": 2})
    assert measured_host(tmp_path).startswith("2-8-core CPUs (the runs' hosts differ) (2 usable)")


def test_the_bench_profile_alone_gives_the_core_count(tmp_path):
    (tmp_path / "profile.json").write_text(json.dumps({"cpu_count": 4}))
    assert measured_host(tmp_path).startswith("4-core CPU,")


def test_results_without_a_record_say_the_host_is_unknown(tmp_path):
    (tmp_path / "exp").mkdir()
    pd.DataFrame({"run_id": ["a"]}).to_parquet(tmp_path / "exp" / "runs.parquet")
    assert measured_host(tmp_path).startswith("host unknown")
    assert host().startswith("host unknown")  # outside measured_in no results folder names a host


def test_figure_titles_name_the_measuring_host_inside_the_report(tmp_path, monkeypatch):
    _runs(tmp_path / "exp", {"logical": 96, "physical": 48, "usable": 96})
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    with measured_in(tmp_path):
        assert style.host_label() == "96-core CPU"
    assert "96-core" not in style.host_label()  # outside the report: this machine, for ad-hoc plots


H100 = {"device": "cuda", "count": 1, "names": ["NVIDIA H100 80GB HBM3"]}


def test_a_cloud_on_a_gpu_is_named_from_the_runs_conditions(tmp_path):
    _runs(tmp_path / "gpu", {"logical": 16, "physical": 16, "usable": 16}, [H100, None])  # None: an MPC run
    assert measured_host(tmp_path) == "16-core CPU, cloud on 1x NVIDIA H100 80GB HBM3, device and cloud on one host"
    with measured_in(tmp_path):
        assert "GPU not recorded" not in host_differences()
        assert style.host_label() == "16-core CPU, cloud on 1x NVIDIA H100 80GB HBM3"  # figure titles name the GPU


def test_a_cloud_on_the_cpu_says_no_gpu_and_mixed_runs_say_both(tmp_path):
    _runs(tmp_path / "a", {"logical": 2, "physical": 2, "usable": 2}, ["cpu", None])
    assert measured_host(tmp_path) == "2-core CPU, no GPU (cloud on the CPU), device and cloud on one host"
    _runs(tmp_path / "b", {"logical": 2, "physical": 2, "usable": 2},
          [{"device": "cuda", "count": 2, "names": ["NVIDIA A100", "NVIDIA A100"]}])
    assert "cloud on 2x NVIDIA A100 in some runs, on the CPU in others" in measured_host(tmp_path)


def test_runs_that_record_no_accelerator_say_so(tmp_path):
    _runs(tmp_path / "mpc", {"logical": 2, "physical": 2, "usable": 2}, [None])  # recorded, but no cloud said
    assert measured_host(tmp_path) == "2-core CPU, GPU not recorded, device and cloud on one host"
