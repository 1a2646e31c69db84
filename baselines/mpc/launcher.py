"""Start the MPC parties as processes with a fresh rendezvous, a time limit, and cleanup that always runs.

Each run gets its own `file://` rendezvous in a new temporary directory (parallel runs never meet), each
party is forked (it inherits the model and the party function: transport/processes.py says why) into its
own process group (so a kill reaches anything it started), and the parent kills
and reaps every party on success, on a party's exception, and on timeout. Parties hand back plain
Python/numpy values only (torch tensors do not travel well through multiprocessing queues).

No party outlives the runner, however it ends: each party runs transport.processes.die_with_parent
(kernel SIGTERM on the parent's death on Linux, a watchdog on the parent's pid everywhere), either of
which removes the rendezvous folder and kills the party's group; a
SIGTERM to the runner kills and reaps the parties before the runner dies. Gloo is bound to the
loopback interface: local parties never listen on a LAN address. A placement (baselines/mpc/hosts.py,
`parties.*`) instead starts only the local ranks, each bound to its configured address (in its namespace if
it has one), and prints the command of every remote rank; the device then reports every rank's counters.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue as queue_mod
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import psutil

from baselines.mpc.compat import import_crypten
from baselines.mpc.hosts import DEVICE, Placement, describe, party_env, remote_command
from transport.netns import enter_netns
from transport.processes import die_with_parent, signal_tree
from transport.threads import apply_threads, inherited_threads

log = logging.getLogger(__name__)
PROVIDERS = ("TFP", "TTP")
# crypten.cfg.mpc.provider -> protocols.vocabulary.SECURITY: TFP is rank 0 (the server) dealing the Beaver triples.
PROVIDER_SECURITY = {"TFP": "2pc-dealer-is-server", "TTP": "2pc-dealer-third-party"}
PartyFn = Callable[[int, Any, Any], Any]  # (rank, crypten module, payload) -> plain result
RENDEZVOUS_PREFIX = "mpc-rdv-"


class MpcRunError(RuntimeError):
    """A party failed; the message carries its traceback."""


class MpcTimeout(MpcRunError):
    """The run did not finish within its time limit; every party was killed."""


def loopback_interface() -> str:
    """Name of the network interface holding 127.0.0.1 ("lo" on Linux, "lo0" on macOS)."""
    for name, addrs in psutil.net_if_addrs().items():
        if any(a.address == "127.0.0.1" for a in addrs):
            return name
    raise RuntimeError("no network interface holds 127.0.0.1; local MPC parties need a loopback interface")


def configure_provider(crypten: Any, provider: str) -> None:
    """Set CrypTen's provider of correlated randomness as every party process does before crypten.init()."""
    if provider not in PROVIDERS:
        raise ValueError(f"unknown provider {provider!r}; choices: {list(PROVIDERS)}")
    crypten.cfg.mpc.provider = provider


def provider_security(crypten: Any) -> str:
    """The SECURITY label of the provider CrypTen is configured with (read from crypten.cfg, not from our config)."""
    provider = str(crypten.cfg.mpc.provider)
    if provider not in PROVIDER_SECURITY:
        raise ValueError(f"crypten.cfg.mpc.provider={provider!r} has no security label; "
                         f"known: {sorted(PROVIDER_SECURITY)}")
    return PROVIDER_SECURITY[provider]


def configured_security(provider: str) -> str:
    """The label the parties will read for `provider`: configured as they do, in a temporary override of crypten.cfg."""
    crypten = import_crypten()
    with crypten.cfg.temp_override({"mpc.provider": str(crypten.cfg.mpc.provider)}):
        configure_provider(crypten, provider)
        return provider_security(crypten)


