"""One SPU party as its own OS process over SPU's brpc link (runs in .venv-spu): `--job FILE` holds only its shares.

The driver (baselines.spu.driver, request "link": "brpc") compiles the forward, secret-shares the inputs and writes
one job file per rank: the compiled executable and runtime config (public: the model's architecture), every
party's address, and that rank's own shares, nothing else. Each party creates its link with
`libspu.link.create_brpc` (one `host:port` per party, as SPU's own distributed runtime does), runs the executable
`runs` times (a fresh Runtime per run, as the in-memory mode does) and reads its own bytes and send actions from
SPU's "Link details" line (yacl's counters, the delta over the execution only: connecting, the barrier before
each run and the report afterwards are outside it). After the runs every other rank sends its report (timings,
link totals, profile, its output shares) to the device (rank 1) over the same link; the device writes all of
them to its result file. Only the device gets output shares; it is the party that may learn the output.

    .venv-spu/bin/python -m baselines.spu.party --job rank0.job    # what the driver prints for a remote rank

Job and result files are pickles of plain values (dict, list, str, bytes, int, float, bool, None) read with an
unpickler that refuses every class, so a crafted file cannot run code; still, load only files your driver wrote.
"""
from __future__ import annotations

import argparse
import base64
import ctypes
import io
import os
import pickle
import re
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import spu.api as spu_api
import spu.libspu as libspu

DEVICE = 1  # the rank that collects the reports and may receive output shares (baselines.mpc.hosts.DEVICE)
JOB_VERSION = 1
LINK = re.compile(r"Link details: total send bytes (\d+), recv bytes (\d+), send actions (\d+), recv actions (\d+)")
OP = re.compile(r"- (\S+), executed (\d+) times, duration ([0-9.e+-]+)s, send bytes (\d+) recv bytes (\d+), "
                r"send actions (\d+), recv actions (\d+)")
PR_SET_PDEATHSIG = 1  # linux/prctl.h
SECTION = re.compile(r"(HLO|HAL|MPC) profiling: total time")


class PlainUnpickler(pickle.Unpickler):
    """Builtin values only: any class or function reference in the stream is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"job/result files hold plain values only; refused {module}.{name}")


def dump_plain(obj: Any, path: Path) -> None:
    """Write `obj` (plain values) readable by its owner only: a job file holds a party's shares."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)


def load_plain(data: bytes) -> Any:
    return PlainUnpickler(io.BytesIO(data)).load()


def share_to_plain(share: Any) -> dict[str, Any]:
    """A libspu.Share as {meta, chunks} (bytes): what a job or report carries."""
    return {"meta": bytes(share.meta), "chunks": [bytes(c) for c in share.share_chunks]}


def share_from_plain(plain: dict[str, Any]) -> Any:
    share = libspu.Share()
    share.meta = plain["meta"]
    share.share_chunks = list(plain["chunks"])
    return share


def parse_profile(text: str) -> dict[str, Any]:
    """Per-party link totals (one 'Link details' line per party) and the profiled parties' per-op counts."""
    links = [dict(zip(("send_bytes", "recv_bytes", "send_actions", "recv_actions"), map(int, m.groups())))
             for m in LINK.finditer(text)]
    ops: dict[str, dict[str, dict[str, float]]] = {}
    merge_ops(ops, text)
    return {"links": links, "ops": ops}


def merge_ops(ops: dict[str, dict[str, dict[str, float]]], text: str) -> None:
    """Add the per-op lines of SPU's profile in `text` into `ops` (section -> op -> counts)."""
    section = None
    for line in text.splitlines():
        s = SECTION.search(line)
        if s:
            section = s.group(1)
            continue
        m = OP.search(line)
        if m and section:
            entry = ops.setdefault(section, {}).setdefault(m.group(1), {"count": 0, "seconds": 0.0, "send_bytes": 0,
                                                                         "send_actions": 0})
            entry["count"] += int(m.group(2))
            entry["seconds"] += float(m.group(3))
            entry["send_bytes"] += int(m.group(4))
            entry["send_actions"] += int(m.group(6))


def add_ops(into: dict[str, dict[str, dict[str, float]]], other: dict[str, dict[str, dict[str, float]]]) -> None:
    """Sum one party's per-op profile into all parties' (the in-memory mode parses all parties' lines together)."""
    for section, entries in other.items():
        for name, counts in entries.items():
            entry = into.setdefault(section, {}).setdefault(name, {k: type(v)(0) for k, v in counts.items()})
            for key, value in counts.items():
                entry[key] += value


