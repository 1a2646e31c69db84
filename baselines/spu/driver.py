"""The SPU side of `protocol.engine=spu`: a JSON request on stdin, JSON results on stdout (runs in .venv-spu).

Loads the checkpoint the main environment wrote (safetensors) with transformers 4.46.3's Flax classes
(`from_pt=True`), compiles the forward with SPU's JAX frontend and runs it on one thread per party over SPU's
in-memory links (the same links `spu.utils.simulation.Simulator` uses), with HAL/MPC profiling on every party.
Bytes and send actions are read from SPU's own per-party "Link details" log lines (yacl link statistics,
counted where a party hands a message to its link, whatever the link's transport). The device's input is one-hot
(PUMA's secure embedding: the table lookup is a secret one-hot x table product), the weights are the server's;
both are secret-shared by SPU's Io before the run, outside the counted traffic.
A request {"settings_only": true, "protocol": ..., "approx": ...} returns only {"runtime": runtime_settings(...)}.
Request keys: checkpoint, model_type (bert | gpt2), output (last_hidden_state | logits), input_ids, protocol
(ABY3 | CHEETAH | SEMI2K), approx (puma | nimbus), runs, fxp_fraction_bits (0: SPU's default), timeout_s
(a party's longest wait for a peer's message), embedding (mpc: one-hot x table in MPC | device: the device looks
its tokens up in its own copy of the token table and secret-shares the vectors, as CrypTen's embedding=device;
positions and token types are then added in MPC from the server's tables at public indices, a local operation).
Parties as processes: "link": "brpc" runs each party as its own process (baselines.spu.party) over SPU's brpc link
instead of threads over in-memory links ("mem", the default); "addresses" (one host:port per rank; default
127.0.0.1 with free ports), "allow_network" (required beyond loopback), "local" (ranks started here, default all;
each other rank gets its job file and a printed command), "launch_prefix" (rank -> argv prefix, e.g.
`ip netns exec NS` from transport.netns.Party.exec_argv), "job_dir" (kept; default a temporary folder removed
after an all-local run). Each party reports its own Link details; the run's seconds are the slowest party's.
"""
from __future__ import annotations

import ipaddress
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import spu
import spu.api as spu_api
import spu.libspu as libspu
import transformers
from spu.utils import frontend as spu_fe

from baselines.spu.approximations import patched
from baselines.spu.party import (
    DEVICE,
    JOB_VERSION,
    CapturedLog,
    add_ops,
    dump_plain,
    exit_with_parent,
    load_plain,
    parse_profile,
    share_from_plain,
    share_to_plain,
)

PARTIES = {"ABY3": 3, "CHEETAH": 2, "SEMI2K": 2}
EMBEDDINGS = ("mpc", "device")
LINKS = ("mem", "brpc")
FLAG = "parties.allow_network=true"  # baselines.mpc.hosts.FLAG: the one switch for parties beyond loopback
WORD_EMBEDDING = {"bert": ("embeddings", "word_embeddings"), "gpt2": ("transformer", "wte")}  # Flax param paths
DEVICE_EMBEDS: list[Any] = []  # the device's token vectors while forward() traces (embedding=device)


def runtime_config(protocol: str, approx: str, fraction_bits: int) -> Any:
    """SPU's runtime settings of the paper's own example (cited per protocol)."""
    if protocol not in PARTIES:
        raise ValueError(f"SPU protocol {protocol!r} is not supported; choices: {sorted(PARTIES)}")
    cfg = libspu.RuntimeConfig(protocol=getattr(libspu.ProtocolKind, protocol), field=libspu.FieldType.FM64)
    cfg.enable_hal_profile = True
    cfg.enable_pphlo_profile = True
    if approx == "puma":
        # PUMA's 3pc.json (examples/python/ml/flax_llama7b, commit 8a8def9f): FM64, Taylor exp with 5 iterations.
        cfg.fxp_exp_mode = libspu.RuntimeConfig.ExpMode.EXP_TAYLOR
        cfg.fxp_exp_iters = 5
    # Nimbus's 2pc.json (examples/python/ml/Nimbus, commit 9ef61f5d): FM64, SPU's defaults otherwise.
    if fraction_bits:
        cfg.fxp_fraction_bits = int(fraction_bits)
    return cfg