def _party_main(fn: PartyFn, rank: int, world_size: int, rendezvous: str, provider: str,
                payload: Any, results: Any, threads: int, seed: int | None, parent_pid: int = 0,
                tmpdir: str = "", place: Placement | None = None) -> None:
    """Body of one party process: own process group, CrypTen init from the environment, run, report.

    With a `place` (parties on other hosts) the party first enters its namespace if it has one, and the
    device (rank 1) reports every rank's result, which the others send it after the run (_collect)."""
    try:
        os.setpgid(0, 0)
    except PermissionError:  # a session leader (started with setsid) already leads its own group
        pass
    if parent_pid:
        die_with_parent(parent_pid, lambda: shutil.rmtree(tmpdir, ignore_errors=True))
    if place is not None and rank in place.netns:
        enter_netns(place.netns[rank])
    os.environ.update(party_env(place, rank, world_size) if place is not None else
                      {"RANK": str(rank), "WORLD_SIZE": str(world_size), "RENDEZVOUS": rendezvous,
                       "DISTRIBUTED_BACKEND": "gloo", "MASTER_ADDR": "127.0.0.1",
                       "GLOO_SOCKET_IFNAME": loopback_interface()})
    try:
        import torch  # noqa: PLC0415

        apply_threads(threads)  # intra-op, inter-op (where the forked pool allows) and the OMP/MKL/BLAS env
        if seed is not None:  # CrypTen draws its share seeds from torch's global generator at init
            torch.manual_seed(seed * 1009 + rank)
        crypten = import_crypten()
        configure_provider(crypten, provider)
        crypten.cfg.communicator.verbose = True
        if rank == world_size:  # the trusted third party serves until rank 0 shuts it down
            from crypten.mpc.provider.ttp_provider import TTPServer  # noqa: PLC0415

            TTPServer()
            if place is None:
                results.put((rank, "ok", None))
            return
        crypten.init()
        if seed is not None:
            _reseed(crypten, seed, rank, world_size)
        try:
            out = fn(rank, crypten, payload)
            if place is not None:
                out = _collect(crypten, rank, world_size, out)
        finally:
            crypten.uninit()
        if place is None:
            results.put((rank, "ok", out))
        elif rank == DEVICE:
            for r, value in sorted(out.items()):
                results.put((r, "ok", value))
    except BaseException:  # noqa: BLE001  (report everything to the parent, then exit non-zero)
        results.put((rank, "error", traceback.format_exc()))
        raise SystemExit(1) from None


def _collect(crypten: Any, rank: int, world_size: int, out: Any) -> Any:
    """Every rank's result at the device (rank 1) over the parties' own link, after the counted traffic.

    A rank other than the device never sends an output (only the device may learn it): refused here."""
    comm = crypten.comm.get()
    if rank == DEVICE:
        got = {DEVICE: out}
        for r in range(world_size):
            if r != DEVICE:
                got[r] = comm.recv_obj(r)
        return got
    if isinstance(out, dict) and out.get("output") is not None:
        raise RuntimeError(f"rank {rank} holds an output; only the device (rank {DEVICE}) may receive one")
    comm.send_obj(out, DEVICE)
    return None


class _Report:
    """The result sink of a remote rank: its own errors go to its stderr (the device reports its counters)."""

    def put(self, item: tuple[int, str, Any]) -> None:
        rank, status, value = item
        if status == "error":
            print(f"MPC rank {rank} failed:\n{value}", file=sys.stderr, flush=True)


def run_remote_rank(job: dict[str, Any]) -> int:
    """Run one rank from the job file the runner wrote for it (`python -m baselines.mpc.hosts --job ...`)."""
    try:
        _party_main(job["fn"], job["rank"], job["world_size"], job["place"].rendezvous, job["provider"],
                    job["payload"], _Report(), job["threads"], job["seed"], place=job["place"])
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def _write_remote_jobs(fn: PartyFn, payload: Any, place: Placement, world_size: int, provider: str,
                       threads: int, seed: int | None, tmpdir: str) -> dict[int, list[str]]:
    """A job file per remote rank (only that rank's own data: payload.for_rank) and the command starting it."""
    import torch  # noqa: PLC0415

    commands = {}
    for r in place.remote:
        path = Path(tmpdir) / f"rank{r}.pt"
        mine = payload.for_rank(r) if hasattr(payload, "for_rank") else payload
        torch.save({"fn": fn, "payload": mine, "rank": r, "world_size": world_size, "provider": provider,
                    "threads": threads, "seed": seed, "place": place}, path)
        path.chmod(0o600)
        commands[r] = remote_command(path)
        message = describe(r, place.hosts[r], commands[r], path)
        log.warning("%s", message)
        print(message, file=sys.stderr, flush=True)
    return commands


