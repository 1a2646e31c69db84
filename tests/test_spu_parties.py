"""SPU parties as separate processes over SPU's brpc link (baselines/spu/party.py): the placement rule, the job files,
and the same output and the same bytes and send actions per party as the in-memory threads, on loopback and
across network namespaces behind a `tbf` rate limit."""
from __future__ import annotations

import json
import os
import pickle
import shlex
import socket
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from baselines.mpc.hosts import HostsConfigError
from baselines.spu.engine import REPO, SpuResult, placement_request, python, run_spu_forward, spu_env
from bench.app import parties_of, run_key
from bench.validate import parties_problems
from protocols.contract import PartiesConfig
from transport import netns

from helpers.mpc_models import toy_spec

HAS_SPU = (REPO / ".venv-spu" / "bin" / "python").exists() or bool(os.environ.get("SPU_VENV"))
needs_spu = pytest.mark.skipif(not HAS_SPU, reason="needs .venv-spu (make install)")


def test_placement_follows_crypten_parties_rule() -> None:
    """Non-loopback only with parties.allow_network=true; one address per party; the device among the local ranks."""
    with pytest.raises(HostsConfigError, match="parties.allow_network=true"):
        placement_request(PartiesConfig(hosts=["198.18.0.1:9530", "127.0.0.1:9531"]), "cheetah")
    with pytest.raises(HostsConfigError, match="runs 3 parties"):
        placement_request(PartiesConfig(hosts=["127.0.0.1:1", "127.0.0.1:2"]), "aby3")
    with pytest.raises(HostsConfigError, match="including the device"):
        placement_request(PartiesConfig(hosts=["127.0.0.1:1", "127.0.0.1:2"], local=[0]), "cheetah")
    with pytest.raises(HostsConfigError, match="CrypTen's"):
        placement_request(PartiesConfig(rendezvous="file:///x", hosts=["127.0.0.1:1", "127.0.0.1:2"]), "cheetah")
    req = placement_request(PartiesConfig(hosts=["198.18.0.1:9530", "[::1]:9531"], allow_network=True,
                                          netns={0: "nsA"}), "semi2k")
    assert req == {"link": "brpc", "addresses": ["198.18.0.1:9530", "[::1]:9531"], "local": [1],
                   "allow_network": True, "launch_prefix": {"0": ["ip", "netns", "exec", "nsA"]}}


def test_config_places_spu_parties_by_hosts_alone() -> None:
    """parties.hosts without a rendezvous is SPU's placement: a run of its own, refused for any other engine."""
    base = {"rendezvous": None, "hosts": None, "local": None, "allow_network": False, "netns": None}
    assert parties_of({"parties": base}) is None
    placed = parties_of({"parties": {**base, "hosts": ["127.0.0.1", "127.0.0.1"]}})
    assert placed is not None and placed.hosts == ["127.0.0.1", "127.0.0.1"]
    spu = {"name": "mpc", "engine": "spu"}
    assert parties_problems({"hosts": ["127.0.0.1", "127.0.0.1"]}, spu) == []
    (problem,) = parties_problems({"hosts": ["127.0.0.1", "127.0.0.1"]}, {"name": "mpc", "engine": "crypten"})
    assert "protocol.engine=spu" in problem
    (problem,) = parties_problems({"rendezvous": "file:///x", "hosts": ["a", "b"]}, spu)
    assert "engine='spu'" in problem
    cfg = {"model": {"name": "m"}, "protocol": spu, "network": "none", "run": {}, "parties": base}
    placed_cfg = {**cfg, "parties": {**base, "hosts": ["127.0.0.1", "127.0.0.1"]}}
    assert "parties" not in run_key(cfg) and "parties" in run_key(placed_cfg)