class CapturedLog:
    """fds 1 and 2 redirected into a file for the block: SPU's C++ logger writes its profile to stdout."""

    def __enter__(self) -> "CapturedLog":
        sys.stdout.flush()
        sys.stderr.flush()
        self.file = tempfile.TemporaryFile(mode="w+b")
        self.saved = [os.dup(1), os.dup(2)]
        os.dup2(self.file.fileno(), 1)
        os.dup2(self.file.fileno(), 2)
        return self

    def __exit__(self, *exc: Any) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, saved in zip((1, 2), self.saved):
            os.dup2(saved, fd)
            os.close(saved)
        self.file.seek(0)
        self.text = self.file.read().decode("utf-8", "replace")
        self.file.close()
        sys.stderr.write(self.text)  # the profile stays in the process's log too


def exit_with_parent() -> None:
    """Die with the process that started this one (Linux PR_SET_PDEATHSIG): SPU's C++ code holds the GIL, so a
    Python watcher could not notice an orphaned party."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() == 1:  # the parent died before the call above
        os._exit(3)


def brpc_link(addresses: list[str], rank: int, recv_timeout_s: float, connect_timeout_s: float) -> Any:
    """SPU's brpc link: one `host:port` per party; this party's brpc server listens on addresses[rank]."""
    desc = libspu.link.Desc()
    desc.id = "stip-spu"
    # A party waits for its peer's message as long as the peer computes (minutes on a busy host).
    desc.recv_timeout_ms = int(recv_timeout_s * 1000)
    desc.connect_retry_interval_ms = 1000
    desc.connect_retry_times = max(10, int(connect_timeout_s))  # a remote party started by hand may come late
    for r, address in enumerate(addresses):
        desc.add_party(f"id_{r}", address)
    return libspu.link.create_brpc(desc, rank)


def run_job(job: dict[str, Any]) -> dict[str, Any] | None:
    """Run this party's share of every run; the device returns all parties' reports (rank order), others None."""
    if job.get("version") != JOB_VERSION:
        raise ValueError(f"job version {job.get('version')!r}; this party reads version {JOB_VERSION}: rerun the "
                         "driver of the same commit")
    rank, n = int(job["rank"]), int(job["parties"])
    cfg = libspu.RuntimeConfig()
    cfg.ParseFromString(job["runtime_config"])
    executable = libspu.Executable()
    executable.ParseFromString(job["executable"])
    inputs = [(item["name"], share_from_plain(item)) for item in job["inputs"]]
    lctx = brpc_link(list(job["addresses"]), rank, float(job["recv_timeout_s"]), float(job["connect_timeout_s"]))
    runs, outputs = [], []
    for _ in range(int(job["runs"])):
        lctx.barrier()  # every party starts its run together (outside SPU's counted execution)
        with CapturedLog() as cap:
            t0 = time.perf_counter()
            rt = spu_api.Runtime(lctx, libspu.RuntimeConfig(cfg))
            for name, share in inputs:
                rt.set_var(name, share)
            rt.run(executable)
            outputs = [rt.get_var(name) for name in executable.output_names]
            seconds = time.perf_counter() - t0
        prof = parse_profile(cap.text)
        if len(prof["links"]) != 1:
            raise RuntimeError(f"rank {rank}: expected one 'Link details' line from SPU's profile, found "
                               f"{len(prof['links'])}; log tail: {cap.text[-2000:]}")
        runs.append({"seconds": seconds, "link": prof["links"][0], "ops": prof["ops"]})
    report = {"rank": rank, "runs": runs, "outputs": [share_to_plain(s) for s in outputs]}
    device = int(job.get("device", DEVICE))
    result = None
    if rank == device:
        reports: list[Any] = [None] * n
        reports[rank] = report
        for peer in range(n):
            if peer != rank:
                reports[peer] = load_plain(base64.b64decode(lctx.recv(peer)))
                if reports[peer]["rank"] != peer:
                    raise RuntimeError(f"rank {peer}'s report names rank {reports[peer]['rank']}")
        result = {"reports": reports}
    else:  # after the counted runs: the report goes to the device only
        lctx.send(device, base64.b64encode(pickle.dumps(report, protocol=pickle.HIGHEST_PROTOCOL)).decode("ascii"))
    lctx.barrier()  # nobody closes its link while a peer still reads from it
    lctx.stop_link()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m baselines.spu.party", description=__doc__.splitlines()[0])
    parser.add_argument("--job", required=True, help="this party's job file, written by the driver")
    parser.add_argument("--exit-with-parent", action="store_true", help="die with the driver that started it")
    args = parser.parse_args(argv)
    if args.exit_with_parent:
        exit_with_parent()
    job = load_plain(Path(args.job).read_bytes())
    result = run_job(job)
    if result is not None:
        dump_plain(result, Path(job["result"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
