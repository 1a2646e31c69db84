"""bench.netns_links: STIP with the device and a served cloud (TLS, token) in two namespaces behind tbf, 2PC CrypTen
with its two ranks and SPU's 3-party ABY3 with its three ranks in namespaces; measured rows beside modelled ones."""
from __future__ import annotations

import json
import os
import subprocess

import pandas as pd
import pytest

from bench import netns_links
from transport import netns

REASON = netns.unavailable_reason()


@pytest.mark.slow  # four `python -m bench` runs and a served cloud: minutes on the loaded 2-core host
@pytest.mark.multihost
@pytest.mark.skipif(REASON is not None, reason=f"no network namespaces here: {REASON}")
def test_stip_and_a_crypten_pair_measured_through_a_rate_limited_link(tmp_path):
    before = subprocess.run(["tc", "qdisc", "show"], capture_output=True, text=True, check=True).stdout
    out = netns_links.main([f"results_dir={tmp_path / 'results'}", f"runs_dir={tmp_path / 'runs'}",
                            "models=[bert-tiny]", "rates=[2e7]", "protocols=[stip,mpc]", "seq_len=8",
                            "repeats=1", "warmup=1"])
    rows = pd.read_csv(out / "rows.csv")
    assert set(rows.protocol) == {"stip", "mpc"} and set(rows.source) == {"socket", "modelled"}
    tab = pd.read_csv(out / "links_table.csv").set_index(["protocol", "link"])
    for protocol in ("stip", "mpc"):
        unlimited, limited = tab.loc[(protocol, "unlimited")], tab.loc[(protocol, "20mbit")]
        assert limited["bytes"] == pytest.approx(unlimited["bytes"], rel=0.01)  # the same work on either link
    mpc = tab.loc[("mpc", "20mbit")]
    # 2PC moves megabytes: at 20 Mbit/s the link dominates, and the tbf caps what it delivers
    assert mpc["measured_s"] > 2 * tab.loc[("mpc", "unlimited")]["measured_s"]
    assert 0.5 * 20 < mpc["delivered_mbit"] <= 20 * 1.05
    assert not [n for n in netns.list_namespaces() if n.startswith(f"{netns.PREFIX}{os.getpid()}x")]
    assert subprocess.run(["tc", "qdisc", "show"], capture_output=True, text=True, check=True).stdout == before


def engine_rows(compute: list[float], n_bytes: float, rounds: float) -> pd.DataFrame:
    """An MPC run's rows as the runner writes them (source engine), one per repeat."""
    out = []
    for r, seconds in enumerate(compute):
        out += [{"phase": "compute", "metric": "latency", "source": "engine", "repeat": r, "value": seconds},
                {"phase": "total", "metric": "bytes", "source": "engine", "repeat": r, "value": n_bytes},
                {"phase": "total", "metric": "rounds", "source": "engine", "repeat": r, "value": rounds}]
    return pd.DataFrame(out)


def test_spu_modelled_is_unlimited_compute_plus_the_busiest_partys_sends_over_the_rate():
    """SPU rows: measured = the slowest party's wall time; modelled = the unlimited run's median compute + the most
    one party sent / rate (RTT 0), not bytes / parties; the table carries it through like the other protocols."""
    unlimited = engine_rows([1.0, 1.2, 5.0], 3e6, 400)
    limited = engine_rows([2.5, 2.7, 2.6], 3e6, 400)
    busiest = pd.Series([1.1e6, 1.2e6, 1.0e6])
    got = pd.DataFrame(netns_links.link_rows("spu", limited, 8e6, unlimited, busiest))
    modelled = got[got.source == "modelled"].set_index("repeat")
    # median compute 1.2 s + 8 x 1.1 MB / 8 Mbit/s = 1.1 s
    assert modelled.latency_s.tolist() == pytest.approx([1.2 + 1.1, 1.2 + 1.2, 1.2 + 1.0])
    assert modelled.link_bytes.tolist() == [1.1e6, 1.2e6, 1.0e6] and set(got.bytes) == {3e6}
    assert got[got.source == "socket"].latency_s.tolist() == [2.5, 2.7, 2.6]
    base = pd.DataFrame(netns_links.link_rows("spu", unlimited, None, None, busiest))
    assert (base[base.source == "modelled"].latency_s.to_numpy() == [1.0, 1.2, 5.0]).all()  # no limit: its own
    with pytest.raises(ValueError, match="busiest party"):
        list(netns_links.link_rows("spu", limited, 8e6, unlimited, None))
    wide = netns_links.table(pd.concat([base, got]).assign(model="bert-tiny"))
    row = wide.set_index("link").loc["8mbit"]
    assert row.measured_s == 2.6 and row.modelled_s == pytest.approx(2.3) and row.link_bytes == 1.1e6
    assert row.measured_over_modelled == pytest.approx(2.6 / 2.3)
    assert row.delivered_mbit == pytest.approx(8 * 1.1e6 / (2.6 - 1.2) / 1e6)  # over the unlimited median
    mpc = pd.concat([pd.DataFrame(netns_links.link_rows("mpc", unlimited, None, None)),
                     pd.DataFrame(netns_links.link_rows("mpc", limited, 8e6, unlimited))]).assign(model="bert-tiny")
    assert list(netns_links.table(mpc).columns) == list(wide.columns)  # the same schema as CrypTen's rows
    assert netns_links.table(mpc).set_index("link").loc["8mbit"].link_bytes == 1.5e6  # CrypTen: bytes / 2