def drive_with_remote_ranks(request: dict[str, Any], log: Path) -> tuple[dict[str, Any], list[str]]:
    """The SPU driver run directly, as baselines.spu.engine runs it; each rank it prints a command for is started
    here from that command, verbatim (the way a person would on the party's host)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu", "HF_HUB_OFFLINE": "1", **spu_env()}
    proc = subprocess.Popen([str(python()), "-m", "baselines.spu.driver"], stdin=subprocess.PIPE, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=REPO)
    commands: list[str] = []
    remote: list[subprocess.Popen] = []

    def watch() -> None:
        with open(log, "w") as out:
            lines = iter(proc.stderr.readline, "")  # type: ignore[union-attr]
            for line in lines:
                out.write(line)
                if line.startswith("SPU rank "):
                    commands.append(next(lines).strip())
                    remote.append(subprocess.Popen(shlex.split(commands[-1]), cwd=REPO, env=env,
                                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    reader = threading.Thread(target=watch, daemon=True)
    reader.start()
    try:
        proc.stdin.write(json.dumps(request))  # type: ignore[union-attr]
        proc.stdin.close()  # type: ignore[union-attr]
        stdout = proc.stdout.read()  # type: ignore[union-attr]  # until the driver exits (the reader drains stderr)
        proc.wait(60)
        reader.join(30)
        assert proc.returncode == 0, log.read_text()[-3000:]
        assert all(p.wait(60) == 0 for p in remote)
    finally:
        for p in [proc, *remote]:
            if p.poll() is None:
                p.kill()
                p.wait()
    return json.loads(stdout), commands


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def per_run(result: SpuResult) -> list[tuple[int, int]]:
    """Per run: (send bytes, send actions) summed over the parties. Not per party: ABY3's split between parties
    changes from run to run even over in-memory threads (seen: 208504/208744/215656 bytes, then 208264/208600/216040,
    both 632904 in all), so the invariant a transport must keep is each run's total."""
    return [(sum(p["send_bytes"] for p in run.links), sum(p["send_actions"] for p in run.links)) for run in result.runs]


def toy(seq: int = 6) -> tuple[Any, torch.Tensor]:
    spec = toy_spec("bert")
    return spec.build(), spec.make_inputs(1, seq, 0)["input_ids"]


@needs_spu
@pytest.mark.slow  # ~15 s: run by `make test-multihost` (CI) to keep `make test` under its 15 min
@pytest.mark.multihost
@pytest.mark.timeout(300)
def test_brpc_processes_on_loopback_match_the_in_memory_threads(tmp_path: Path) -> None:
    """3-party ABY3 on a toy BERT: each party its own process on 127.0.0.1 reports the same bytes and send actions
    in all as the threads over in-memory links (SPU counts at yacl's link context, before brpc frames a message)."""
    net, ids = toy()
    common = {"protocol": "aby3", "approx": "puma", "n_runs": 2, "timeout_s": 240}
    mem = run_spu_forward(net, "bert", ids, workdir=tmp_path / "mem", **common)
    brpc = run_spu_forward(net, "bert", ids, workdir=tmp_path / "brpc", **common,
                           parties=PartiesConfig(hosts=["127.0.0.1"] * 3, local=[0, 1, 2]))
    assert (mem.link, brpc.link) == ("mem", "brpc")
    assert len(set(brpc.addresses)) == 3 and all(a.startswith("127.0.0.1:") for a in brpc.addresses)
    assert per_run(brpc) == per_run(mem), (per_run(brpc), per_run(mem))
    assert [r.bytes for r in brpc.runs] == [r.bytes for r in mem.runs] and brpc.runs[0].bytes > 0
    assert all(len(run.links) == 3 and all(p["send_bytes"] > 0 for p in run.links) for run in brpc.runs)
    # fresh random shares and PRG seeds in each mode: the outputs agree within SPU's fixed-point error
    assert (brpc.output - mem.output).abs().max() < 0.02
    assert (brpc.output - brpc.approx_plaintext).abs().max() < 0.02


