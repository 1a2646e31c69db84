"""Parties in Linux network namespaces joined by rate-limited veth links: links measured, not only modelled.

`Namespaces(["device", "cloud"], rate_bps=100e6)` makes one namespace per party and a hub namespace with a
bridge; each party reaches the hub through a veth pair whose two ends carry a `tbf` rate limit (party egress
and hub egress towards the party), so every byte between two parties crosses two limiters at `rate_bps`.
Addresses (198.18.0.0/15, the benchmarking range) exist only inside those namespaces, which have no route
out: nothing in the root namespace changes (no interface, address, route or qdisc). Everything is removed
on exit, also when the body raises; `set_rate` changes every limiter in place (`tc qdisc replace`), so one
set of namespaces serves several rates; namespaces a crashed run left behind are found by their name prefix
and the creator's pid in it (`remove_leftovers`). Needs root and `ip`/`tc` (iproute2). `netem` (delay, loss)
is used only where the kernel has it (`netem_problem`); the `tc` commands are in docs/multi-host.md.
"""
from __future__ import annotations

import ctypes
import ipaddress
import logging
import os
import re
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from typing import Sequence

log = logging.getLogger(__name__)

PREFIX = "stipns"  # every namespace this module makes: stipns<pid>x<hex>-<party>
NAME = re.compile(rf"^{PREFIX}(\d+)x[0-9a-f]+-")
SUBNET = ipaddress.ip_network("198.18.0.0/24")  # RFC 2544 benchmarking range: routes nowhere
CLONE_NEWNET = 0x40000000  # linux/sched.h
PARTY_NAME = re.compile(r"^[a-z][a-z0-9]{0,7}$")


class NamespaceError(RuntimeError):
    """A namespace, link or qdisc could not be made; the message carries the failing command."""


