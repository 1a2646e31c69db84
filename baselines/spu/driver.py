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
"""
from __future__ import annotations

import ctypes
import json
import os
import re
import signal
import sys
import tempfile
import threading
import time
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

PARTIES = {"ABY3": 3, "CHEETAH": 2, "SEMI2K": 2}
EMBEDDINGS = ("mpc", "device")
WORD_EMBEDDING = {"bert": ("embeddings", "word_embeddings"), "gpt2": ("transformer", "wte")}  # Flax param paths
DEVICE_EMBEDS: list[Any] = []  # the device's token vectors while forward() traces (embedding=device)
LINK = re.compile(r"Link details: total send bytes (\d+), recv bytes (\d+), send actions (\d+), recv actions (\d+)")
OP = re.compile(r"- (\S+), executed (\d+) times, duration ([0-9.e+-]+)s, send bytes (\d+) recv bytes (\d+), "
                r"send actions (\d+), recv actions (\d+)")
PR_SET_PDEATHSIG = 1  # linux/prctl.h
SECTION = re.compile(r"(HLO|HAL|MPC) profiling: total time")


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


def parse_profile(text: str) -> dict[str, Any]:
    """Per-party link totals (one 'Link details' line per party) and the profiled parties' per-op counts."""
    links = [dict(zip(("send_bytes", "recv_bytes", "send_actions", "recv_actions"), map(int, m.groups())))
             for m in LINK.finditer(text)]
    ops: dict[str, dict[str, dict[str, float]]] = {}
    section = None
    for line in text.splitlines():
        s = SECTION.search(line)
        if s:
            section = s.group(1)
            continue
        m = OP.search(line)
        if m and section:
            name = m.group(1)
            entry = ops.setdefault(section, {}).setdefault(name, {"count": 0, "seconds": 0.0, "send_bytes": 0,
                                                                   "send_actions": 0})
            entry["count"] += int(m.group(2))
            entry["seconds"] += float(m.group(3))
            entry["send_bytes"] += int(m.group(4))
            entry["send_actions"] += int(m.group(6))
    return {"links": links, "ops": ops}


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
        sys.stderr.write(self.text)  # the profile stays in the driver's log too


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


def run(req: dict[str, Any]) -> dict[str, Any]:
    """Compile once, run `runs` times; per run: wall seconds, per-party link totals, per-op profile."""
    protocol, approx = str(req["protocol"]).upper(), str(req["approx"])
    cfg = runtime_config(protocol, approx, int(req.get("fxp_fraction_bits", 0)))  # validates the protocol
    n = PARTIES[protocol]
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
    runs = []
    for _ in range(int(req.get("runs", 1))):
        with CapturedLog() as cap:
            t0 = time.perf_counter()
            parties = run_parties(executable, shares, cfg, n, float(req.get("timeout_s", 3600)))
            wall = time.perf_counter() - t0
        prof = parse_profile(cap.text)
        if len(prof["links"]) != n:
            raise RuntimeError(f"expected {n} 'Link details' lines from SPU's profile, found {len(prof['links'])}; "
                               f"log tail: {cap.text[-2000:]}")
        runs.append({"seconds": wall, **prof})
    out = np.asarray(io.reconstruct(list(parties[r][0] for r in range(n))), dtype=np.float64)
    return {"output": out.tolist(), "approx_plaintext": plain.tolist(), "parties": n, "compile_s": compile_s,
            "runs": runs, "runtime": runtime_settings(cfg),
            "versions": {"spu": spu.__version__, "jax": jax.__version__, "transformers": transformers.__version__}}


def exit_with_parent() -> None:
    """Die with the runner that started this process (Linux PR_SET_PDEATHSIG): an orphaned driver would hold
    the cores for hours, and a Python watcher thread cannot run while SPU's C++ code holds the GIL."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() == 1:  # the runner died before the call above
        os._exit(3)


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
