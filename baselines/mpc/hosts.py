"""CrypTen parties on other hosts (or network namespaces) by config: where each rank runs, and how a remote one starts.

The runner is the device (rank 1): it starts its local ranks, writes each remote rank a job file holding only
what that rank owns (the server: the weights and zeros for the input; a TTP: neither) and prints the exact
command that starts it there. Parties meet through torch.distributed rendezvous (CrypTen reads RENDEZVOUS,
WORLD_SIZE, RANK; Gloo carries the traffic on the interface of each party's configured address). After the
run every other rank sends its counters (never an output: only the device gets one) to the device over the
same Gloo link, after the counted traffic. CrypTen and Gloo have no TLS and no authentication, and torch's
TCPStore (a tcp:// rendezvous) listens on every interface of rank 0's host: anything but loopback and a
file:// rendezvous is refused unless `parties.allow_network=true` (docs/multi-host.md, security notes).

    python -m baselines.mpc.hosts --job rank0.pt     # what the runner prints for a remote rank
"""
from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import shlex
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import psutil

from transport.auth import is_loopback

log = logging.getLogger(__name__)
SERVER, DEVICE = 0, 1
FLAG = "parties.allow_network=true"
SCHEMES = ("tcp://", "file://")


class HostsConfigError(ValueError):
    """A placement of parties that cannot work or would expose them without being asked to."""


@dataclass(frozen=True)
class Placement:
    """Where each rank runs: the rendezvous, one address per rank, the ranks this runner starts."""

    rendezvous: str
    hosts: tuple[str, ...]
    local: tuple[int, ...]
    netns: Mapping[int, str] = field(default_factory=dict)  # rank -> namespace a local party enters first

    @property
    def master_addr(self) -> str:
        return self.hosts[SERVER]

    @property
    def remote(self) -> tuple[int, ...]:
        return tuple(r for r in range(len(self.hosts)) if r not in self.local)


def _host(value: Any, rank: int) -> str:
    """An address of parties.hosts; a port is dropped (Gloo picks its own ports on that address)."""
    text = str(value).strip()
    if text.count(":") == 1:  # host:port (IPv4 or a name); IPv6 addresses have more colons
        text = text.split(":")[0]
    text = text.strip("[]")
    if not text:
        raise HostsConfigError(f"parties.hosts[{rank}]={value!r}: give the address of rank {rank}'s machine, "
                               "e.g. 10.0.0.2")
    return text


def placement(cfg: Any, world_size: int, provider: str) -> Placement:
    """Check a PartiesConfig (protocols.contract) for `world_size` parties (+1 TTP) and return the placement."""
    n = world_size + (1 if provider == "TTP" else 0)
    rdv = str(cfg.rendezvous or "")
    if not rdv.startswith(SCHEMES):
        raise HostsConfigError(f"parties.rendezvous={cfg.rendezvous!r}: give tcp://HOST:PORT (rank 0's address and a "
                               "free port) or file:///path (a file all parties can open)")
    hosts = list(cfg.hosts or [])
    if len(hosts) != n:
        raise HostsConfigError(f"parties.hosts has {len(hosts)} address(es); provider {provider} needs {n}: "
                               "[server (rank 0), device (rank 1)" + (", TTP (rank 2)]" if n == 3 else "]"))
    hosts = [_host(h, r) for r, h in enumerate(hosts)]
    local = tuple(sorted({int(r) for r in (cfg.local if cfg.local is not None else [DEVICE])}))
    if DEVICE not in local or any(not 0 <= r < n for r in local):
        raise HostsConfigError(f"parties.local={list(local)}: ranks of 0..{n - 1} that this runner starts, including "
                               f"the device ({DEVICE}): only the device may receive the output")
    if rdv.startswith("tcp://"):
        where = rdv[len("tcp://"):]
        host, _, port = where.rpartition(":")
        if not port.isdigit() or _host(host, SERVER) != hosts[SERVER]:
            raise HostsConfigError(f"parties.rendezvous={rdv!r}: tcp://{hosts[SERVER]}:PORT (rank 0 hosts "
                                   "torch's TCPStore)")
    exposed = [h for h in hosts if not _loopback(h)]
    if (exposed or rdv.startswith("tcp://")) and not cfg.allow_network:
        why = (f"non-loopback address(es) {exposed}" if exposed else
               "a tcp:// rendezvous (torch's TCPStore listens on every interface of rank 0's host)")
        raise HostsConfigError(f"{why}: CrypTen and Gloo have neither TLS nor authentication, so this is refused "
                               f"unless asked for: set {FLAG} (on a network you trust; docs/multi-host.md), or use "
                               "127.0.0.1 and a file:// rendezvous")
    netns = {int(k): str(v) for k, v in (cfg.netns or {}).items()}
    return Placement(rdv, tuple(hosts), local, netns)


def _loopback(host: str) -> bool:
    try:
        return is_loopback(host)
    except socket.gaierror as exc:
        raise HostsConfigError(f"cannot resolve parties host {host!r}: {exc}") from exc


def interface_of(host: str) -> str:
    """The network interface of this machine (or namespace) holding `host`'s address: where Gloo must bind."""
    addrs = {info[4][0] for info in socket.getaddrinfo(host, None)}
    for name, entries in psutil.net_if_addrs().items():
        if any(e.address.split("%")[0] in addrs for e in entries):
            return name
    if any(ipaddress.ip_address(a).is_loopback for a in addrs):
        raise HostsConfigError(f"no interface holds loopback address {host!r} here")
    raise HostsConfigError(f"no interface here holds {host!r} ({sorted(addrs)}): parties.hosts[r] must be an "
                           "address of the machine (or namespace) that runs rank r")


def party_env(place: Placement, rank: int, world_size: int) -> dict[str, str]:
    """The environment CrypTen's init reads at `rank` (torch.distributed rendezvous) and Gloo's interface."""
    return {"RANK": str(rank), "WORLD_SIZE": str(world_size), "RENDEZVOUS": place.rendezvous,
            "DISTRIBUTED_BACKEND": "gloo", "MASTER_ADDR": place.master_addr,
            "GLOO_SOCKET_IFNAME": interface_of(place.hosts[rank])}


def remote_command(job_file: Path, repo: Path | None = None) -> list[str]:
    """The command that starts a remote rank from its job file (run in a checkout of the same commit)."""
    return [sys.executable if repo is None else "python", "-m", "baselines.mpc.hosts", "--job", str(job_file)]


def describe(rank: int, host: str, argv: list[str], job_file: Path) -> str:
    """What the runner prints for a remote rank: where, which file to copy, the exact command."""
    return (f"MPC rank {rank} runs on {host}: copy {job_file} there (it holds only rank {rank}'s own data) and run, "
            f"in a checkout of this repository at the same commit:\n    {shlex.join(argv)}")


def main(argv: list[str] | None = None) -> int:
    """Run one remote rank from the job file the runner wrote (torch.load: only load files you made)."""
    parser = argparse.ArgumentParser(prog="python -m baselines.mpc.hosts", description=__doc__.splitlines()[0])
    parser.add_argument("--job", required=True, help="the rank's job file the runner wrote")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    import torch  # noqa: PLC0415

    from baselines.mpc.launcher import run_remote_rank  # noqa: PLC0415  (the launcher imports this module)

    job = torch.load(args.job, weights_only=False)
    os.environ.setdefault("OMP_NUM_THREADS", str(job.get("threads") or 1))
    return run_remote_rank(job)


if __name__ == "__main__":
    raise SystemExit(main())