def _reseed(crypten: Any, seed: int, rank: int, world_size: int) -> None:
    """Replace CrypTen's os.urandom share seeds by ones derived from `seed`, consistently across parties.

    A party's "next" generator must match the next party's "prev" one; "global" is common to all.
    """
    import torch  # noqa: PLC0415

    cpu = torch.device("cpu")
    gens = crypten.generators
    gens["next"][cpu].manual_seed(seed * 7919 + rank)
    gens["prev"][cpu].manual_seed(seed * 7919 + (rank - 1) % world_size)
    gens["local"][cpu].manual_seed(seed * 7919 + 1000 + rank)
    gens["global"][cpu].manual_seed(seed * 7919 + 2000)


def _kill(proc: mp.Process) -> None:
    """Terminate a party's process group, then kill it if it lingers; always reap it."""
    if proc.pid is None:
        return
    for sig, wait_s in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
        if not proc.is_alive():
            break
        signal_tree(proc.pid, sig)
        proc.join(wait_s)
    proc.join(0.1)


Launch = Callable[[int, list[str]], subprocess.Popen]  # (rank, command) -> the started remote party


def run_parties(fn: PartyFn, payload: Any = None, *, world_size: int = 2, provider: str = "TFP",
                timeout_s: float = 600.0, threads_per_party: int | None = None, seed: int | None = None,
                place: Placement | None = None, launch: Launch | None = None) -> list[Any]:
    """Run `fn` at every party and return their results ordered by rank (TTP not included).

    `seed` fixes each party's randomness (shares, triples) so that a run can be reproduced exactly.
    `place` (baselines.mpc.hosts.placement) puts ranks on other hosts: only `place.local` are started here,
    each other rank gets a job file and a printed command, which `launch` runs where a launcher can (a test,
    a namespace). Raises MpcTimeout after `timeout_s` and MpcRunError when a party raises or dies; no party
    process started here outlives this call.
    """
    if provider not in PROVIDERS:
        raise ValueError(f"unknown provider {provider!r}; choices: {list(PROVIDERS)}")
    threads_per_party = inherited_threads(threads_per_party)  # None: what the runner set (transport.threads)
    ctx = mp.get_context("fork")  # parties inherit the model and the function: nothing to pickle
    tmpdir = tempfile.mkdtemp(prefix=RENDEZVOUS_PREFIX)
    rendezvous = f"file://{os.path.join(tmpdir, 'rendezvous')}"
    results = ctx.Queue()
    n_procs = world_size + (1 if provider == "TTP" else 0)
    if place is not None and len(place.hosts) != n_procs:
        raise ValueError(f"the placement has {len(place.hosts)} hosts for {n_procs} parties")
    ranks = range(n_procs) if place is None else place.local
    procs = {r: ctx.Process(target=_party_main, name=f"mpc-party-{r}",
                            args=(fn, r, world_size, rendezvous, provider, payload, results, threads_per_party, seed,
                                  os.getpid(), tmpdir, place))
             for r in ranks}
    remote: dict[int, subprocess.Popen] = {}
    expected = n_procs if place is None else world_size  # with a placement the device reports every rank
    got: dict[int, tuple[str, Any]] = {}
    deadline = time.monotonic() + timeout_s
    restore = _kill_parties_on_sigterm(list(procs.values()), tmpdir)
    try:
        commands = {} if place is None else _write_remote_jobs(fn, payload, place, world_size, provider,
                                                                threads_per_party, seed, tmpdir)
        for p in procs.values():
            p.start()
        for r, argv in commands.items():
            if launch is not None:
                remote[r] = launch(r, argv)
        while len(got) < expected:
            left = deadline - time.monotonic()
            if left <= 0:
                raise MpcTimeout(f"MPC run exceeded timeout_s={timeout_s:g}; parties reported: {sorted(got)}"
                                 + (f"; remote ranks {list(commands)} must be started with the printed command"
                                    if commands and launch is None else ""))
            try:
                rank, status, value = results.get(timeout=min(left, 0.5))
            except queue_mod.Empty:
                _check_alive(procs, remote, got, results, place)
                continue
            got[rank] = (status, value)
            if status == "error":
                raise MpcRunError(f"MPC party {rank} failed:\n{value}")
        for p in procs.values():
            p.join(max(1.0, deadline - time.monotonic()))
        for proc in remote.values():
            proc.wait(max(1.0, deadline - time.monotonic()))
        return [got[r][1] for r in range(world_size)]
    finally:
        for p in procs.values():
            _kill(p)
        for proc in remote.values():
            if proc.poll() is None:
                signal_tree(proc.pid, signal.SIGKILL)
                proc.wait(5)
        results.close()
        results.join_thread()
        shutil.rmtree(tmpdir, ignore_errors=True)
        restore()


