"""Issue 24 (reliability, third pass): hostile or damaged result files cannot stop or steer the harness, and a
remote cloud's token never travels in clear or from a readable file. Each test failed on the code before it."""
from __future__ import annotations

import hmac
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import torch

import bench.app
import transport.auth
from bench.aggregate import aggregate
from bench.app import run, run_dir_of
from bench.console_answer import RUN_POINTER, sweep_runs
from bench.results import REPORT, RunReport
from bench.validate import ConfigError, activation_bytes, memory_problems
from protocols.results_schema import ROWS
from transport import CloudError, RemoteCloud, ServerLimits
from transport.auth import TokenError, read_token_file
from transport.client import CloudTimeout
from transport.framing import recv_frame
from transport.link import EmulatedLink, NetworkProfile
from transport.serve import ServeConfigError, read_token, server_ssl_context
from transport.testing import EchoHandler
from transport.wire import decode_body, encode_message

from helpers.bench_runs import fake_ok_run, make_cfg, plain
from helpers.loopback_cloud import client, gone, self_signed, serving, stip_handler

ROOT = Path(__file__).resolve().parents[1]

# --- results and aggregation (items 5-9) ----------------------------------------------------------------------

DAMAGED = {
    "random_bytes": b"\x93\xff\x00garbage\xc3\x28",
    "null": b"null",
    "list": b"[]",
    "string": b'"report"',
    "number": b"42",
    "wrong_types": json.dumps({"run_id": 7, "experiment": "exp", "config": [], "status": "ok"}).encode(),
}


@pytest.mark.parametrize("name", list(DAMAGED))
def test_aggregate_skips_and_lists_a_damaged_report(tmp_path, caplog, name):
    runs = tmp_path / "runs"
    (runs / "exp" / "good").mkdir(parents=True)
    fake_ok_run(runs / "exp" / "good", "good")
    (runs / "exp" / "bad").mkdir()
    (runs / "exp" / "bad" / REPORT).write_bytes(DAMAGED[name])
    assert aggregate(runs, tmp_path / "results") == [tmp_path / "results" / "exp"]
    table = pd.read_csv(tmp_path / "results" / "exp" / "runs.csv").set_index("run_id")
    assert table.loc["good", "status"] == "ok"
    assert table.loc["bad", "status"] == "unreadable" and "report.json" in table.loc["bad", "error"]
    assert set(pd.read_parquet(tmp_path / "results" / "exp" / "rows.parquet").run_id) == {"good"}
    assert str(runs / "exp" / "bad" / REPORT) in caplog.text


@pytest.mark.parametrize("experiment", ["../../escaped", "ABSOLUTE", "a/b", "..", ""])
def test_report_experiment_cannot_steer_where_aggregate_writes(tmp_path, caplog, experiment):
    runs = tmp_path / "a" / "runs"
    (runs / "exp" / "evil").mkdir(parents=True)
    fake_ok_run(runs / "exp" / "evil", "evil")
    experiment = str(tmp_path / "escaped-abs") if experiment == "ABSOLUTE" else experiment
    data = json.loads((runs / "exp" / "evil" / REPORT).read_text())
    (runs / "exp" / "evil" / REPORT).write_text(json.dumps({**data, "experiment": experiment}))
    results = tmp_path / "a" / "b" / "results"
    before = {p for p in tmp_path.rglob("*")}
    aggregate(runs, results)
    new = {p for p in tmp_path.rglob("*")} - before
    outside = [p for p in new if p != results and results not in p.parents and not results.is_relative_to(p)]
    assert not outside, outside  # only results/ (and the folders above it) were created
    assert not (tmp_path / "escaped-abs").exists()
    table = pd.read_csv(results / "exp" / "runs.csv").set_index("run_id")
    assert table.loc["evil", "status"] == "unreadable" and "experiment" in table.loc["evil", "error"]
    assert "experiment" in caplog.text