def test_busiest_sends_reads_the_measured_runs_of_the_spu_profile(tmp_path):
    """spu_profile.json beside the rows: per measured run (warm-up dropped) the largest party's send_bytes."""
    run_dir = tmp_path / "exp" / "abc123"
    run_dir.mkdir(parents=True)
    links = [[10, 30, 20], [5, 6, 7], [9, 1, 1]]
    (run_dir / "spu_profile.json").write_text(json.dumps(
        {"runs": [{"links": [{"send_bytes": b, "send_actions": 1} for b in run]} for run in links]}))
    assert netns_links.busiest_sends(tmp_path, warmup=1).tolist() == [7.0, 9.0]


def test_spu_run_places_three_ranks_in_their_namespaces(monkeypatch, tmp_path):
    """The SPU arm asks the runner for protocol=mpc engine=spu ABY3, one host:port and one namespace per rank, the
    device (rank 1) in the device's namespace, all three started locally."""
    seen = []
    monkeypatch.setattr(netns_links, "bench_run", lambda overrides, prefix=None, timeout_s=0: seen.append(overrides))
    monkeypatch.setattr(netns_links, "rows_of", lambda root: pd.DataFrame())

    class Fake:
        parties = {n: netns.Party(n, f"ns-{n}", "eth0", f"198.18.0.{i + 1}", f"h{i}")
                   for i, n in enumerate(netns_links.RANKS)}

    netns_links.run_spu(netns_links.LinksCfg(), Fake(), "bert-tiny", tmp_path, 9600)  # type: ignore[arg-type]
    (argv,) = seen
    assert {"protocol=mpc", "protocol.engine=spu", "protocol.mpc_protocol=aby3", "network=none",
            "parties.local=[0,1,2]", "parties.allow_network=true"} <= set(argv)
    assert "parties.hosts=[198.18.0.1:9600,198.18.0.2:9601,198.18.0.3:9602]" in argv
    assert "parties.netns={0:ns-server,1:ns-device,2:ns-helper}" in argv
    with pytest.raises(ValueError, match="choose from"):
        netns_links.run(netns_links.LinksCfg(protocols=["cheetah"]))


HAS_SPU = (netns_links.REPO / ".venv-spu" / "bin" / "python").exists() or bool(os.environ.get("SPU_VENV"))


@pytest.mark.slow  # three SPU party processes per run, two runs, 27 s on the 2 Mbit/s link: about 2 min loaded
@pytest.mark.skipif(not HAS_SPU, reason="needs .venv-spu (make install)")
@pytest.mark.skipif(REASON is not None, reason=f"no network namespaces here: {REASON}")
def test_spu_aby3_parties_measured_through_a_rate_limited_link(tmp_path):
    """SPU's three ABY3 ranks, each in its namespace, unlimited then 2 Mbit/s set in place: the same bytes on both
    links, the busiest party's share on the critical path, and the limiter's floor on the measured time;
    nothing left behind."""
    before = subprocess.run(["tc", "qdisc", "show"], capture_output=True, text=True, check=True).stdout
    out = netns_links.main([f"results_dir={tmp_path / 'results'}", f"runs_dir={tmp_path / 'runs'}",
                            "models=[bert-tiny]", "rates=[2e6]", "protocols=[spu]", "seq_len=8",
                            "repeats=1", "warmup=1"])
    rows = pd.read_csv(out / "rows.csv")
    assert set(rows.protocol) == {"spu"} and set(rows.source) == {"socket", "modelled"} and len(rows) == 4
    tab = pd.read_csv(out / "links_table.csv").set_index("link")
    unlimited, limited = tab.loc["unlimited"], tab.loc["2mbit"]
    assert limited["bytes"] == unlimited["bytes"] > 0  # ABY3's total sends are the same every run
    assert limited["bytes"] / 3 <= limited["link_bytes"] < limited["bytes"] / 2  # the busiest of three parties
    assert unlimited["measured_over_modelled"] == 1.0  # no limit: modelled is the run's own compute
    # the busiest party's ~3.4 MB cannot leave its namespace faster than its limiter: 13.5 s at 2 Mbit/s, far above
    # an unlimited forward (2-7 s on the loaded host); compute noise of one repeat makes a tighter bound flaky
    link_floor = 8 * limited["link_bytes"] / 2e6
    assert limited["measured_s"] >= link_floor > unlimited["measured_s"]
    assert limited["modelled_s"] == pytest.approx(unlimited["measured_s"] + link_floor)
    assert 0.5 < limited["measured_over_modelled"] < 3
    assert not [n for n in netns.list_namespaces() if n.startswith(f"{netns.PREFIX}{os.getpid()}x")]
    assert subprocess.run(["tc", "qdisc", "show"], capture_output=True, text=True, check=True).stdout == before