@needs_spu
@pytest.mark.slow  # ~10 s: run by `make test-multihost` (CI) to keep `make test` under its 15 min
@pytest.mark.multihost
@pytest.mark.timeout(300)
def test_a_remote_rank_runs_from_the_printed_command_with_only_its_own_shares(tmp_path: Path) -> None:
    """2-party Cheetah, the server (rank 0) started from the command the driver prints: its job has its own share of
    every input and nothing else; only the device's job names a result file; the output comes back to the device."""
    net, ids = toy(seq=4)
    ckpt = tmp_path / "ckpt"
    net.save_pretrained(ckpt, safe_serialization=True)
    jobs = tmp_path / "jobs"
    res, commands = drive_with_remote_ranks(
        {"checkpoint": str(ckpt), "model_type": "bert", "output": "last_hidden_state", "input_ids": ids.tolist(),
         "protocol": "CHEETAH", "approx": "nimbus", "runs": 1, "timeout_s": 240, "link": "brpc",
         "local": [1], "addresses": [f"127.0.0.1:{free_port()}", "127.0.0.1"],  # a remote rank's port is given
         "job_dir": str(jobs)}, tmp_path / "driver.log")
    assert commands == [f".venv-spu/bin/python -m baselines.spu.party --job {jobs / 'rank0.job'}"]
    assert res["link"] == "brpc" and len(res["runs"][0]["links"]) == 2
    assert all(link["send_bytes"] > 0 for link in res["runs"][0]["links"])
    loaded = [pickle.loads((jobs / f"rank{r}.job").read_bytes()) for r in range(2)]  # files this test's driver wrote
    for rank, job in enumerate(loaded):
        assert job["rank"] == rank and (jobs / f"rank{rank}.job").stat().st_mode & 0o077 == 0
        assert (job["result"] is not None) == (rank == 1)  # only the device collects
    names = [[i["name"] for i in job["inputs"]] for job in loaded]
    assert names[0] == names[1] and len(names[0]) > 2  # one share per input: the device's and every weight
    for a, b in zip(loaded[0]["inputs"], loaded[1]["inputs"]):
        assert a["chunks"] != b["chunks"]  # each rank's own share, not a copy of the other's
    out = torch.tensor(res["output"])
    assert (out - torch.tensor(res["approx_plaintext"])).abs().max() < 0.05


def qdisc_sent(stats: str) -> int:
    return int(stats.split("Sent ")[1].split(" bytes")[0])


NETNS = netns.unavailable_reason() if HAS_SPU else "needs .venv-spu (make install)"


@pytest.mark.slow  # two driver runs and three namespaces: about a minute on the loaded 2-core host
@pytest.mark.multihost
@pytest.mark.timeout(600)
@pytest.mark.skipif(NETNS is not None, reason=f"SPU parties across namespaces: {NETNS}")
def test_brpc_processes_across_namespaces_behind_tbf_match_the_in_memory_threads(tmp_path: Path) -> None:
    """3-party ABY3, each party in its own namespace behind a 50 Mbit/s tbf: same bytes and send actions in all as
    in memory, and each party's limiter passed at least what SPU counted it sending (brpc's framing on top)."""
    before = subprocess.run(["tc", "qdisc", "show"], capture_output=True, text=True, check=True).stdout
    net, ids = toy()
    common = {"protocol": "aby3", "approx": "puma", "n_runs": 1, "timeout_s": 400}
    mem = run_spu_forward(net, "bert", ids, workdir=tmp_path / "mem", **common)
    names = ["p0", "p1", "p2"]
    with netns.Namespaces(names, rate_bps=5e7) as ns:
        parties = PartiesConfig(hosts=[f"{ns.address(p)}:{9530 + r}" for r, p in enumerate(names)], local=[0, 1, 2],
                                allow_network=True,  # addresses that exist only inside namespaces with no route out
                                netns={r: ns.parties[p].netns for r, p in enumerate(names)})
        placed = run_spu_forward(net, "bert", ids, workdir=tmp_path / "ns", **common, parties=parties)
        wire = [qdisc_sent(ns.qdiscs(p)) for p in names]
    assert per_run(placed) == per_run(mem), (per_run(placed), per_run(mem))
    assert (placed.output - mem.output).abs().max() < 0.02
    counted = [link["send_bytes"] for link in placed.runs[0].links]
    assert all(w >= c for w, c in zip(wire, counted)), (wire, counted)
    assert not [n for n in netns.list_namespaces() if n.startswith(f"{netns.PREFIX}{os.getpid()}x")]
    assert subprocess.run(["tc", "qdisc", "show"], capture_output=True, text=True, check=True).stdout == before