def runtime_settings(cfg: Any) -> dict[str, str]:
    """What the security label is read from: the runtime config's protocol and beaver type (SEMI2K's dealer:
    TrustedFirstParty = rank 0, the server, in 0.9.5 by default; TrustedThirdParty; ignored by ABY3/Cheetah)."""
    return {"protocol": cfg.protocol.name, "beaver_type": cfg.beaver_type.name}


def compiler_options(approx: str) -> Any:
    """The examples' compiler options: x / broadcast(y) as x * broadcast(1 / y) (both); Nimbus also keeps div(sqrt)."""
    copts = libspu.CompilerOptions()
    copts.enable_optimize_denominator_with_broadcast = True
    if approx == "nimbus":
        copts.disable_div_sqrt_rewrite = True
    return copts


def onehot_embed() -> Any:
    """Make flax's Embed take a one-hot input (last axis = vocabulary) as one-hot x table: PUMA's secure embedding;
    while DEVICE_EMBEDS holds the device's token vectors, the word-embedding module returns them instead."""
    original = nn.Embed.__call__
    names = {path[-1] for path in WORD_EMBEDDING.values()}

    def call(self, inputs):
        if DEVICE_EMBEDS and self.name in names:
            return DEVICE_EMBEDS[-1]
        if inputs.ndim == 3 and inputs.shape[-1] == self.num_embeddings:  # [batch, seq, vocab] one-hot
            return jnp.matmul(inputs.astype(self.embedding.dtype), self.embedding)
        return original(self, inputs)

    nn.Embed.__call__ = call
    return original


def load_model(checkpoint: str, model_type: str) -> Any:
    """The Flax model of the checkpoint the main environment saved."""
    classes = {"bert": transformers.FlaxBertModel, "gpt2": transformers.FlaxGPT2LMHeadModel}
    if model_type not in classes:
        raise ValueError(f"model_type {model_type!r} has no SPU forward here; choices: {sorted(classes)}")
    return classes[model_type].from_pretrained(checkpoint, from_pt=True)


