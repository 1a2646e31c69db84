"""The runner against a cloud served by `python -m transport serve` (cloud.address), on loopback.

The served checkpoint is the one a local run's prepare() wrote (same model, protocol and seed), so
the device's keys match it: accuracy against the plaintext model must be exact. A server running
another protocol's handler is refused by name, before any request.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from bench.app import CONFIG_DIR, run, run_dir_of
from bench.validate import ConfigError

REPO = Path(CONFIG_DIR).parent
TOY = ["model=bert-tiny", "network=none", "run.repeats=1", "run.warmup=0", "run.seq_len=8", "cloud_timeout_s=60"]


def make_cfg(tmp_path, *overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("config", overrides=[f"output_root={tmp_path / 'runs'}", *TOY, *overrides])


@pytest.fixture
def served_stip(tmp_path):
    """A local STIP run keeping its checkpoint, then that checkpoint served on loopback with a token."""
    local = run(make_cfg(tmp_path, "protocol=stip", "+keep_checkpoints=true"))
    assert local.status == "ok", local.error
    (ckpt,) = run_dir_of(local.config).glob("work-*/cloud_checkpoint")
    token = tmp_path / "token"
    token.write_text("t" * 32)
    token.chmod(0o600)  # a token file others can read is refused (issue 24)
    cmd = [sys.executable, "-m", "transport", "serve", "--factory", "protocols.stip_over_socket:make_cloud_handler",
           "--kwargs", json.dumps({"checkpoint": str(ckpt), "head": "base"}), "--token-file", str(token)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)})
    try:
        ready = json.loads(proc.stdout.readline())
        assert ready["ready"] and ready["token"]
        yield f"127.0.0.1:{ready['port']}", token
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_runner_measures_against_the_served_cloud(tmp_path, served_stip):
    address, token = served_stip
    report = run(make_cfg(tmp_path, "protocol=stip", f"cloud.address={address}", f"cloud.token_file={token}"))
    assert report.status == "ok", report.error
    rows = pd.read_parquet(run_dir_of(report.config) / "rows.parquet")
    err = rows[(rows.phase == "output") & (rows.metric == "max_abs_error")]["value"]
    assert len(err) and err.max() < 1e-4  # the served checkpoint is the one this run's keys belong to
    assert rows[(rows.phase == "uplink") & (rows.metric == "bytes") & (rows.source == "socket")]["value"].iloc[0] > 0
    assert report.conditions["accelerator"] == "cpu"  # served with the handler's default device, as DESCRIBE said


def test_runner_refuses_a_cloud_running_another_protocol(tmp_path, served_stip):
    address, token = served_stip
    report = run(make_cfg(tmp_path, "protocol=full_cloud", f"cloud.address={address}", f"cloud.token_file={token}"))
    assert report.status == "failed"
    assert "runs protocols.stip_over_socket:make_cloud_handler, but this protocol needs " \
           "baselines.full_cloud:make_cloud_handler" in report.error


@pytest.mark.parametrize("overrides,message", [
    (["cloud.address=localhost"], "must look like 'host:port'"),
    (["cloud.address=127.0.0.1:7443", "cloud.token_file=/no/such/token"], "cloud.token_file='/no/such/token'"),
    (["cloud.address=127.0.0.1:7443", "network=wired"], "use network=none with cloud.address"),
])
def test_bad_cloud_options_fail_before_work(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        run(make_cfg(tmp_path, "protocol=stip", *overrides))
