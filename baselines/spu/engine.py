"""The main-environment half of `protocol.engine=spu`: checkpoint out, driver subprocess in .venv-spu, results back.

The weights the driver loads are the very model the runner built (save_pretrained, safetensors, into the run's
workdir), so SPU and CrypTen rows of one run config judge the same network against the same plaintext.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from baselines.mpc.hosts import DEVICE, FLAG, HostsConfigError
from protocols.contract import AccuracyBound, PartiesConfig
from protocols.paths import REPO_ROOT
from transport.auth import is_loopback
from transport.netns import exec_prefix
from transport.threads import inherited_threads, thread_env, xla_flags

REPO = REPO_ROOT
VENV = Path(os.environ.get("SPU_VENV", REPO / ".venv-spu"))
PROTOCOLS = {"aby3": "ABY3", "cheetah": "CHEETAH", "semi2k": "SEMI2K"}
PARTY_COUNT = {"aby3": 3, "cheetah": 2, "semi2k": 2}  # baselines.spu.driver.PARTIES
APPROXIMATIONS = ("puma", "nimbus")
EMBEDDINGS = ("mpc", "device")  # one-hot x table in MPC | the device's own lookup, secret-shared (CrypTen's names)
# Below these a run is `diverged` (bench/status.py): under the lowest converged top-1 of results/mpc_spu* (PUMA 0.89
# on GPT-2 124M, Nimbus 0.86 on BERT-base; both 1.0 at bert-tiny); errors as CrypTen's families' (approximations.py).
BOUNDS = {"puma": AccuracyBound(0.85, 50.0, "SPU's reciprocal is range-normalised: no row-sum limit measured; "
                                "way out: report the run and its inputs"),
          "nimbus": AccuracyBound(0.6, 50.0, "SPU's reciprocal is range-normalised: no row-sum limit measured; "
                                  "way out: report the run and its inputs")}
MODEL_TYPES = {"bert": "last_hidden_state", "gpt2": "logits"}  # model_type -> the output accuracy is judged on


@dataclass
class SpuRun:
    """One measured forward: wall seconds of all parties, per-party link totals, per-op profile (all parties')."""

    seconds: float
    links: list[dict[str, int]]
    ops: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)

    @property
    def bytes(self) -> int:
        """Bytes all parties send (each party's own link counter)."""
        return sum(p["send_bytes"] for p in self.links)

    def rounds_per_party(self) -> float:
        """All parties' send actions / parties. SPU splits the same total differently among the parties from
        run to run here, so the per-party maximum is not reproducible; the total, hence the mean, is."""
        return sum(p["send_actions"] for p in self.links) / len(self.links)


@dataclass
class SpuResult:
    output: torch.Tensor
    approx_plaintext: torch.Tensor
    output_name: str
    parties: int
    compile_s: float
    runs: list[SpuRun]
    versions: dict[str, str]
    runtime: dict[str, str] = field(default_factory=dict)  # the driver's RuntimeConfig: protocol, beaver_type
    link: str = "mem"  # mem: parties as threads over in-memory links | brpc: one process per party
    addresses: list[str] = field(default_factory=list)  # brpc: host:port per rank


def spu_env() -> dict[str, str]:
    """The driver's thread settings (transport.threads): the runner's count in OMP/MKL/BLAS and XLA_FLAGS."""
    n = inherited_threads()
    return {**thread_env(n), "XLA_FLAGS": xla_flags(n, os.environ.get("XLA_FLAGS", ""))}


def spu_bound(approx: str) -> AccuracyBound | None:
    """The accuracy bound of an SPU approximation (BOUNDS)."""
    if approx not in BOUNDS:
        raise ValueError(f"SPU approximation {approx!r} has no accuracy bound; known: {sorted(BOUNDS)}")
    return BOUNDS[approx]


def python() -> Path:
    """The SPU environment's interpreter, or an error naming `make install`."""
    exe = VENV / "bin" / "python"
    if not exe.exists():
        raise FileNotFoundError(f"{exe} not found: the SPU engine needs its own environment; run `make install` "
                                f"(it creates .venv-spu from requirements-spu.txt) or set SPU_VENV=DIR")
    return exe


def _host_of(address: str) -> str:
    text = str(address).strip()
    if text.startswith("["):
        return text[1:].partition("]")[0]
    return text.split(":")[0] if text.count(":") == 1 else text


def placement_request(parties: PartiesConfig, protocol: str) -> dict[str, Any]:
    """The driver's request keys for SPU parties as processes at `parties.hosts` (one host:port per rank), checked
    by the rule CrypTen's parties follow (baselines.mpc.hosts): nothing beyond loopback without parties.allow_network,
    the device among the ranks this runner starts."""
    n = PARTY_COUNT[protocol]
    if parties.rendezvous:
        raise HostsConfigError(f"parties.rendezvous={parties.rendezvous!r} is CrypTen's (torch.distributed); SPU's "
                               "parties meet at parties.hosts (host:port per rank): set parties.rendezvous=null")
    hosts = [str(h) for h in (parties.hosts or [])]
    if len(hosts) != n:
        raise HostsConfigError(f"parties.hosts has {len(hosts)} address(es); SPU {protocol} runs {n} parties: give "
                               f"one host:port per rank (rank {DEVICE} is the device)")
    local = sorted({int(r) for r in (parties.local if parties.local is not None else [DEVICE])})
    if DEVICE not in local or any(not 0 <= r < n for r in local):
        raise HostsConfigError(f"parties.local={local}: ranks of 0..{n - 1} this runner starts, including the device "
                               f"({DEVICE}): it collects the reports and the output shares")
    exposed = []
    for h in hosts:
        try:
            if not is_loopback(_host_of(h)):
                exposed.append(h)
        except OSError as exc:
            raise HostsConfigError(f"cannot resolve parties host {h!r}: {exc}") from exc
    if exposed and not parties.allow_network:
        raise HostsConfigError(f"non-loopback address(es) {exposed}: each SPU party's brpc server listens on its "
                               f"address (no TLS set up here), so this is refused unless asked for: set {FLAG} (on a "
                               "network you trust; docs/multi-host.md), or use 127.0.0.1:PORT")
    netns = {int(k): str(v) for k, v in (parties.netns or {}).items()}
    return {"link": "brpc", "addresses": hosts, "local": local, "allow_network": bool(parties.allow_network),
            "launch_prefix": {str(r): exec_prefix(name) for r, name in netns.items()}}


