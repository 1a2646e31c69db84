"""CrypTen parties placed by config (baselines.mpc.hosts): exposure refused unless asked for, and a remote rank
started from the printed command gives the single-host run's output, bytes and rounds to the byte."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import BertConfig, BertModel

from baselines.mpc import hosts
from baselines.mpc.forward import extract_weights
from baselines.mpc.session import Job, run_mpc_forward
from bench.validate import parties_problems
from transport import netns

REPO = Path(__file__).resolve().parents[1]


def cfg(**kw):
    base = {"rendezvous": "file:///tmp/x", "hosts": ["127.0.0.1", "127.0.0.1"], "local": None,
            "allow_network": False, "netns": None}
    return SimpleNamespace(**{**base, **kw})


def test_exposure_is_refused_unless_the_flag_asks_for_it():
    with pytest.raises(hosts.HostsConfigError, match="parties.allow_network=true"):
        hosts.placement(cfg(hosts=["198.18.0.1", "127.0.0.1"]), 2, "TFP")
    with pytest.raises(hosts.HostsConfigError, match="TCPStore listens on every interface.*allow_network=true"):
        hosts.placement(cfg(rendezvous="tcp://127.0.0.1:29511"), 2, "TFP")
    place = hosts.placement(cfg(rendezvous="tcp://198.18.0.1:29511", hosts=["198.18.0.1:1", "198.18.0.2"],
                                allow_network=True), 2, "TFP")
    assert place.hosts == ("198.18.0.1", "198.18.0.2") and place.local == (1,) and place.remote == (0,)


@pytest.mark.parametrize("bad, match", [
    ({"rendezvous": "env://"}, "tcp://HOST:PORT"),
    ({"hosts": ["127.0.0.1"]}, "needs 2"),
    ({"local": [0]}, "including the device"),
    ({"rendezvous": "tcp://127.0.0.2:1", "allow_network": True}, "tcp://127.0.0.1:PORT"),
])
def test_bad_placements_name_the_value(bad, match):
    with pytest.raises(hosts.HostsConfigError, match=match):
        hosts.placement(cfg(**bad), 2, "TFP")


def test_a_remote_rank_gets_only_its_own_data():
    torch.manual_seed(0)
    model = BertModel(BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                                 vocab_size=50)).eval()
    ids = torch.tensor([[3, 4, 5]])
    job = Job(extract_weights(model), ids, torch.ones_like(ids), None, "mpc", "TFP", 1)  # type: ignore[arg-type]
    server, device, ttp = job.for_rank(0), job.for_rank(1), job.for_rank(2)
    assert not server.input_ids.any() and torch.equal(device.input_ids, ids) and not ttp.input_ids.any()
    assert all(not t.any() for t in device.weights.tensors.values())
    assert all(not t.any() for t in ttp.weights.tensors.values())
    assert all(torch.equal(a, b) for a, b in zip(server.weights.tensors.values(), job.weights.tensors.values()))


def test_remote_rank_from_the_printed_command_matches_the_single_host_run_to_the_byte(tmp_path, capfd):
    torch.manual_seed(0)
    model = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                 vocab_size=100)).eval()
    ids = torch.randint(0, 100, (1, 6), generator=torch.Generator().manual_seed(0))
    local = run_mpc_forward(model, ids, approx="puma", timeout_s=120, seed=0)
    place = hosts.placement(cfg(rendezvous=f"file://{tmp_path / 'rdv'}"), 2, "TFP")
    started = []

    def launch(rank: int, argv: list[str]) -> subprocess.Popen:
        started.append(argv)
        return subprocess.Popen(argv, cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin",
                                                     "HF_HUB_OFFLINE": "1"})

    placed = run_mpc_forward(model, ids, approx="puma", timeout_s=120, seed=0, place=place, launch=launch)
    assert started and started[0][1:4] == ["-m", "baselines.mpc.hosts", "--job"]
    assert "python -m baselines.mpc.hosts --job" in capfd.readouterr().err.replace(sys.executable, "python")
    assert torch.equal(placed.output, local.output)
    for a, b in zip(local.runs, placed.runs):
        assert a.phases.keys() == b.phases.keys()
        for name in a.phases:
            for metric in ("rounds", "bytes", "bytes_party0", "bytes_party1"):
                assert a.phases[name][metric] == b.phases[name][metric], (name, metric)
        assert a.weight_open_bytes == b.weight_open_bytes
    assert placed.setup["bytes"] == local.setup["bytes"]


NETNS = netns.unavailable_reason()


@pytest.mark.slow  # 50 s on the loaded 2-core host (two runs of two CrypTen parties)
@pytest.mark.multihost
@pytest.mark.skipif(NETNS is not None, reason=f"no network namespaces here: {NETNS}")
def test_a_crypten_pair_across_namespaces_gives_the_loopback_bytes_and_rounds(tmp_path, capfd):
    """Rank 1 forked into the device namespace, rank 0 started by its printed command in the server namespace
    (`ip netns exec`), meeting over a tcp:// rendezvous through a 200 Mbit/s tbf link."""
    torch.manual_seed(0)
    model = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                 vocab_size=100)).eval()
    ids = torch.randint(0, 100, (1, 6), generator=torch.Generator().manual_seed(0))
    local = run_mpc_forward(model, ids, approx="puma", timeout_s=120, seed=0)
    before = subprocess.run(["tc", "qdisc", "show"], capture_output=True, text=True, check=True).stdout
    with netns.Namespaces(["server", "device"], rate_bps=200e6) as ns:
        server, device = ns.parties["server"], ns.parties["device"]
        place = hosts.placement(cfg(rendezvous=f"tcp://{server.address}:29500", hosts=[server.address,
                                    device.address], allow_network=True, netns={1: device.netns}), 2, "TFP")

        def launch(rank: int, argv: list[str]) -> subprocess.Popen:
            return subprocess.Popen(ns.parties["server"].exec_argv(argv), cwd=REPO,
                                    env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})

        placed = run_mpc_forward(model, ids, approx="puma", timeout_s=120, seed=0, place=place, launch=launch)
        sent = ns.qdiscs("device")
    assert torch.equal(placed.output, local.output)
    total, ref = placed.runs[0].phases["total"], local.runs[0].phases["total"]
    assert (total["bytes"], total["rounds"]) == (ref["bytes"], ref["rounds"])
    sent_bytes = int(sent.split("Sent ")[1].split(" bytes")[0])  # what the device's tbf passed, headers included
    assert sent_bytes >= ref["bytes_party1"] / 2 * 0.9  # CrypTen counts sent + received at each party
    assert subprocess.run(["tc", "qdisc", "show"], capture_output=True, text=True, check=True).stdout == before


def test_parties_with_another_protocol_are_refused_by_name():
    assert parties_problems({"rendezvous": None}, {"name": "stip"}) == []
    assert parties_problems({"rendezvous": "file:///x"}, {"name": "mpc", "engine": "crypten"}) == []
    (problem,) = parties_problems({"rendezvous": "file:///x"}, {"name": "stip"})
    assert "protocol=mpc" in problem and "cloud.address" in problem
    (problem,) = parties_problems({"rendezvous": "file:///x"}, {"name": "mpc", "engine": "spu"})
    assert "engine='spu'" in problem