def test_aggregate_skips_and_lists_rows_of_the_wrong_schema(tmp_path, caplog):
    runs = tmp_path / "runs"
    for rid in ("good", "text_value", "text_seq"):
        (runs / "exp" / rid).mkdir(parents=True)
        fake_ok_run(runs / "exp" / rid, rid)
    for rid, col in (("text_value", "value"), ("text_seq", "seq_len")):
        path = runs / "exp" / rid / ROWS
        df = pd.read_parquet(path).astype({col: "string"})
        df[col] = "not a number"
        df.to_parquet(path, index=False)
    assert aggregate(runs, tmp_path / "results") == [tmp_path / "results" / "exp"]
    assert set(pd.read_parquet(tmp_path / "results" / "exp" / "rows.parquet").run_id) == {"good"}
    table = pd.read_csv(tmp_path / "results" / "exp" / "runs.csv").set_index("run_id")
    assert table.loc["text_value", "status"] == "unreadable" and table.loc["text_seq", "status"] == "unreadable"
    assert "text_value/rows.parquet" in caplog.text and "text_seq/rows.parquet" in caplog.text


def _shapes_run(tmp_path, *extra):
    cfg = make_cfg(tmp_path, "run.task=shapes", *extra)
    return cfg, run_dir_of(plain(cfg))


@pytest.mark.parametrize("name", ["random_bytes", "null", "list", "string", "wrong_types"])
@pytest.mark.parametrize("force", [False, True])
def test_runner_redoes_a_run_whose_report_is_damaged(tmp_path, name, force):
    cfg, out = _shapes_run(tmp_path, f"force={str(force).lower()}")
    out.mkdir(parents=True)
    (out / REPORT).write_bytes(DAMAGED[name])
    report = run(cfg)
    assert report.status == "ok" and not report.skipped, report.error
    assert RunReport.from_json(out).status == "ok"


def test_runner_redoes_an_ok_run_whose_rows_do_not_read_back(tmp_path):
    cfg, out = _shapes_run(tmp_path)
    assert run(cfg).status == "ok"
    rows = out / ROWS
    rows.write_bytes(rows.read_bytes()[:50])  # truncated under an `ok` report
    report = run(cfg)
    assert report.status == "ok" and not report.skipped
    assert len(pd.read_parquet(rows)) == report.n_rows
    assert run(cfg).skipped  # now it is finished: the next call skips it