def run_parties(executable: Any, shares: list[list[Any]], cfg: Any, n: int,
                recv_timeout_s: float) -> list[list[Any]]:
    """One thread per party over in-memory links; every party profiles; returns each party's output shares."""
    desc = libspu.link.Desc()
    # A party waits for its peer's message as long as the peer computes (a BERT-base one-hot embedding takes
    # minutes on a busy 2-core host); yacl's default receive timeout would abort the run instead.
    desc.recv_timeout_ms = int(recv_timeout_s * 1000)
    for rank in range(n):
        desc.add_party(f"id_{rank}", f"thread_{rank}")
    results: list[Any] = [None] * n
    errors: list[BaseException] = []

    def party(rank: int) -> None:
        try:
            rt = spu_api.Runtime(libspu.link.create_mem(desc, rank), libspu.RuntimeConfig(cfg))
            for idx, share in enumerate(shares):
                rt.set_var(executable.input_names[idx], share[rank])
            rt.run(executable)
            results[rank] = [rt.get_var(name) for name in executable.output_names]
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller
            errors.append(e)

    threads = [threading.Thread(target=party, args=(r,)) for r in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def _split_address(address: str, rank: int) -> tuple[str, int | None]:
    """host:port, [v6]:port or a bare host (port None: a free one is picked where the rank runs here)."""
    text = str(address).strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, ""
    if not host or (port and not port.isdigit()):
        raise ValueError(f"addresses[{rank}]={address!r}: give rank {rank}'s host:port (e.g. 127.0.0.1:9530)")
    return host, int(port) if port else None


def _is_loopback(host: str) -> bool:
    """Whether every address `host` resolves to is loopback (transport.auth.is_loopback's test, stdlib only)."""
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror as exc:
        raise ValueError(f"cannot resolve SPU party host {host!r}: {exc}") from exc
    return bool(infos) and all(ipaddress.ip_address(str(i[4][0]).split("%")[0]).is_loopback for i in infos)


def free_port(host: str) -> int:
    """A port nothing listens on at `host` now (the party binds it a moment later)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def party_addresses(req: dict[str, Any], n: int, local: list[int]) -> list[str]:
    """One host:port per rank: the request's "addresses" (default 127.0.0.1 for every rank), free ports where none
    is given; beyond loopback only with "allow_network" (the runner's parties.allow_network=true)."""
    given = req.get("addresses") or ["127.0.0.1"] * n
    if len(given) != n:
        raise ValueError(f"addresses has {len(given)} entries; SPU {req['protocol']} runs {n} parties: give one "
                         "host:port per rank")
    out = []
    for rank, address in enumerate(given):
        host, port = _split_address(address, rank)
        if not _is_loopback(host) and not req.get("allow_network"):
            raise ValueError(f"addresses[{rank}]={address!r} is not loopback: an SPU party's brpc server listens on "
                             f"its address; refused unless asked for: set {FLAG} (on a network you trust, or "
                             "with TLS; docs/multi-host.md)")
        if port is None:
            if rank not in local or not _is_loopback(host):
                raise ValueError(f"addresses[{rank}]={address!r} has no port: a free one is picked only for a "
                                 "loopback rank this driver starts; give host:port")
            port = free_port(host)
        out.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    return out


def party_command(job_file: Path, exit_with_parent: bool = False) -> list[str]:
    """The command that runs one party from its job file (in a checkout of the same commit, with .venv-spu)."""
    return [sys.executable, "-m", "baselines.spu.party", "--job", str(job_file),
            *(["--exit-with-parent"] if exit_with_parent else [])]


def _stop(procs: dict[int, subprocess.Popen]) -> None:
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"


def run_processes(executable: Any, shares: list[list[Any]], cfg: Any, n: int, req: dict[str, Any]) -> dict[str, Any]:
    """Every party its own process over SPU's brpc link (baselines.spu.party); each job file holds only that rank's
    shares. Returns per-party reports (rank order) from the device's result file, and where each party ran."""
    local = sorted({int(r) for r in req.get("local", range(n))})
    if DEVICE not in local or any(not 0 <= r < n for r in local):
        raise ValueError(f"local={local}: ranks of 0..{n - 1} this driver starts, including the device ({DEVICE}), "
                         "which collects the reports and the output shares")
    addresses = party_addresses(req, n, local)
    prefixes = {int(r): list(p) for r, p in (req.get("launch_prefix") or {}).items()}
    timeout_s = float(req.get("timeout_s", 3600))
    job_dir = Path(req["job_dir"]) if req.get("job_dir") else Path(tempfile.mkdtemp(prefix="spu-parties-"))
    job_dir.mkdir(parents=True, exist_ok=True)
    remote = [r for r in range(n) if r not in local]
    result_file = job_dir / "result.pkl"
    common = {"version": JOB_VERSION, "parties": n, "addresses": addresses, "device": DEVICE,
              "runtime_config": cfg.SerializeToString(), "executable": executable.SerializeToString(),
              "runs": int(req.get("runs", 1)), "recv_timeout_s": timeout_s,
              "connect_timeout_s": timeout_s if remote else 60.0}
    jobs = {}
    for rank in range(n):
        jobs[rank] = job_dir / f"rank{rank}.job"
        own = [{"name": executable.input_names[i], **share_to_plain(share[rank])} for i, share in enumerate(shares)]
        dump_plain({**common, "rank": rank, "inputs": own,
                    "result": str(result_file) if rank == DEVICE else None}, jobs[rank])
    commands = {}
    for rank in remote:
        argv = [".venv-spu/bin/python", *party_command(jobs[rank])[1:]]
        commands[rank] = shlex.join(argv)
        print(f"SPU rank {rank} listens on {addresses[rank]}: copy {jobs[rank]} there (it holds only rank {rank}'s "
              f"shares) and run, in a checkout of this repository at the same commit:\n    {commands[rank]}",
              file=sys.stderr, flush=True)
    procs: dict[int, subprocess.Popen] = {}
    logs = {rank: job_dir / f"rank{rank}.log" for rank in local}
    try:
        for rank in local:
            with open(logs[rank], "wb") as log:
                procs[rank] = subprocess.Popen([*prefixes.get(rank, []), *party_command(jobs[rank], True)],
                                               # the driver's cwd and PYTHONPATH: the checkout (the engine's)
                                               stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
        deadline = time.monotonic() + timeout_s
        while any(p.poll() is None for p in procs.values()):
            failed = [r for r, p in procs.items() if p.returncode not in (None, 0)]
            if failed:
                raise RuntimeError(f"SPU party {failed[0]} exited {procs[failed[0]].returncode}; its log "
                                   f"({logs[failed[0]]}) ends:\n{_tail(logs[failed[0]])}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"SPU parties {[r for r, p in procs.items() if p.poll() is None]} still running "
                                   f"after timeout_s={timeout_s}")
            time.sleep(0.2)
        failed = [r for r, p in procs.items() if p.returncode != 0]
        if failed:
            raise RuntimeError(f"SPU party {failed[0]} exited {procs[failed[0]].returncode}; its log "
                               f"({logs[failed[0]]}) ends:\n{_tail(logs[failed[0]])}")
        reports = load_plain(result_file.read_bytes())["reports"]
    finally:
        _stop(procs)
        for rank in local:  # the parties' own logs (SPU's profiles) into the driver's log
            sys.stderr.write(f"--- SPU party {rank} ---\n{_tail(logs[rank], 10**9)}")
        if not remote and not req.get("job_dir"):
            shutil.rmtree(job_dir, ignore_errors=True)  # job files hold shares: gone once used
    return {"reports": reports, "addresses": addresses, "remote_commands": commands}


def runs_of_reports(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per run: the slowest party's seconds, each party's own link totals (rank order), all parties' ops summed."""
    runs = []
    for i in range(len(reports[0]["runs"])):
        ops: dict[str, dict[str, dict[str, float]]] = {}
        for rep in reports:
            add_ops(ops, rep["runs"][i]["ops"])
        runs.append({"seconds": max(rep["runs"][i]["seconds"] for rep in reports),
                     "party_seconds": [rep["runs"][i]["seconds"] for rep in reports],
                     "links": [rep["runs"][i]["link"] for rep in reports], "ops": ops})
    return runs


def run(req: dict[str, Any]) -> dict[str, Any]:
    """Compile once, run `runs` times; per run: wall seconds, per-party link totals, per-op profile."""
    protocol, approx = str(req["protocol"]).upper(), str(req["approx"])
    cfg = runtime_config(protocol, approx, int(req.get("fxp_fraction_bits", 0)))  # validates the protocol
    n = PARTIES[protocol]
    link = str(req.get("link", "mem"))
    if link not in LINKS:
        raise ValueError(f"link {link!r}; choices: {list(LINKS)} (mem: threads of this process; brpc: one process "
                         "per party)")
    if link == "brpc":  # the placement's errors before minutes of compiling
        party_addresses(req, n, sorted({int(r) for r in req.get("local", range(n))}))
    model = load_model(req["checkpoint"], req["model_type"])
    ids = np.asarray(req["input_ids"], dtype=np.int64)
    embedding = req.get("embedding", "mpc")
    if embedding not in EMBEDDINGS:
        raise ValueError(f"embedding {embedding!r}; choices: {list(EMBEDDINGS)}")
    params = jax.tree_util.tree_map(lambda a: np.asarray(a, dtype=np.float32), model.params)
    if embedding == "device":
        table = params
        for key in WORD_EMBEDDING[req["model_type"]]:
            table = table[key]
        device_input = table["embedding"][ids]  # the device's own table lookup, in the clear on the device
    else:
        # int32 one-hot: Flax casts input_ids to int32 (a no-op here); int -> fixed point is a local shift in SPU.
        device_input = np.eye(int(model.config.vocab_size), dtype=np.int32)[ids]
    output = req["output"]
    onehot_embed()

    batch, seq = ids.shape
    # Shape-derived inputs are public constants: Flax would derive them from input_ids' shape, one-hot here.
    extra = {"attention_mask": np.ones((batch, seq), dtype=np.int32),
             "position_ids": np.broadcast_to(np.arange(seq, dtype=np.int32), (batch, seq))}
    if req["model_type"] == "bert":
        extra["token_type_ids"] = np.zeros((batch, seq), dtype=np.int32)

    def forward(x, params):  # the Flax module itself: the model wrappers read (batch, seq) from input_ids' shape
        if embedding == "mpc":
            return getattr(model.module.apply({"params": params}, input_ids=x, deterministic=True, **extra), output)
        DEVICE_EMBEDS.append(x)  # ids below are a public placeholder: the word-embedding module returns x
        try:
            return getattr(model.module.apply({"params": params}, input_ids=np.zeros((batch, seq), np.int32),
                                              deterministic=True, **extra), output)
        finally:
            DEVICE_EMBEDS.pop()

    args = (device_input, params)
    flat, _ = jax.tree_util.tree_flatten(args)
    with patched(approx):
        plain = np.asarray(forward(*args), dtype=np.float64)  # the approximation in float, for the driver's check
        t0 = time.perf_counter()
        executable, _ = spu_fe.compile(
            spu_fe.Kind.JAX, forward, args, {}, [f"in{i}" for i in range(len(flat))],
            [libspu.Visibility.VIS_SECRET] * len(flat), lambda outs: [f"out{i}" for i in range(len(outs))],
            copts=compiler_options(approx))
        compile_s = time.perf_counter() - t0
    io = spu_api.Io(n, cfg)
    shares = [io.make_shares(np.asarray(a), libspu.Visibility.VIS_SECRET) for a in flat]
    placed: dict[str, Any] = {}
    if link == "brpc":
        placed = run_processes(executable, shares, cfg, n, req)
        runs = runs_of_reports(placed["reports"])
        out_shares = [share_from_plain(rep["outputs"][0]) for rep in placed["reports"]]
        placed = {"addresses": placed["addresses"], "remote_commands": placed["remote_commands"]}
    else:
        runs = []
        for _ in range(int(req.get("runs", 1))):
            with CapturedLog() as cap:
                t0 = time.perf_counter()
                parties = run_parties(executable, shares, cfg, n, float(req.get("timeout_s", 3600)))
                wall = time.perf_counter() - t0
            prof = parse_profile(cap.text)
            if len(prof["links"]) != n:
                raise RuntimeError(f"expected {n} 'Link details' lines from SPU's profile, found "
                                   f"{len(prof['links'])}; log tail: {cap.text[-2000:]}")
            runs.append({"seconds": wall, **prof})
        out_shares = [parties[r][0] for r in range(n)]
    out = np.asarray(io.reconstruct(out_shares), dtype=np.float64)
    return {"output": out.tolist(), "approx_plaintext": plain.tolist(), "parties": n, "compile_s": compile_s,
            "runs": runs, "runtime": runtime_settings(cfg), "link": link, **placed,
            "versions": {"spu": spu.__version__, "jax": jax.__version__, "transformers": transformers.__version__}}


def main() -> None:
    """stdin: the request JSON; stdout: one JSON object (the driver prints nothing else there)."""
    exit_with_parent()
    req = json.load(sys.stdin)
    real_stdout = os.dup(1)
    os.dup2(2, 1)  # library chatter on stdout goes to stderr; the result goes to the real stdout
    if req.get("settings_only"):  # the runtime settings a run of this protocol would use, nothing run
        cfg = runtime_config(str(req["protocol"]).upper(), str(req["approx"]), int(req.get("fxp_fraction_bits", 0)))
        result: dict[str, Any] = {"runtime": runtime_settings(cfg)}
    else:
        result = run(req)
    with os.fdopen(real_stdout, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
