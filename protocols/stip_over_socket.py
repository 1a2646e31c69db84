"""STIP over the socket runtime: the device embeds and permutes, the cloud serves transformed weights.

Device side: `stip.DataOwner` (embedding module + pi + pi_c). Cloud side: the transformed
checkpoint loaded with the stock transformers class, wrapped in `stip.ModelServer`, in its own
process. `RemoteModelServer` lets `stip.generate` run over the socket unchanged.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import torch
from tqdm.auto import tqdm

import stip
from protocols.accuracy import token_agreement_row
from protocols.cloud_and_traffic import (
    Stopwatch,
    configure_threads,
    greedy_tokens,
    load_for_cloud,
    output_bytes,
    payload_bytes,
    shape_bytes,
    to_device,
)
from protocols.contract import ModelSpec, ProtocolConfig, Row, RunRequest
from protocols.memory import device_memory_rows, embedding_module, module_bytes
from protocols.privacy import dcor_both, dcor_parameters, dcor_parameters_samples
from protocols.request_loop import CloudHandler, SocketProtocol
from protocols.speculation import SpeculativeConfig, check_speculative_request, per_token_latency
from protocols.vocabulary import STIP_PHASES
from protocols.workload import generation_prompt
from transport import CloudClient, checks
from transport.cloud_server import current_caller
from transport.link import NetworkProfile

log = logging.getLogger(__name__)
RETURN_MODES = ("full", "topk")


@dataclass
class StipConfig(SpeculativeConfig):
    """`protocol=stip` (configs/protocol/stip.yaml)."""

    # Prompt lookup as STIP's device drafts (the values every committed run used): up to 16 drafted tokens from the
    # latest match of up to 3 earlier tokens (then down to 1), copied on past its end; full cloud keeps transformers'.
    draft_tokens: int = 16
    max_ngram: int = 3
    draft_latest: bool = True
    return_mode: str = "full"  # full permuted logits (forward: every position) | topk (the last position's top-k)
    top_k: int = 5  # k of return_mode=topk
    log_dcor: bool = True  # dcor rows between plaintext embeddings and the uplink tensor
    dcor_vectors: int = 16  # vectors averaged in the per-vector convention
    dcor_samples: int = 256  # rows kept in the sample-wise convention
    param_dcor: bool = False  # parameter dcor rows (Fig. 6a)
    param_tensors: int = 8  # weight matrices compared for the parameter dcor

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.return_mode not in RETURN_MODES:
            raise ValueError(f"protocol.return_mode={self.return_mode!r}; choose one of {list(RETURN_MODES)}")
        for name in ("top_k", "dcor_vectors", "dcor_samples", "param_tensors"):
            if getattr(self, name) < 1:
                raise ValueError(f"protocol.{name}={getattr(self, name)} must be >= 1")


class StipCloudHandler(CloudHandler):
    """The model server in the cloud process: transformed weights only, one KV cache per session.

    Sessions belong to the connection that opened them (`transport.cloud_server.current_caller`) and are
    dropped when it closes, when unused for the server's session_ttl_s, and capped per connection.
    """

    remote_methods = ("infer", "open_session", "close_session")

    def __init__(self, checkpoint: str, head: str, threads: int | None = None, device: str = "cpu") -> None:
        configure_threads(threads)
        self.server = stip.ModelServer(load_for_cloud(checkpoint, head, device))

    def apply_limits(self, limits: Any) -> None:
        """Take the session limits of the serving transport (transport.limits.ServerLimits).

        The global cap leaves room for every connection's own sessions, so no client can lock others out.
        """
        self.server.session_ttl_s = limits.session_ttl_s
        self.server.max_sessions_per_owner = limits.max_sessions_per_connection
        self.server.max_sessions = limits.max_connections * limits.max_sessions_per_connection

    def connection_closed(self, caller: str) -> None:
        """A client left: its sessions go with it."""
        self.server.close_owner_sessions(caller)

    def infer(self, tensors: dict[str, torch.Tensor], session: str | None = None, last_only: bool = False,
              top_k: int | None = None, key_id: str | None = None, last_n: int | None = None,
              cache_length: int | None = None, **_: Any) -> tuple[dict, dict]:
        """One forward pass in permuted space; every tensor that came goes to the server, which judges it
        (and refuses a device whose key id is not the checkpoint's). Speculation: `last_n` positions come
        back, and `cache_length` crops the session's cache first (stip.ModelServer.infer)."""
        if "inputs_embeds" not in tensors:
            raise ValueError(f"infer needs an 'inputs_embeds' tensor, got {sorted(tensors)}")
        checks.finite("inputs_embeds", tensors["inputs_embeds"])
        last_only = checks.meta_bool("last_only", last_only)
        top_k = checks.meta_int("top_k", top_k, optional=True)
        key_id = checks.meta_str("key_id", key_id, optional=True)
        speculation = {"last_n": checks.meta_int("last_n", last_n, optional=True),
                       "cache_length": checks.meta_int("cache_length", cache_length, minimum=0, optional=True)}
        session = checks.meta_str("session", session, optional=True)
        if session is not None:
            self.server.check_session(session, current_caller())
        # Every tensor that came (the server refuses names it does not take) and the speculation options given.
        inputs: dict[str, Any] = {**to_device(tensors, self.server.model),
                                  **{k: v for k, v in speculation.items() if v is not None}}
        out = self.server.infer(session=session, last_only=last_only, top_k=top_k, key_id=key_id, **inputs)
        return self.reply(out)

    def open_session(self, tensors: dict, **_: Any) -> tuple[dict, dict]:
        """Start a generation session (KV cache kept here), bound to the asking connection."""
        return {}, {"session": self.server.open_session(current_caller())}

    def close_session(self, tensors: dict, session: str | None = None, **_: Any) -> tuple[dict, dict]:
        """Drop a session's KV cache (only the connection that opened it may)."""
        session = checks.meta_str("session", session, optional=True)
        if session is not None:
            self.server.close_session(session, current_caller())
        return {}, {}


def make_cloud_handler(checkpoint: str, head: str, threads: int | None = None, device: str = "cpu") -> StipCloudHandler:
    """Factory imported by the cloud process."""
    return StipCloudHandler(checkpoint, head, threads, device)


class RemoteModelServer:
    """A `stip.ModelServer` look-alike whose every call crosses the socket; records per-call timings."""

    def __init__(self, cloud: CloudClient) -> None:
        self.cloud = cloud
        self.calls: list[dict[str, float]] = []  # infer calls: link/compute timings, socket and shape bytes
        self.link_s = 0.0  # measured uplink + downlink time of every call (sessions included)

    def _call(self, op: str, tensors: dict, meta: dict) -> tuple[dict, dict]:
        out = self.cloud.call(op, tensors, meta)
        self.link_s += self.cloud.last_timing["uplink"] + self.cloud.last_timing["downlink"]
        return out

    def open_session(self) -> str:
        """Open a KV-cache session on the cloud."""
        return self._call("open_session", {}, {})[1]["session"]

    def close_session(self, session: str) -> None:
        """Close a session on the cloud."""
        self._call("close_session", {}, {"session": session})

    def infer(self, inputs_embeds: torch.Tensor, session: str | None = None, last_only: bool = False,
              top_k: int | None = None, key_id: str | None = None, last_n: int | None = None,
              cache_length: int | None = None, **plain: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Send what the device's request holds (permuted embeddings, plain inputs, key id); return outputs."""
        tensors = {"inputs_embeds": inputs_embeds.contiguous(),
                   **{k: v.contiguous() for k, v in plain.items() if v is not None}}
        meta = {"session": session, "last_only": bool(last_only), "top_k": int(top_k) if top_k else None,
                "key_id": key_id, "last_n": last_n, "cache_length": cache_length}
        before = self.cloud.meter.snapshot()
        out, _ = self._call("infer", tensors, meta)
        delta = self.cloud.meter.delta(before, self.cloud.meter.snapshot())
        self.calls.append({**self.cloud.last_timing, "bytes_up": delta["bytes_up"],
                           "bytes_down": delta["bytes_down"], "link_time_up": delta["link_time_up"],
                           "link_time_down": delta["link_time_down"], "expected_up": payload_bytes(tensors),
                           "expected_down": payload_bytes(out),
                           "rounds": min(delta["messages_up"], delta["messages_down"])})
        return out


class TimedDataOwner:
    """Wraps a `stip.DataOwner` so each request's device phases (embed, permute, recover) are timed.

    `request` is the library's own `DataOwner.request` run on this wrapper: the library decides
    what is sent, and its calls to `embed` / `permute` land on the timed methods below.
    """

    def __init__(self, owner: Any) -> None:
        self._owner = owner
        self.steps: list[dict[str, float]] = []
        self.last_embeddings: torch.Tensor | None = None  # plaintext, for the uplink dcor rows

    def __getattr__(self, name: str) -> Any:
        return getattr(self._owner, name)

    def _add(self, key: str, seconds: float) -> None:
        self.steps[-1][key] = self.steps[-1].get(key, 0.0) + seconds

    def as_data_owner(self) -> stip.DataOwner:
        """This wrapper typed as what it stands in for: it forwards every attribute it does not time."""
        return cast(stip.DataOwner, self)

    def request(self, inputs: torch.Tensor, **kwargs: Any) -> dict[str, Any]:
        """The library's request builder, with this wrapper's timed embed and permute."""
        return stip.DataOwner.request(self.as_data_owner(), inputs, **kwargs)

    def embed(self, inputs: torch.Tensor, **device_inputs: torch.Tensor) -> torch.Tensor:
        """Embedding starts a new step."""
        self.steps.append({"start": time.perf_counter()})
        c, t = time.process_time(), time.perf_counter()
        out = self._owner.embed(inputs, **device_inputs)
        self._add("device_embed", time.perf_counter() - t)
        self._add("cpu:device_embed", time.process_time() - c)  # process CPU time beside the wall time
        self.last_embeddings = out
        return out

    def permute(self, e: torch.Tensor) -> torch.Tensor:
        c, t = time.process_time(), time.perf_counter()
        out = self._owner.permute(e)
        self._add("device_permute", time.perf_counter() - t)
        self._add("cpu:device_permute", time.process_time() - c)
        return out

    def encode(self, inputs: torch.Tensor, **device_inputs: torch.Tensor) -> torch.Tensor:
        return self.permute(self.embed(inputs, **device_inputs))

    def decode(self, outputs: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        out = self._owner.decode(outputs, **kwargs)
        self._add("device_recover", time.perf_counter() - t)
        return out

    def next_token(self, outputs: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Token choice in the permuted vocabulary: the generation step's `device_recover` phase."""
        t = time.perf_counter()
        out = self._owner.next_token(outputs, *args, **kwargs)
        self._add("device_recover", time.perf_counter() - t)
        return out


class StipProtocol(SocketProtocol[StipConfig]):
    """STIP: permuted embeddings up, permuted outputs down; the cloud never sees pi or pi_c."""

    config_class: ClassVar[type[ProtocolConfig]] = StipConfig
    factory: ClassVar[str] = "protocols.stip_over_socket:make_cloud_handler"

    def prepare(self, model: ModelSpec, request: RunRequest) -> dict:
        """Transform the model, save the cloud's checkpoint in the run folder, keep the device's part."""
        plain = model.build()
        developer = stip.ModelDeveloper(plain, seed=request.seed)
        cloud_model = developer.cloud_model()
        ckpt = request.workdir / "cloud_checkpoint"
        cloud_model.save_pretrained(ckpt)
        self.developer = developer
        self.device = developer.data_owner()
        self.plain_model = plain
        self.cloud_model = cloud_model
        self._sent: tuple[torch.Tensor, torch.Tensor] | None = None
        self._input_ids: torch.Tensor | None = None
        return {"checkpoint": str(ckpt), "head": model.head, "threads": self.cfg.cloud_threads}

    def memory_rows(self, model: ModelSpec, request: RunRequest) -> list[Row]:
        """The device's footprint (Fig. 8): embedding module materialised and measured, tokenizer RSS."""
        return device_memory_rows(model, request.seed)

    def device_send(self, inputs: dict, sw: Stopwatch) -> tuple[dict, dict]:
        """Send exactly what `DataOwner.request` builds (the family embeds, sends or refuses each input)."""
        key = self.device.family.input_name
        device = TimedDataOwner(self.device)
        top_k = self.cfg.top_k if self.cfg.return_mode == "topk" else None
        with torch.no_grad():
            request = device.request(inputs[key], top_k=top_k, **{k: v for k, v in inputs.items() if k != key})
        for phase in ("device_embed", "device_permute"):
            sw.add(phase, device.steps[-1][phase])
            sw.cpu[phase] = sw.cpu.get(phase, 0.0) + device.steps[-1][f"cpu:{phase}"]
        if device.last_embeddings is None:  # embed() sets it on every request
            raise RuntimeError("the device built a request without embedding its inputs")
        self._sent = (device.last_embeddings, request["inputs_embeds"])
        self._input_ids = inputs.get("input_ids")  # a decoder classifier pools on the device
        tensors = {k: v.contiguous() for k, v in request.items() if isinstance(v, torch.Tensor)}
        meta = {k: v for k, v in request.items() if not isinstance(v, torch.Tensor)}
        return tensors, meta

    def device_receive(self, tensors: dict, sw: Stopwatch) -> dict:
        """Un-permute the outputs with pi_c / pi (and pool a decoder classifier's scores)."""
        with torch.no_grad(), sw.phase("device_recover"):
            return dict(self.device.decode(tensors, input_ids=self._input_ids))

    def accuracy_rows(self, outputs: dict, reference: dict, inputs: dict, repeat: int) -> list[Row]:
        """Full outputs: protocols.accuracy; top-k: the recovered top-1 token against the plaintext model's argmax."""
        if self.cfg.return_mode == "full":
            return super().accuracy_rows(outputs, reference, inputs, repeat)
        reference_token = reference["logits"][:, -1].argmax(-1, keepdim=True)
        return [token_agreement_row(outputs["topk_indices"][:, :1], reference_token, repeat, "host")]

    def privacy_rows(self, repeat: int) -> list[Row]:
        """dcor between the plaintext embeddings and what crossed the wire (both conventions)."""
        if self._sent is None or repeat != 0 or not self.cfg.log_dcor:
            return []
        e, x = self._sent
        vals = dcor_both(e, x, seed=repeat, n_vectors=self.cfg.dcor_vectors, n_samples=self.cfg.dcor_samples)
        return [Row("embeddings", metric, v, "host", repeat=repeat) for metric, v in vals.items()]

    def extra_rows(self, model: ModelSpec, request: RunRequest) -> list[Row]:
        """Measured on-device memory (embedding module) and, on request, parameter dcor (Fig. 6a)."""
        rows = [Row("device_embedding", "memory", module_bytes(embedding_module(self.plain_model)), "host")]
        if self.cfg.param_dcor:
            rows += parameter_dcor_rows(self.plain_model.state_dict(), self.cloud_model.state_dict(),
                                        self.cfg.param_tensors, request.seed, hidden=model.hidden_size)
        return rows

    def expected_bytes(self, model: ModelSpec, request: RunRequest) -> tuple[int, int]:
        """Up: permuted embeddings (+ mask); down: full logits or hidden states, or the last position's top-k."""
        b, t = request.batch_size, model.tokens_per_sample(request.seq_len)
        up = shape_bytes((b, t, model.hidden_size), model.torch_dtype)
        if model.model_type != "vit":
            up += shape_bytes((b, t), torch.int64) * (2 if model.model_type == "bert" else 1)
        if self.cfg.return_mode == "topk":
            k = self.cfg.top_k
            return up, shape_bytes((b, k), model.torch_dtype) + shape_bytes((b, k), torch.int64)
        return up, output_bytes(model, request)

    def generate(self, cloud: CloudClient, model: ModelSpec, network: NetworkProfile,
                 request: RunRequest) -> list[Row]:
        """Greedy generation, one round trip per token (or per accepted draft run with `speculate`); rows."""
        if model.head != "causal_lm":
            raise ValueError(f"task generate needs a causal LM; model {model.name!r} has head {model.head!r}")
        check_speculative_request(self.cfg, request.batch_size)
        top_k = self.cfg.top_k if self.cfg.return_mode == "topk" else None
        drafter = self.cfg.drafter(model.tokenizer)
        n = int(request.max_new_tokens)
        rows: list[Row] = []
        for repeat, seed in request.repeats_with_warmup():
            ids = generation_prompt(model, request, repeat, seed)
            device, server = TimedDataOwner(self.device), RemoteModelServer(cloud)
            stats = stip.GenerationStats()
            token_times: list[float] = []
            bar = tqdm(total=n, desc=f"generate {model.name}", unit="tok", leave=False, disable=n < 16)

            def on_token(step: int, ids: torch.Tensor, token_times: list[float] = token_times, bar: tqdm = bar) -> None:
                token_times.append(time.perf_counter())
                bar.update(1)

            before = cloud.meter.snapshot()
            start = time.perf_counter()
            with torch.no_grad():
                tokens = stip.generate(device.as_data_owner(), server, ids, n, do_sample=False, return_topk=top_k,
                                       on_token=on_token, speculate=drafter, stats=stats)
            end = time.perf_counter()
            bar.close()
            if repeat < 0:
                continue
            delta = cloud.meter.delta(before, cloud.meter.snapshot())
            rounds = [d + 1 for d in stats.accepted]  # tokens chosen per forward round trip
            rows += generation_rows(device.steps, server.calls, token_times, rounds, start, int(ids.shape[1]),
                                    repeat)
            rows += generation_totals(end - start, end - start - server.link_s, delta, network, request, repeat)
            rows += speculation_rows(server.calls, stats, delta, n, repeat)
            if repeat == 0 or request.inputs == "prompt_suite":
                reference = greedy_tokens(self.plain_model, ids, n)
                rows.append(token_agreement_row(torch.as_tensor(tokens)[:, -n:], reference, repeat, "host"))
        return rows


def generation_totals(wall_s: float, compute_s: float, delta: dict, network: NetworkProfile, request: RunRequest,
                      repeat: int) -> list[Row]:
    """Phase `generate`: the whole request's latency (socket and modelled), bytes both sides sent, rounds."""
    rounds = min(delta["messages_up"], delta["messages_down"])
    n_bytes = delta["bytes_up"] + delta["bytes_down"]
    return [
        Row("generate", "latency", wall_s, "socket", repeat=repeat),
        Row("generate", "latency", compute_s + network.time(rounds, n_bytes), "modelled", repeat=repeat),
        Row("generate", "bytes", n_bytes, "socket", repeat=repeat),
        Row("generate", "rounds", rounds, "socket", repeat=repeat),
        Row("generate", "throughput", request.batch_size * request.max_new_tokens / wall_s, "socket",
            repeat=repeat),
    ]


def speculation_rows(calls: list[dict], stats: stip.GenerationStats, delta: dict, new_tokens: int,
                     repeat: int) -> list[Row]:
    """Round trips and bytes per generated token, drafts sent and accepted per round trip (vocabulary.py)."""
    if stats.round_trips != len(calls):
        raise RuntimeError(f"stip.generate counted {stats.round_trips} round trips but {len(calls)} infer calls "
                           "crossed the socket")
    return [
        Row("generate", "rounds_per_token", sum(c["rounds"] for c in calls) / new_tokens, "socket", repeat=repeat),
        Row("generate", "drafted_tokens", sum(stats.drafted) / stats.round_trips, "host", repeat=repeat),
        Row("generate", "accepted_tokens", sum(stats.accepted) / stats.round_trips, "host", repeat=repeat),
        Row("uplink", "bytes_per_token", delta["bytes_up"] / new_tokens, "socket", repeat=repeat),
        Row("downlink", "bytes_per_token", delta["bytes_down"] / new_tokens, "socket", repeat=repeat),
    ]


def mean_steps(steps: list[dict[str, float]], keys: tuple[str, ...]) -> dict[str, float]:
    """Mean per step of each key present in the steps."""
    out: dict[str, float] = {}
    for k in keys:
        vals = [s[k] for s in steps if k in s]
        if vals:
            out[k] = sum(vals) / len(vals)
    return out


def generation_rows(steps: list[dict], calls: list[dict], token_times: list[float], rounds: list[int], start: float,
                    prompt_len: int, repeat: int) -> list[Row]:
    """Per-token latency (phase `token`, seq_len = context length) and the mean breakdown of decode round trips.

    `rounds` holds the tokens chosen per round trip (all 1 without speculation). Token i's latency
    runs from token i-1's choice to token i's (prefill: from the first embedding; tokens of one round
    trip come together); the phase breakdown pairs the i-th device request with the i-th cloud call,
    and a round trip's total runs to its last token; per-call traffic rows (uplink, downlink) are
    means over decode round trips; `per_token` latency is defined in protocols/vocabulary.py.
    """
    rows: list[Row] = []
    steps = [{**step, **call} for step, call in zip(steps, calls)]  # a trailing encode with no call is dropped
    first = steps[0]["start"] if steps else start
    ends, count = [], 0
    for n_tokens in rounds:
        count += n_tokens
        ends.append(token_times[count - 1])
    bounds = [first] + ends
    for i, step in enumerate(steps[: len(ends)]):
        step["total"] = bounds[i + 1] - bounds[i]
    if token_times:
        rows.append(Row("prefill", "latency", token_times[0] - first, "socket", repeat=repeat, seq_len=prompt_len))
    for i in range(1, len(token_times)):
        rows.append(Row("token", "latency", token_times[i] - token_times[i - 1], "socket", repeat=repeat,
                        seq_len=prompt_len + i))
    decode = steps[1:] or steps
    means = mean_steps(decode, STIP_PHASES + ("bytes_up", "bytes_down", "link_time_up", "link_time_down",
                                              "expected_up", "expected_down"))
    for k in STIP_PHASES:
        if k in means:
            rows.append(Row(k, "latency", means[k], "socket" if k in ("uplink", "cloud_compute", "downlink")
                            else "host", repeat=repeat))
    rows.append(Row("per_token", "latency", per_token_latency(token_times, rounds[0] if rounds else 1), "socket",
                    repeat=repeat))
    for key, phase, source in (("bytes_up", "uplink", "socket"), ("bytes_down", "downlink", "socket"),
                               ("expected_up", "uplink", "shapes"), ("expected_down", "downlink", "shapes")):
        if key in means:
            rows.append(Row(phase, "bytes", means[key], source, repeat=repeat))
    for key, phase in (("link_time_up", "uplink"), ("link_time_down", "downlink")):
        if key in means:
            rows.append(Row(phase, "latency", means[key], "modelled", repeat=repeat))
    return rows


def parameter_dcor_rows(original: dict, transformed: dict, max_tensors: int, seed: int,
                        hidden: int | None = None) -> list[Row]:
    """Per-vector dcor between original and transformed 2-D weights (the paper's Fig. 6a) and, given the hidden
    size, the bias-corrected sample-wise dcor of the same matrices (metric dcor_samples_u) where one axis is
    that wide."""
    rows: list[Row] = []
    names = [k for k, v in original.items() if v.ndim == 2 and k in transformed
             and transformed[k].shape == v.shape and "embed" not in k and "wte" not in k and "wpe" not in k]
    for j, name in enumerate(names[:max_tensors]):
        rows.append(Row("parameters", "dcor", dcor_parameters(original[name], transformed[name], seed=seed), "host",
                        repeat=j))
        if hidden is not None and hidden in original[name].shape:
            rows.append(Row("parameters", "dcor_samples_u", dcor_parameters_samples(
                original[name], transformed[name], hidden, seed=seed), "host", repeat=j))
    return rows