def test_sweep_names_every_crashed_job(tmp_path, monkeypatch, capsys):
    """6 jobs, 4 raise outside the protocol (the runner itself): every one is named and recorded `failed`."""
    real_run = bench.app.run

    def crashing_run(cfg):
        seq = int(cfg.run.seq_len)
        if seq % 2 or seq == 4:  # 4 of the 6
            raise RuntimeError(f"boom at seq {seq}")
        return real_run(cfg)
    monkeypatch.setattr(bench.app, "run", crashing_run)
    monkeypatch.setattr(sys, "argv", [
        "bench", "-m", "model=bert-tiny", "protocol=full_cloud", "run.task=shapes", "run.seq_len=1,2,3,4,5,8",
        f"output_root={tmp_path / 'runs'}", f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    assert bench.app.cli() == 1
    err = capsys.readouterr().err
    assert "4 run(s) failed:" in err, err[-3000:]
    for seq in (1, 3, 4, 5):
        assert f"boom at seq {seq}" in err and f"run.seq_len={seq}" in err
    failed = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob(f"*/*/{REPORT}")]
    assert sorted(r["error"] for r in failed if r["status"] == "failed") == [
        f"RuntimeError: boom at seq {s}" for s in (1, 3, 4, 5)]
    assert sum(r["status"] == "ok" for r in failed) == 2


def test_sweep_runs_names_a_job_whose_rows_do_not_read_back(tmp_path):
    for i, rid in enumerate(("good", "torn")):
        (tmp_path / "runs" / rid).mkdir(parents=True)
        fake_ok_run(tmp_path / "runs" / rid, rid)
        (tmp_path / "sweep" / str(i)).mkdir(parents=True)
        (tmp_path / "sweep" / str(i) / RUN_POINTER).write_text(str(tmp_path / "runs" / rid))
    torn = tmp_path / "runs" / "torn" / ROWS
    torn.write_bytes(torn.read_bytes()[:40])
    (tmp_path / "sweep" / "2").mkdir()
    (tmp_path / "sweep" / "2" / RUN_POINTER).write_text(str(tmp_path / "runs" / "nothing"))
    rows, failed = sweep_runs(tmp_path / "sweep")
    assert set(rows.run_id) == {"good"}
    assert len(failed) == 2 and any("torn" in f and "rows.parquet" in f for f in failed), failed


@pytest.mark.parametrize("name", ["../x", "/abs", "a/b", ""])
def test_an_experiment_name_that_is_not_one_folder_is_refused_before_anything(tmp_path, name):
    with pytest.raises(ConfigError, match=r"experiment_name=.* must be one folder name.*experiment_name=adhoc"):
        run(make_cfg(tmp_path, f"experiment_name='{name}'"))
    assert not (tmp_path / "runs").exists() and not (tmp_path / "x").exists()


# --- remote cloud: token and TLS (items 2, 3, 4) --------------------------------------------------------------

def _token_file(tmp_path, mode: int):
    path = tmp_path / "token"
    path.write_text("t" * 32)
    path.chmod(mode)
    return path


def test_client_refuses_to_send_a_token_in_clear_off_loopback(tmp_path, monkeypatch):
    connected = []
    monkeypatch.setattr("socket.create_connection", lambda *a, **k: connected.append(a) or 1 / 0)
    with pytest.raises(ValueError, match=r"refusing to send the cloud token to 10\.1\.2\.3:7443.*clear text.*ca_file"):
        RemoteCloud("10.1.2.3:7443", token="t" * 32).start()
    assert not connected  # refused before any connection
    token = _token_file(tmp_path, 0o600)
    monkeypatch.delenv("STIP_CLOUD_TOKEN", raising=False)
    with pytest.raises(Exception, match=r"cloud\.address=10\.1\.2\.3:7443: .*clear text"):
        run(make_cfg(tmp_path, "protocol=stip", "network=none", "cloud.address=10.1.2.3:7443",
                     f"cloud.token_file={token}"))
    monkeypatch.setenv("STIP_CLOUD_TOKEN", "t" * 32)  # the environment's token is a token too
    with pytest.raises(Exception, match=r"clear text"):
        run(make_cfg(tmp_path, "protocol=stip", "network=none", "cloud.address=10.1.2.3:7443"))


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_a_token_file_others_can_read_is_refused_naming_it_and_the_fix(tmp_path, mode):
    token = _token_file(tmp_path, mode)
    fix = f"chmod 600 {token}"
    with pytest.raises(TokenError, match=fix):
        read_token_file(token)
    with pytest.raises(ServeConfigError, match=fix):
        read_token(str(token))
    with pytest.raises(Exception, match=r"cloud\.token_file: .*" + fix):
        run(make_cfg(tmp_path, "protocol=stip", "network=none", "cloud.address=127.0.0.1:7443",
                     f"cloud.token_file={token}"))
    proc = subprocess.run([sys.executable, "-m", "transport", "serve", "--factory",
                           "transport.testing:make_echo_handler", "--token-file", str(token)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and fix in proc.stderr and proc.stdout == ""
    token.chmod(0o600)
    assert read_token_file(token) == "t" * 32


@pytest.mark.parametrize("bad", ["\ud800x", "x\udfff", 12, None, ["t" * 32]])
def test_a_hello_whose_token_is_not_text_is_unauthorized_without_a_traceback(caplog, bad):
    with serving(EchoHandler(), token="t" * 32) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(encode_message("hello", None, {"token": bad}))
            reply = decode_body(*recv_frame(sock, deadline=time.monotonic() + 5))
    assert reply.meta.get("error_type") == "Unauthorized", reply
    assert "Traceback" not in caplog.text and not [r for r in caplog.records if r.exc_info]


def test_tokens_are_compared_in_constant_time_on_bytes(monkeypatch):
    seen = []
    real = hmac.compare_digest
    monkeypatch.setattr(transport.auth.hmac, "compare_digest", lambda a, b: seen.append((a, b)) or real(a, b))
    assert transport.auth.tokens_match("t" * 32, "t" * 32)
    assert not transport.auth.tokens_match("t" * 31 + "u", "t" * 32)
    assert not transport.auth.tokens_match("\ud800", "t" * 32) and not transport.auth.tokens_match(None, "x")
    assert not transport.auth.tokens_match("", "t" * 32)
    assert seen and all(isinstance(a, bytes) and isinstance(b, bytes) for a, b in seen)
    assert len(seen) == 5  # every comparison, even of a token that is not text, goes through compare_digest


# --- bad values (items 10, 12) ----------------------------------------------------------------------------------

def test_the_emulated_link_honours_the_calls_deadline():
    link = EmulatedLink(NetworkProfile("typo", None, rtt_s=1e7))
    a, b = socket.socketpair()
    with a, b:
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match="passes the call's deadline"):
            link.send(a, b"x" * 10, deadline=t0 + 0.3)
        assert 0.25 < time.monotonic() - t0 < 2.0


def test_a_call_over_a_link_slower_than_its_timeout_times_out_in_time():
    with serving(EchoHandler()) as server:
        cloud = RemoteCloud(f"127.0.0.1:{server.port}", network=NetworkProfile("typo", None, rtt_s=1e7), timeout_s=0.5)
        with cloud:
            t0 = time.monotonic()
            with pytest.raises(CloudTimeout, match="within 0.5 s"):
                cloud.call("echo")
            assert time.monotonic() - t0 < 3.0


@pytest.mark.parametrize("override,named", [
    ("network.rtt_s=1e7", "network.rtt_s=10000000.0"), ("network.rtt_s=3601", "network.rtt_s=3601"),
    ("network.bandwidth_bps=10", "network.bandwidth_bps=10"),
    ("network.bandwidth_bps=1e20", "network.bandwidth_bps=1e+20"),
])
def test_link_values_that_are_typos_are_refused_naming_them(tmp_path, override, named):
    with pytest.raises(ConfigError) as err:
        run(make_cfg(tmp_path, "network=wired", override))
    assert named in str(err.value) and ("3600" in str(err.value) or "bits/s" in str(err.value)), str(err.value)
    assert not (tmp_path / "runs").exists()


def test_server_refuses_batch_x_sequence_above_its_cap_before_compute():
    class Counting(EchoHandler):
        calls = 0

        def echo(self, tensors, **meta):
            Counting.calls += 1
            return super().echo(tensors, **meta)

    with serving(Counting(), limits=ServerLimits(max_batch_tokens=64)) as server, client(server) as cloud:
        ids = torch.zeros(8, 8, dtype=torch.int64)
        assert torch.equal(cloud.call("echo", {"input_ids": ids})[0]["input_ids"], ids)  # 64: at the cap
        with pytest.raises(CloudError, match=r"input_ids has shape \(8, 9\).*72.*max_batch_tokens=64") as info:
            cloud.call("echo", {"input_ids": torch.zeros(8, 9, dtype=torch.int64)})
        assert info.value.error_type == "BadRequest" and Counting.calls == 1  # refused before the handler ran
    assert ServerLimits.from_dict({"max_batch_tokens": 10}).max_batch_tokens == 10
    with pytest.raises(ValueError, match="max_batch_tokens"):
        ServerLimits(max_batch_tokens=0)


@pytest.mark.parametrize("values", [[1, 2], [1, -1], [0.5, 1.0]])
def test_mask_values_other_than_0_and_1_are_refused(values):
    with serving(EchoHandler()) as server, client(server) as cloud:
        good = torch.tensor([[1, 0]])
        assert torch.equal(cloud.call("echo", {"attention_mask": good})[0]["attention_mask"], good)
        with pytest.raises(CloudError, match="attention_mask must hold only 0 and 1") as info:
            cloud.call("echo", {"attention_mask": torch.tensor([values])})
        assert info.value.error_type == "BadRequest"


def test_session_refusals_neither_tell_a_live_id_from_an_unknown_one_nor_echo_it():
    handler, owner = stip_handler()
    with serving(handler) as server, client(server) as alice, client(server) as mallory:
        live = alice.call("open_session")[1]["session"]
        unknown = "f" * len(live)
        replies = {}
        for sid in (live, unknown):
            request = owner.request(torch.tensor([[1, 2, 3]]), session=sid)
            tensors = {k: v for k, v in request.items() if isinstance(v, torch.Tensor)}
            meta = {k: v for k, v in request.items() if not isinstance(v, torch.Tensor)}
            with pytest.raises(CloudError) as info:
                mallory.call("infer", tensors, meta)
            replies[sid] = str(info.value).split("(error ")[0]  # the error id differs per call by design
            assert sid not in str(info.value)
            mallory.call("close_session", None, {"session": sid})  # ignored alike: nothing to learn
        assert replies[live] == replies[unknown] and "unknown session" in replies[live]
        request = owner.request(torch.tensor([[1, 2, 3]]), session=live)
        alice.call("infer", {k: v for k, v in request.items() if isinstance(v, torch.Tensor)},
                   {k: v for k, v in request.items() if not isinstance(v, torch.Tensor)})  # still alice's


# --- pre-authentication budget (item 1) -------------------------------------------------------------------------

@pytest.fixture
def tls_token_server(tmp_path):
    """A CloudServer in this process with TLS and a token, and what a client needs to reach it."""
    cert, key = self_signed(tmp_path)

    def start(**limits):
        return serving(EchoHandler(), token="t" * 32, ssl_context=server_ssl_context(str(cert), str(key)),
                       limits=ServerLimits(**limits))
    return start, cert


def _stalled(port: int, n: int, tls_cert=None) -> list:
    """n connections that send one byte and then nothing (raw TCP, or a finished TLS handshake then one byte)."""
    out = []
    for _ in range(n):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        if tls_cert is not None:
            sock = ssl.create_default_context(cafile=str(tls_cert)).wrap_socket(sock, server_hostname="127.0.0.1")
        sock.sendall(b"\x16" if tls_cert is None else b"S")
        out.append(sock)
    return out


def _closed_within(sock, seconds: float) -> bool:
    sock.settimeout(seconds)
    t0 = time.monotonic()
    try:
        while sock.recv(1 << 16):
            pass
    except TimeoutError:
        return False
    except OSError:
        pass
    return time.monotonic() - t0 < seconds


@pytest.mark.parametrize("stage", ["tls_handshake", "hello"])
def test_unauthenticated_connections_cannot_lock_out_a_client_with_the_token(tls_token_server, stage):
    """Issue 24 item 1: 4 connections that send one byte each once held all 4 slots for frame_timeout_s."""
    start, cert = tls_token_server
    with start(max_connections=4, handshake_timeout_s=2, frame_timeout_s=20) as server:
        attackers = _stalled(server.port, 4, cert if stage == "hello" else None)
        time.sleep(0.2)
        t0 = time.monotonic()
        with RemoteCloud(f"127.0.0.1:{server.port}", token="t" * 32, ca_file=cert, timeout_s=10) as cloud:
            x = torch_ones()
            assert cloud.call("echo", {"x": x})[0]["x"].equal(x)
        assert time.monotonic() - t0 < 1.5  # served at once, not after the stalled ones time out
        t0 = time.monotonic()
        assert all(_closed_within(s, 4.0) for s in attackers)  # the whole unauthenticated phase: <= 2 s
        assert time.monotonic() - t0 < 3.5
        for s in attackers:
            s.close()


def torch_ones():
    return torch.ones(3)


def test_a_full_server_answers_with_a_reason(tls_token_server):
    start, cert = tls_token_server
    with start(max_unauthenticated=2, handshake_timeout_s=3) as server:
        attackers = _stalled(server.port, 2)
        time.sleep(0.2)
        with pytest.raises(CloudError, match="max_unauthenticated") as info:
            RemoteCloud(f"127.0.0.1:{server.port}", token="t" * 32, ca_file=cert, timeout_s=5).start()
        assert info.value.error_type == "TooManyConnections"
        for s in attackers:
            s.close()
    with start(max_connections=1) as server:
        address = f"127.0.0.1:{server.port}"
        with RemoteCloud(address, token="t" * 32, ca_file=cert, timeout_s=5) as first:
            first.call("echo")
            with pytest.raises(CloudError, match="max_connections") as info:
                RemoteCloud(address, token="t" * 32, ca_file=cert, timeout_s=5).start()
            assert info.value.error_type == "TooManyConnections"
            first.call("echo")  # the served client is untouched


# --- the cloud's process group (item 13) ------------------------------------------------------------------------

RUNNER = """
import sys, time
from transport import CloudProcess
cloud = CloudProcess("transport.testing:make_echo_handler", timeout_s=30).start()
print(cloud.pid, cloud.call("spawn_child")[1]["pid"], flush=True)
time.sleep(300)
"""


def test_a_device_killed_by_sigkill_leaves_neither_cloud_nor_grandchild():
    runner = subprocess.Popen([sys.executable, "-c", RUNNER], stdout=subprocess.PIPE, text=True, cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    cloud = grandchild = None
    try:
        cloud, grandchild = map(int, runner.stdout.readline().split())
        runner.send_signal(signal.SIGKILL)
        runner.wait(10)
        assert gone(cloud, 10) and gone(grandchild, 10)
    finally:
        runner.kill()
        for pid in (cloud, grandchild):
            if pid and not gone(pid, 0.1):  # never leave a process behind, even when the test fails
                os.kill(pid, signal.SIGKILL)


# --- memory from shapes before building (item 11) ---------------------------------------------------------------

def test_a_batch_that_cannot_fit_is_refused_before_anything_is_built(tmp_path, monkeypatch):
    def no_build(*a, **k):
        raise AssertionError("a model was built for a run that cannot fit")
    monkeypatch.setattr(bench.app, "build_spec", no_build)
    cfg = make_cfg(tmp_path, "run.batch_size=1000000")
    need, _ = activation_bytes(plain(cfg)["run"], plain(cfg)["model"])
    assert need > psutil.virtual_memory().total  # the premise: 10**6 x 32 tokens of bert-tiny cannot fit
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        run(cfg)
    assert time.perf_counter() - t0 < 5.0
    text = str(err.value)
    assert "run.batch_size=1000000" in text and "GiB of activations" in text and "this host has" in text, text
    assert not (tmp_path / "runs").exists()


def test_the_memory_estimate_passes_the_shipped_workloads(tmp_path):
    cfg = plain(make_cfg(tmp_path, "run.batch_size=100", "run.seq_len=100"))
    assert memory_problems(cfg["run"], cfg["model"]) == []
    shapes = plain(make_cfg(tmp_path, "run.batch_size=1000000", "run.task=shapes"))
    assert memory_problems(shapes["run"], shapes["model"]) == []  # a shape-only run allocates no activations
