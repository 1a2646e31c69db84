"""Links measured, not only modelled: each party in its own network namespace behind a `tbf` rate limit.

`python -m bench.netns_links [results_dir=...] [runs_dir=...] [models=[bert-tiny,bert-medium]]
[rates=[1e8,1e9]] [protocols=[stip,full_cloud,mpc,spu]]` (root; transport.netns) runs, per model, in one set of
namespaces (server, device and, for spu, helper), once with no limit and then at each rate (`Namespaces.set_rate`
replaces every tbf in place and flushes the cached TCP metrics, so each rate starts as in fresh namespaces):
STIP and full cloud with the device and a served cloud (`python -m transport serve`, TLS and a token, one per
model and protocol, kept across rates); 2PC CrypTen with the server and device ranks in their namespaces
(`parties.*`); spu: SPU's 3-party ABY3 (PUMA's approximations; on bert-tiny 6x faster, 8x fewer bytes and
rounds than 2-party Cheetah) with ranks 0, 1 (device), 2 each its own process over SPU's brpc link in its namespace.
Every run is the ordinary runner (`python -m bench`) with network=none, so its rows are measured through the
link (source socket; CrypTen's and SPU's `compute` row is the slowest party's wall time, link included). It writes
<results_dir>/netns_links/: rows.csv (per run and repeat: latency at source socket and modelled at that rate),
links_table.{csv,md} (medians: measured / modelled, and what the gap is made of).
Modelled = the harness's formula on the run's own counts, RTT 0 (this kernel has no netem; the namespaces' own
~0.05 ms RTT is inside the measured time), with `link_bytes` the bytes on the critical path:
- STIP and full cloud: that run's compute + rounds x RTT + (up + down bytes) / rate (request and reply in sequence);
- CrypTen and SPU: the compute of the unlimited-link run in the same namespaces (neither can split its compute
  from waiting) + rounds x RTT + link_bytes / rate. The parties send at once, each through its own limiter (its
  veth's egress; the hub's egress towards it carries what it receives), so the slowest limiter sets the link
  time: CrypTen (2PC, no per-party counts): bytes / 2; SPU: the most bytes one party sent (its own link counter,
  spu_profile.json), which for 2 parties and for ABY3's ring (each party receives from one peer) is also the
  most one party receives. That is >= SPU's own modelled bytes / parties, the mean, by ABY3's uneven split (~5%).
Where namespaces cannot be made, writes skipped.json with the reason and exits 0.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pandas as pd
from omegaconf import OmegaConf

from bench.app import CONFIG_DIR, _absolute
from bench.results import atomic_write_json, provenance
from transport import netns
from transport.link import NetworkProfile

log = logging.getLogger(__name__)
REPO = Path(CONFIG_DIR).parent
SERVE_PORT = 7443
RENDEZVOUS_PORT = 29500
SPU_PORT = 9530
FACTORIES = {"stip": "protocols.stip_over_socket:make_cloud_handler",
             "full_cloud": "baselines.full_cloud:make_cloud_handler"}
PROTOCOLS = ("stip", "full_cloud", "mpc", "spu")
# protocol choice -> the runner's protocol config and its overrides. spu: 3-party ABY3 with PUMA's approximations
# (PUMA's setting): on bert-tiny at 8 tokens (results/mpc_spu/latency_table.md) 2.0 s compute, 9.8 MB, 750 rounds
# against 2-party Cheetah's (OT/HE) 13.1 s, 82 MB, 5545 rounds
RUNNER_PROTOCOL = {"stip": ("stip", []), "full_cloud": ("full_cloud", []), "mpc": ("mpc", []),
                   "spu": ("mpc", ["protocol.engine=spu", "protocol.mpc_protocol=aby3", "protocol.approx=puma"])}
RANKS = ("server", "device", "helper")  # namespace of MPC rank 0, 1, 2 (rank 1 is the device; ABY3's third party)


@dataclass
class LinksCfg:
    experiment_name: str = "netns_links"
    results_dir: str = "outputs/results"
    runs_dir: str = "outputs/netns_links_runs"  # not the runner's runs folder: aggregate reads that one
    models: list = field(default_factory=lambda: ["bert-tiny", "bert-medium"])
    rates: list = field(default_factory=lambda: [1e8, 1e9])  # bits/s of the tbf limit (and one run unlimited)
    protocols: list = field(default_factory=lambda: list(PROTOCOLS))
    seq_len: int = 32
    repeats: int = 3
    warmup: int = 1
    threads: int = 1
    timeout_s: int = 1800  # one party run's limit


def rate_label(rate: float | None) -> str:
    return "unlimited" if rate is None else f"{rate / 1e6:g}mbit"


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}


def bench_run(overrides: list[str], argv_prefix: list[str] | None = None, timeout_s: float = 3600) -> None:
    """One `python -m bench` run (inside a namespace when `argv_prefix` is `ip netns exec ...`)."""
    argv = [*(argv_prefix or []), sys.executable, "-m", "bench", *overrides]
    proc = subprocess.run(argv, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(argv)}` failed ({proc.returncode}):\n{proc.stderr[-3000:]}")


def rows_of(output_root: Path) -> pd.DataFrame:
    """The rows of the one run under `output_root` (each run here has its own root)."""
    found = sorted(output_root.glob("*/*/rows.parquet"))
    if len(found) != 1:
        raise RuntimeError(f"expected one run's rows under {output_root}, found {len(found)}")
    return pd.read_parquet(found[0])


def base_overrides(cfg: LinksCfg, model: str, protocol: str, root: Path) -> list[str]:
    name, extra = RUNNER_PROTOCOL[protocol]
    return [f"experiment_name={cfg.experiment_name}", f"model={model}", f"protocol={name}", *extra, "network=none",
            f"run.seq_len={cfg.seq_len}", f"run.repeats={cfg.repeats}", f"run.warmup={cfg.warmup}",
            f"run.threads={cfg.threads}", f"output_root={root}", "force=true"]


def prepared_checkpoint(cfg: LinksCfg, model: str, protocol: str, runs: Path) -> Path:
    """A local run that keeps its cloud checkpoint: the served cloud's weights match the device's keys (same seed)."""
    root = runs / "prepare" / model / protocol
    bench_run([*base_overrides(cfg, model, protocol, root), "run.repeats=1", "run.warmup=0", "+keep_checkpoints=true"])
    (ckpt,) = root.glob("*/*/work-*/cloud_checkpoint")
    return ckpt


def tls_files(folder: Path, address: str) -> tuple[Path, Path, Path]:
    """A self-signed certificate for `address` (openssl), its key and a 0600 token file."""
    cert, key, token = folder / "cert.pem", folder / "key.pem", folder / "token"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    f"/CN={address}", "-addext", f"subjectAltName=IP:{address}", "-keyout", str(key), "-out",
                    str(cert)], check=True, capture_output=True)
    token.write_text(os.urandom(24).hex())
    token.chmod(0o600)
    return cert, key, token


class Served:
    """`python -m transport serve` inside the cloud's namespace, on its namespace address, with TLS and a token."""

    def __init__(self, party: netns.Party, factory: str, kwargs: dict, cert: Path, key: Path, token: Path,
                 port: int = SERVE_PORT) -> None:
        self.address = f"{party.address}:{port}"
        argv = party.exec_argv([sys.executable, "-m", "transport", "serve", "--factory", factory, "--kwargs",
                                json.dumps(kwargs), "--host", party.address, "--port", str(port),
                                "--tls-cert", str(cert), "--tls-key", str(key), "--token-file", str(token)])
        self.proc = subprocess.Popen(argv, cwd=REPO, env=_env(), stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        if not line:
            self.close()
            raise RuntimeError(f"the served cloud exited ({self.proc.returncode}) before it was ready")
        self.ready = json.loads(line)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def head_of(model: str) -> str:
    return str(OmegaConf.load(Path(CONFIG_DIR) / "model" / f"{model}.yaml").get("head", "base"))


def serve(cfg: LinksCfg, ns: netns.Namespaces, model: str, protocol: str, ckpt: Path, port: int,
          tls: tuple[Path, Path, Path]) -> Served:
    """The cloud of STIP or full cloud served in the server's namespace; kept across the rates of one model."""
    cert, key, token = tls
    return Served(ns.parties["server"], FACTORIES[protocol], {"checkpoint": str(ckpt), "head": head_of(model),
                                                              "threads": cfg.threads}, cert, key, token, port)


def run_served(cfg: LinksCfg, ns: netns.Namespaces, model: str, protocol: str, served: Served, root: Path,
               tls: tuple[Path, Path, Path]) -> pd.DataFrame:
    """STIP or full cloud: the device (the runner) in its namespace, the cloud served in the server's."""
    cert, _, token = tls
    bench_run([*base_overrides(cfg, model, protocol, root), f"cloud.address={served.address}",
               f"cloud.ca_file={cert}", f"cloud.token_file={token}"], ns.parties["device"].exec_argv([]))
    return rows_of(root)


def run_mpc(cfg: LinksCfg, ns: netns.Namespaces, model: str, root: Path, port: int) -> pd.DataFrame:
    """2PC CrypTen: rank 0 (server) and rank 1 (device) forked by the runner, each entering its namespace."""
    server, device = ns.parties["server"], ns.parties["device"]
    bench_run([*base_overrides(cfg, model, "mpc", root), f"protocol.timeout_s={cfg.timeout_s}",
               f"parties.rendezvous=tcp://{server.address}:{port}",
               f"parties.hosts=[{server.address},{device.address}]", "parties.local=[0,1]",
               "parties.allow_network=true",  # the addresses exist only inside namespaces with no route out
               f"parties.netns={{0:{server.netns},1:{device.netns}}}"])
    return rows_of(root)


def run_spu(cfg: LinksCfg, ns: netns.Namespaces, model: str, root: Path, port: int) -> pd.DataFrame:
    """3PC SPU (ABY3): ranks 0, 1 (device), 2 each its own process over SPU's brpc link, started by the runner
    inside its namespace (`parties.netns`)."""
    ranks = [ns.parties[name] for name in RANKS]
    hosts = ",".join(f"{p.address}:{port + r}" for r, p in enumerate(ranks))
    places = ",".join(f"{r}:{p.netns}" for r, p in enumerate(ranks))
    bench_run([*base_overrides(cfg, model, "spu", root), f"protocol.timeout_s={cfg.timeout_s}",
               f"parties.hosts=[{hosts}]", "parties.local=[0,1,2]",
               "parties.allow_network=true",  # the addresses exist only inside namespaces with no route out
               f"parties.netns={{{places}}}"])
    return rows_of(root)


def busiest_sends(root: Path, warmup: int) -> pd.Series:
    """Per measured repeat: the most bytes one SPU party sent (its own link counter, spu_profile.json beside the
    rows; warm-up runs dropped as in the rows)."""
    (found,) = root.glob("*/*/spu_profile.json")
    runs = json.loads(found.read_text())["runs"][warmup:]
    return pd.Series([max(p["send_bytes"] for p in run["links"]) for run in runs], dtype=float)


def _pick(rows: pd.DataFrame, phase: str, metric: str, source: str) -> pd.Series:
    got = rows[(rows.phase == phase) & (rows.metric == metric) & (rows.source == source)]
    return got.set_index("repeat")["value"].sort_index()


def link_rows(protocol: str, rows: pd.DataFrame, rate: float | None, unlimited: pd.DataFrame | None,
              busiest: pd.Series | None = None) -> Iterator[dict]:
    """Per repeat: latency measured through the link (socket) and modelled at `rate` from the run's own counts.
    `busiest` (spu): per repeat, the most bytes one party sent (`busiest_sends`)."""
    link = NetworkProfile(name=rate_label(rate), bandwidth_bps=rate, rtt_s=0.0, source="tbf in transport.netns")
    if protocol in ("mpc", "spu"):
        measured = _pick(rows, "compute", "latency", "engine")
        n_bytes, rounds = _pick(rows, "total", "bytes", "engine"), _pick(rows, "total", "rounds", "engine")
        if protocol == "spu":
            if busiest is None or len(busiest) != len(measured):
                raise ValueError(f"spu rows need the busiest party's sends per repeat ({len(measured)}), got "
                                 f"{None if busiest is None else len(busiest)}")
            # parties send at once, each through its own limiter: the busiest one is the critical path
            critical = pd.Series(busiest.to_numpy(), index=measured.index)
        else:
            critical = n_bytes / 2  # 2PC: both ranks send at once, each through its own limiter
        compute = _pick(unlimited, "compute", "latency", "engine").median() if unlimited is not None else None
        modelled = {r: float(measured[r] if compute is None else compute) + link.time(rounds[r], critical[r])
                    for r in measured.index}
    else:
        measured = _pick(rows, "total", "latency", "socket")
        n_bytes, rounds = _pick(rows, "total", "bytes", "socket"), _pick(rows, "total", "rounds", "socket")
        critical = n_bytes  # a request and its reply follow each other
        compute = _pick(rows, "total", "latency", "modelled")  # network=none: the run's own compute
        modelled = {r: float(compute[r]) + link.time(rounds[r], n_bytes[r]) for r in measured.index}
    for r in measured.index:
        # link_bytes: the bytes the busiest limiter carries on the critical path
        base = {"protocol": protocol, "rate_bps": rate, "link": link.name, "repeat": int(r),
                "bytes": float(n_bytes[r]), "rounds": float(rounds[r]), "link_bytes": float(critical[r])}
        yield {**base, "source": "socket", "latency_s": float(measured[r])}
        yield {**base, "source": "modelled", "latency_s": float(modelled[r])}


def table(frame: pd.DataFrame) -> pd.DataFrame:
    """Medians per (model, protocol, link): measured / modelled, the gap per round, and the rate the link delivered
    (bytes over the measured time beyond the unlimited run: below the tbf rate where per-message costs or slow start
    matter)."""
    keys = ["model", "protocol", "link"]
    lat = frame.pivot_table(index=keys, columns="source", values="latency_s", aggfunc="median")
    values = ["rate_bps", "bytes", "link_bytes", "rounds"]
    counts = frame[frame.source == "socket"].groupby(keys, dropna=False)[values].median()
    wide = counts.join(lat).reset_index().rename(columns={"socket": "measured_s", "modelled": "modelled_s"})
    unl = wide[wide.link == "unlimited"].set_index(["model", "protocol"])["measured_s"]
    base = [unl.get((m, p), float("nan")) for m, p in zip(wide.model, wide.protocol)]
    wide["measured_over_modelled"] = wide["measured_s"] / wide["modelled_s"]
    wide["gap_s"] = wide["measured_s"] - wide["modelled_s"]
    wide["gap_per_round_ms"] = 1e3 * wide["gap_s"] / wide["rounds"]
    delivered = 8 * wide["link_bytes"] / (wide["measured_s"] - base) / 1e6
    wide["delivered_mbit"] = delivered.where(wide.link != "unlimited")
    return wide


def markdown(tab: pd.DataFrame) -> str:
    """A pipe table (4 significant digits), without tabulate."""
    cells = [[f"{v:.4g}" if isinstance(v, float) else str(v) for v in row] for row in tab.itertuples(index=False)]
    lines = ["| " + " | ".join(tab.columns) + " |", "|" + "---|" * len(tab.columns)]
    return "\n".join(lines + ["| " + " | ".join(c) + " |" for c in cells]) + "\n"


def measure(cfg: LinksCfg, ns: netns.Namespaces, model: str, protocol: str, root: Path, served: dict[str, Served],
            tls: tuple[Path, Path, Path], index: int) -> tuple[pd.DataFrame, pd.Series | None]:
    """One run of `protocol` across the namespaces at their current rate (the `index`-th: fresh MPC ports, so no
    listener waits on a port the previous run's sockets still hold): its rows (and, for spu, `busiest_sends`)."""
    if protocol == "mpc":
        return run_mpc(cfg, ns, model, root, RENDEZVOUS_PORT + index), None
    if protocol == "spu":
        return run_spu(cfg, ns, model, root, SPU_PORT + 3 * index), busiest_sends(root, cfg.warmup)
    return run_served(cfg, ns, model, protocol, served[protocol], root, tls), None


def run(cfg: LinksCfg) -> pd.DataFrame:
    """Per model one set of namespaces (and one served cloud per protocol); each rate set in place
    (`Namespaces.set_rate`), unlimited first; the rows of rows.csv."""
    bad = [p for p in cfg.protocols if p not in PROTOCOLS]
    if bad:
        raise ValueError(f"protocols={bad}: choose from {list(PROTOCOLS)}")
    runs = _absolute(cfg.runs_dir) / cfg.experiment_name
    names = list(RANKS if "spu" in cfg.protocols else RANKS[:2])
    records = []
    with tempfile.TemporaryDirectory(prefix="netns-links-") as tmp:
        for model in cfg.models:
            ckpts = {p: prepared_checkpoint(cfg, model, p, runs) for p in cfg.protocols if p in FACTORIES}
            unlimited: dict[str, pd.DataFrame] = {}
            with netns.Namespaces(names, rate_bps=None) as ns, contextlib.ExitStack() as stack:
                tls = tls_files(Path(tmp), ns.address("server"))
                served = {}
                for i, (protocol, ckpt) in enumerate(ckpts.items()):
                    served[protocol] = serve(cfg, ns, model, protocol, ckpt, SERVE_PORT + i, tls)
                    stack.callback(served[protocol].close)
                for i, rate in enumerate([None, *cfg.rates]):
                    ns.set_rate(rate)
                    for protocol in cfg.protocols:
                        root = runs / rate_label(rate) / model / protocol
                        log.info("netns_links: %s %s at %s", model, protocol, rate_label(rate))
                        rows, busiest = measure(cfg, ns, model, protocol, root, served, tls, i)
                        if rate is None:
                            unlimited[protocol] = rows
                        records += [{"model": model, **r} for r in link_rows(
                            protocol, rows, rate, None if rate is None else unlimited[protocol], busiest)]
    return pd.DataFrame.from_records(records)


def main(argv: list[str]) -> Path:
    cfg: LinksCfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(LinksCfg), OmegaConf.from_cli(argv)))
    out = _absolute(cfg.results_dir) / cfg.experiment_name
    out.mkdir(parents=True, exist_ok=True)
    reason = netns.unavailable_reason()
    if reason is not None:
        atomic_write_json(out / "skipped.json", {"reason": reason, "provenance": provenance()})
        print(f"netns_links skipped: {reason}")
        return out
    load_before = os.getloadavg()
    frame = run(cfg)
    frame.to_csv(out / "rows.csv", index=False)
    tab = table(frame)
    tab.to_csv(out / "links_table.csv", index=False)
    (out / "links_table.md").write_text(markdown(tab))
    atomic_write_json(out / "run.json", {"config": OmegaConf.to_container(OmegaConf.structured(cfg)),
                                         "netem": netns.netem_problem() or "available", "provenance": provenance(),
                                         # timings of a loaded host are not results: re-take them on a quiet one
                                         "load_average_before": load_before, "load_average_after": os.getloadavg()})
    print(tab.to_string(index=False))
    return out


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main(sys.argv[1:])