def _run(*argv: str) -> str:
    """Run one iproute2 command; NamespaceError with its stderr when it fails."""
    proc = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise NamespaceError(f"`{' '.join(argv)}` failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def list_namespaces() -> list[str]:
    """Names of the network namespaces `ip netns` knows."""
    return [line.split()[0] for line in _run("ip", "netns", "list").splitlines() if line.strip()]


def unavailable_reason() -> str | None:
    """Why namespaces cannot be made here (not root, no iproute2, kernel refuses), or None when they can."""
    if os.geteuid() != 0:
        return f"network namespaces need root (euid {os.geteuid()})"
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        return f"iproute2 tools missing: {missing}"
    try:
        with Namespaces(["probe"], rate_bps=None):
            pass
    except NamespaceError as exc:
        return f"cannot make a namespace with a veth pair here: {exc}"
    return None


def qdisc_problem(kind: str, *args: str) -> str | None:
    """Why `tc qdisc add ... <kind> <args>` fails in a throwaway namespace (e.g. no sch_netem), or None."""
    with Namespaces(["probe"], rate_bps=None) as ns:
        try:
            _run("tc", "-n", ns.hub, "qdisc", "add", "dev", ns.parties["probe"].hub_iface, "root", kind, *args)
        except NamespaceError as exc:
            return str(exc)
    return None


def netem_problem() -> str | None:
    """Why delay cannot be added with netem here (the kernel lacks sch_netem on this host), or None."""
    return qdisc_problem("netem", "delay", "1ms")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_leftovers() -> list[str]:
    """Delete the namespaces of this module whose creating process is gone (a killed run); returns their names."""
    removed = []
    for name in list_namespaces():
        m = NAME.match(name)
        if m and not _alive(int(m.group(1))):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
            removed.append(name)
    if removed:
        log.warning("removed %d namespace(s) a previous run left behind: %s", len(removed), removed)
    return removed


def tbf_args(rate_bps: float) -> list[str]:
    """`tbf` arguments for a rate: burst at least one timer tick of traffic (rate / 250 Hz) and 64 KiB."""
    burst = max(64 * 1024, int(rate_bps / 8 / 250))
    return ["rate", f"{int(rate_bps)}bit", "burst", str(burst), "latency", "100ms"]


@dataclass(frozen=True)
class Party:
    """One party's namespace, its interface and address there, and the hub-side end of its veth pair."""

    name: str
    netns: str
    iface: str
    address: str
    hub_iface: str

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        """`argv` run inside this party's namespace (`ip netns exec`)."""
        return [*exec_prefix(self.netns), *argv]

    def enter(self) -> None:
        """Move the calling process (a forked party, before it opens any socket) into this namespace."""
        enter_netns(self.netns)


def exec_prefix(name: str) -> list[str]:
    """The argv prefix that runs a command inside network namespace `name` (iproute2 execs it there)."""
    return ["ip", "netns", "exec", name]


def enter_netns(name: str) -> None:
    """Move the calling process into network namespace `name` (`ip netns` names it under /run/netns)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into network namespace {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


class Namespaces:
    """One namespace per party plus a hub; veth + `tbf` at `rate_bps` on both ends (None: no limit); removed on exit."""

    def __init__(self, parties: Sequence[str], rate_bps: float | None, *, mtu: int = 1500) -> None:
        bad = [p for p in parties if not PARTY_NAME.match(p)]
        if bad or len(set(parties)) != len(parties) or not parties:
            raise ValueError(f"party names {list(parties)}: give distinct names of 1-8 lower-case letters/digits")
        if len(parties) > 200:
            raise ValueError(f"{len(parties)} parties: at most 200 fit the /24 of addresses")
        if rate_bps is not None and not rate_bps > 0:
            raise ValueError(f"rate_bps={rate_bps!r}: a positive bit rate, or None for no limit")
        self.names = list(parties)
        self.rate_bps = rate_bps
        self.mtu = mtu
        self.tag = f"{PREFIX}{os.getpid()}x{secrets.token_hex(3)}"
        self.hub = f"{self.tag}-hub"
        self.parties: dict[str, Party] = {}
        self.made: list[str] = []

    def address(self, party: str) -> str:
        """The address of `party` inside the namespaces."""
        return self.parties[party].address

    def __enter__(self) -> "Namespaces":
        remove_leftovers()
        try:
            self._make()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _netns(self, name: str) -> None:
        _run("ip", "netns", "add", name)
        self.made.append(name)
        _run("ip", "-n", name, "link", "set", "lo", "up")

    def _make(self) -> None:
        self._netns(self.hub)
        _run("ip", "-n", self.hub, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", self.hub, "link", "set", "br0", "up")
        hosts = SUBNET.hosts()
        for i, name in enumerate(self.names):
            ns = f"{self.tag}-{name}"
            self._netns(ns)
            party = Party(name, ns, "eth0", str(next(hosts)), f"h{i}")
            # both ends are made inside their namespaces: the root namespace never holds them
            _run("ip", "-n", ns, "link", "add", "eth0", "mtu", str(self.mtu), "type", "veth",
                 "peer", "name", party.hub_iface, "netns", self.hub)
            _run("ip", "-n", self.hub, "link", "set", party.hub_iface, "master", "br0")
            _run("ip", "-n", self.hub, "link", "set", party.hub_iface, "up")
            _run("ip", "-n", ns, "addr", "add", f"{party.address}/{SUBNET.prefixlen}", "dev", "eth0")
            _run("ip", "-n", ns, "link", "set", "eth0", "up")
            if self.rate_bps is not None:
                _run("tc", "-n", ns, "qdisc", "add", "dev", "eth0", "root", "tbf", *tbf_args(self.rate_bps))
                _run("tc", "-n", self.hub, "qdisc", "add", "dev", party.hub_iface, "root", "tbf",
                     *tbf_args(self.rate_bps))
            self.parties[name] = party

    def set_rate(self, rate_bps: float | None) -> None:
        """Change every limiter in place (`tc qdisc replace`; None: delete it) and flush the TCP metrics each
        namespace cached (ssthresh, cwnd per peer), so runs at the new rate start as in fresh namespaces."""
        if rate_bps is not None and not rate_bps > 0:
            raise ValueError(f"rate_bps={rate_bps!r}: a positive bit rate, or None for no limit")
        for party in self.parties.values():
            for ns, dev in ((party.netns, party.iface), (self.hub, party.hub_iface)):
                if rate_bps is not None:
                    _run("tc", "-n", ns, "qdisc", "replace", "dev", dev, "root", "tbf", *tbf_args(rate_bps))
                elif self.rate_bps is not None:
                    _run("tc", "-n", ns, "qdisc", "del", "dev", dev, "root")
            _run("ip", "-n", party.netns, "tcp_metrics", "flush", "all")
        _run("ip", "-n", self.hub, "tcp_metrics", "flush", "all")
        self.rate_bps = rate_bps

    def qdiscs(self, party: str) -> str:
        """`tc -s qdisc` of a party's interface (bytes and drops the limiter saw)."""
        return _run("tc", "-n", self.parties[party].netns, "-s", "qdisc", "show", "dev", "eth0")

    def close(self) -> None:
        """Delete every namespace made (their veth ends and qdiscs go with them); idempotent."""
        errors = []
        for name in reversed(self.made):
            proc = subprocess.run(["ip", "netns", "del", name], capture_output=True, text=True, check=False)
            if proc.returncode != 0 and name in list_namespaces():
                errors.append(f"{name}: {proc.stderr.strip()}")
        self.made.clear()
        if errors:
            raise NamespaceError(f"could not delete namespace(s): {errors}")
