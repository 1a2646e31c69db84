"""transport.netns: namespaces joined by tbf-limited veth links, removed afterwards, nothing left in the root
namespace."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

from transport import netns

REASON = netns.unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"no network namespaces here: {REASON}")

SERVER = """
import socket, sys, time
s = socket.socket(); s.bind((sys.argv[1], 5001)); s.listen(1); print('ready', flush=True)
c, _ = s.accept(); n = 0; t0 = None
while True:
    b = c.recv(1 << 20)
    if not b: break
    t0 = t0 or time.perf_counter(); n += len(b)
print(n, time.perf_counter() - t0, flush=True)
"""
CLIENT = """
import socket, sys
s = socket.create_connection((sys.argv[1], 5001)); s.sendall(b'x' * int(sys.argv[2])); s.close()
"""


def root_state() -> tuple[str, str]:
    """The root namespace's interfaces and qdiscs: a test must leave both as they were."""
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    qdiscs = subprocess.run(["tc", "qdisc", "show"], capture_output=True, text=True, check=True).stdout
    return "\n".join(sorted(line.split(":")[1] for line in links.splitlines())), qdiscs


def transfer(ns: netns.Namespaces, n_bytes: int) -> tuple[int, float]:
    """Bytes received in the cloud namespace from the device namespace, and the receiver's seconds."""
    cloud, device = ns.parties["cloud"], ns.parties["device"]
    server = subprocess.Popen(cloud.exec_argv([sys.executable, "-c", SERVER, cloud.address]),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "ready"
        subprocess.run(device.exec_argv([sys.executable, "-c", CLIENT, cloud.address, str(n_bytes)]),
                       check=True, timeout=60)
        got, seconds = server.stdout.readline().split()
        return int(got), float(seconds)
    finally:
        server.kill()
        server.wait()


def test_rate_limited_link_is_measured_and_everything_is_removed():
    before = root_state()
    rate = 40e6
    with netns.Namespaces(["device", "cloud"], rate_bps=rate) as ns:
        names = set(netns.list_namespaces())
        assert {ns.hub, ns.parties["device"].netns, ns.parties["cloud"].netns} <= names
        assert root_state() == before  # the veths and qdiscs live inside the namespaces only
        n_bytes = 4_000_000
        got, seconds = transfer(ns, n_bytes)
        assert got == n_bytes
        expected = 8 * n_bytes / rate  # 0.8 s at 40 Mbit/s
        assert 0.8 * expected < seconds < 3.0 * expected, (seconds, expected)
        assert "tbf" in ns.qdiscs("device")
        route = subprocess.run(ns.parties["device"].exec_argv(["ip", "route", "get", "1.1.1.1"]),
                               capture_output=True, text=True)
        assert route.returncode != 0, route.stdout  # no route out of the namespaces
    assert not names & set(netns.list_namespaces())
    assert root_state() == before


def hub_qdiscs(ns: netns.Namespaces) -> str:
    return subprocess.run(["tc", "-n", ns.hub, "qdisc", "show"], capture_output=True, text=True, check=True).stdout


def test_set_rate_replaces_every_limiter_in_place():
    """One set of namespaces, three rates: the tbf on both ends of every veth is replaced (not stacked), a transfer
    runs at the new rate, and None removes the limiters; the root namespace never changes."""
    before = root_state()
    with netns.Namespaces(["device", "cloud"], rate_bps=20e6) as ns:
        made = list(ns.made)
        ns.set_rate(80e6)
        for party in ("device", "cloud"):
            shown = ns.qdiscs(party)
            assert shown.count("qdisc tbf") == 1 and "rate 80Mbit" in shown and "20Mbit" not in shown, shown
        assert hub_qdiscs(ns).count("qdisc tbf") == 2 and "20Mbit" not in hub_qdiscs(ns)
        got, seconds = transfer(ns, 4_000_000)
        expected = 8 * 4_000_000 / 80e6  # 0.4 s; at the first 20 Mbit/s it would take 1.6 s
        assert got == 4_000_000 and 0.8 * expected < seconds < 2.5 * expected, (seconds, expected)
        ns.set_rate(None)
        assert "tbf" not in ns.qdiscs("device") and "tbf" not in hub_qdiscs(ns)
        ns.set_rate(20e6)
        assert "rate 20Mbit" in ns.qdiscs("cloud") and hub_qdiscs(ns).count("qdisc tbf") == 2
        assert ns.made == made and root_state() == before
        with pytest.raises(ValueError, match="positive bit rate"):
            ns.set_rate(0)
    assert root_state() == before


def test_removed_when_the_body_fails():
    before = set(netns.list_namespaces())
    with pytest.raises(RuntimeError, match="boom"):
        with netns.Namespaces(["a", "b", "c"], rate_bps=10e6):
            raise RuntimeError("boom")
    assert set(netns.list_namespaces()) == before


def test_leftovers_of_a_dead_process_are_removed():
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    time.sleep(0.1)
    name = f"{netns.PREFIX}{dead}xabc-left"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        assert name in netns.remove_leftovers()
        assert name not in netns.list_namespaces()
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def test_bad_party_names_are_refused():
    with pytest.raises(ValueError, match="distinct names"):
        netns.Namespaces(["Device!"], rate_bps=None)
    with pytest.raises(ValueError, match="rate_bps"):
        netns.Namespaces(["a"], rate_bps=0)


def test_netem_delay_where_the_kernel_has_it():
    problem = netns.netem_problem()
    if problem is not None:
        pytest.skip(f"no netem on this kernel (delay cannot be added; docs/multi-host.md has the tc commands): "
                    f"{problem}")
    with netns.Namespaces(["a", "b"], rate_bps=None) as ns:
        a, b = ns.parties["a"], ns.parties["b"]
        subprocess.run(["tc", "-n", a.netns, "qdisc", "add", "dev", a.iface, "root", "netem", "delay", "20ms"],
                       check=True)
        out = subprocess.run(a.exec_argv(["ping", "-c", "3", "-q", b.address]), capture_output=True, text=True)
        assert out.returncode == 0 and "rtt" in out.stdout
