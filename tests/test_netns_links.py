"""bench.netns_links: STIP with the device and a served cloud (TLS, token) in two namespaces behind tbf, and
2PC CrypTen with its two ranks in two namespaces; measured rows beside modelled ones at the same rate."""
from __future__ import annotations

import os
import subprocess

import pandas as pd
import pytest

from bench import netns_links
from transport import netns

REASON = netns.unavailable_reason()


@pytest.mark.slow  # four `python -m bench` runs and a served cloud: minutes on the loaded 2-core host
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