def _check_alive(procs: dict[int, mp.Process], remote: dict[int, subprocess.Popen], got: dict, results: Any,
                 place: Placement | None) -> None:
    """Raise MpcRunError for a party that died without reporting (killed, segfault, a remote rank that failed)."""
    if place is None:
        dead = [r for r, p in procs.items() if r not in got and not p.is_alive()]
    else:  # with a placement only the device reports: another rank's normal exit is no failure
        dead = [r for r, p in procs.items() if not p.is_alive() and (p.exitcode or r == DEVICE)]
    failed = {r: p.returncode for r, p in remote.items() if p.poll() not in (None, 0)}
    if not dead and not failed:
        return
    try:  # drain once more: its report may be on its way
        rank, status, value = results.get(timeout=1.0)
    except queue_mod.Empty:
        codes = {r: procs[r].exitcode for r in dead}
        raise MpcRunError(f"MPC party/parties {dead or list(failed)} died without a result (exit codes "
                          f"{codes or failed})") from None
    got[rank] = (status, value)
    if status == "error":
        raise MpcRunError(f"MPC party {rank} failed:\n{value}")


def _kill_parties_on_sigterm(procs: list[mp.Process], tmpdir: str) -> Callable[[], None]:
    """While parties run, a SIGTERM to the runner kills their groups (psutil), removes the rendezvous
    folder, then lets the previous handler (default: die) act. Returns the function that uninstalls it."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None  # signal handlers live in the main thread; the parties' own watch still holds
    previous = signal.getsignal(signal.SIGTERM)
    if previous is None:  # installed outside Python: treat as the default action
        previous = signal.SIG_DFL

    def on_sigterm(signum: int, frame: Any) -> None:
        parties = [psutil.Process(p.pid) for p in procs if p.pid is not None and p.is_alive()]
        for party in parties:
            try:
                members = [party] + party.children(recursive=True)
            except psutil.NoSuchProcess:
                continue
            for member in members:
                try:
                    member.kill()
                except psutil.NoSuchProcess:
                    pass
        psutil.wait_procs(parties, timeout=5)
        shutil.rmtree(tmpdir, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous)
        if callable(previous):
            previous(signum, frame)
        else:
            os.kill(os.getpid(), signal.SIGTERM)  # the default action, now that the parties are gone

    signal.signal(signal.SIGTERM, on_sigterm)
    return lambda: signal.signal(signal.SIGTERM, previous)