def wait_echoing_commands(proc: subprocess.Popen, request: str, log_path: Path, timeout_s: float) -> str:
    """The driver's stdout once it exits; meanwhile the command it prints for each remote SPU party (in its log)
    is echoed to this runner's stderr, where the person starting that party reads it."""
    deadline, echoed = time.monotonic() + timeout_s, 0
    first: str | None = request
    while True:
        try:
            out, _ = proc.communicate(first, timeout=1.0)
            return out
        except subprocess.TimeoutExpired:
            first = None  # communicate keeps what it has sent and read; only the first call gives the input
            lines = log_path.read_text(errors="replace").splitlines()
            for i, line in enumerate(lines[:-1]):  # a command is the line after its "SPU rank" line
                if line.startswith("SPU rank ") and i >= echoed:
                    print(f"{line}\n{lines[i + 1]}", file=sys.stderr, flush=True)
                    echoed = i + 1
            if time.monotonic() > deadline:
                proc.kill()
                proc.communicate()
                raise subprocess.TimeoutExpired(proc.args, timeout_s) from None


def run_spu_forward(net: Any, model_type: str, ids: torch.Tensor, *, protocol: str, approx: str, n_runs: int,
                    workdir: Path, timeout_s: float, fxp_fraction_bits: int = 0, embedding: str = "mpc",
                    parties: PartiesConfig | None = None) -> SpuResult:
    """Save `net`, run its forward `n_runs` times on SPU `protocol` with `approx`, and read the results back.
    `parties` None: threads over in-memory links; else one process per party over brpc (placement_request)."""
    if model_type not in MODEL_TYPES:
        raise ValueError(f"protocol.engine=spu runs model types {sorted(MODEL_TYPES)}; got {model_type!r}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol.mpc_protocol={protocol!r}; choices: {sorted(PROTOCOLS)}")
    placed = {} if parties is None else placement_request(parties, protocol)
    ckpt = Path(workdir) / "spu_checkpoint"
    ckpt.mkdir(parents=True, exist_ok=True)
    net.save_pretrained(ckpt, safe_serialization=True)
    request = {"checkpoint": str(ckpt), "model_type": model_type, "output": MODEL_TYPES[model_type],
               "input_ids": ids.tolist(), "protocol": PROTOCOLS[protocol], "approx": approx, "runs": n_runs,
               "fxp_fraction_bits": fxp_fraction_bits, "timeout_s": timeout_s,
               "embedding": embedding, **placed}
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu", "HF_HUB_OFFLINE": "1", **spu_env()}
    log_path = Path(workdir) / "spu_driver.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([str(python()), "-m", "baselines.spu.driver"], stdin=subprocess.PIPE, text=True,
                                stdout=subprocess.PIPE, stderr=log, env=env, cwd=REPO)
        stdout = wait_echoing_commands(proc, json.dumps(request), log_path, timeout_s)
    if proc.returncode != 0:
        tail = log_path.read_text()[-3000:]
        raise RuntimeError(f"SPU driver failed (exit {proc.returncode}); its log ({log_path}) ends:\n{tail}")
    res = json.loads(stdout)
    return SpuResult(output=torch.tensor(res["output"], dtype=torch.float64),
                     approx_plaintext=torch.tensor(res["approx_plaintext"], dtype=torch.float64),
                     output_name=MODEL_TYPES[model_type], parties=int(res["parties"]),
                     compile_s=float(res["compile_s"]),
                     runs=[SpuRun(r["seconds"], r["links"], r.get("ops", {})) for r in res["runs"]],
                     versions=res["versions"], runtime=res["runtime"], link=res.get("link", "mem"),
                     addresses=list(res.get("addresses", [])))


def runtime_settings(protocol: str, approx: str = "puma", timeout_s: float = 300.0) -> dict[str, str]:
    """The RuntimeConfig settings (protocol, beaver_type) the driver would run `protocol` with, read in .venv-spu."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol.mpc_protocol={protocol!r}; choices: {sorted(PROTOCOLS)}")
    request = {"settings_only": True, "protocol": PROTOCOLS[protocol], "approx": approx}
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([str(python()), "-m", "baselines.spu.driver"], input=json.dumps(request), text=True,
                          capture_output=True, env=env, cwd=REPO, timeout=timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(f"SPU driver failed reading its runtime settings (exit {proc.returncode}): "
                           f"{proc.stderr[-2000:]}")
    return json.loads(proc.stdout)["runtime"]


if __name__ == "__main__":  # pragma: no cover - a manual probe: python -m baselines.spu.engine MODEL PROTOCOL APPROX
    sys.exit("use protocol=mpc protocol.engine=spu through `python -m bench`")
