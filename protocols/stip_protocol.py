"""STIP over the socket runtime: the device embeds and permutes, the cloud serves transformed weights.

Device side: `stip.DataOwner` (embedding module + pi + pi_c). Cloud side: the transformed
checkpoint loaded with the stock transformers class, wrapped in `stip.ModelServer`, in its own
process. `RemoteModelServer` lets `stip.generate` run over the socket unchanged.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import torch
from tqdm.auto import tqdm

from protocols.contract import ModelSpec, Row, RunRequest
from protocols.memory import embedding_module, module_bytes
from protocols.privacy import dcor_both, dcor_parameters
from protocols.common import (
    Stopwatch, configure_threads, load_for_cloud, output_bytes, payload_bytes, shape_bytes, spec_dtype,
)
from protocols.base import SocketProtocol, mean_steps

log = logging.getLogger(__name__)

DEVICE_KEYS = ("device_embed", "device_permute", "uplink", "cloud_compute", "downlink", "device_recover")


class StipCloudHandler:
    """The model server in the cloud process: transformed weights only, one KV cache per session.

    Sessions belong to the connection that opened them (`transport.cloud.current_caller`) and are
    dropped when it closes, when unused for the server's session_ttl_s, and capped per connection.
    """

    remote_methods = ("infer", "open_session", "close_session")

    def __init__(self, checkpoint: str, head: str, threads: int | None = None) -> None:
        import stip

        configure_threads(threads)
        self.server = stip.ModelServer(load_for_cloud(checkpoint, head))

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
              top_k: int | None = None, key_id: str | None = None, **_: Any) -> tuple[dict, dict]:
        """One forward pass in permuted space; every tensor that came goes to the server, which judges it
        (and refuses a device whose key id is not the checkpoint's)."""
        from transport import checks
        from transport.cloud import current_caller

        if "inputs_embeds" not in tensors:
            raise ValueError(f"infer needs an 'inputs_embeds' tensor, got {sorted(tensors)}")
        checks.finite("inputs_embeds", tensors["inputs_embeds"])
        last_only = checks.meta_bool("last_only", last_only)
        top_k = checks.meta_int("top_k", top_k, optional=True)
        key_id = checks.meta_str("key_id", key_id, optional=True)
        if checks.meta_str("session", session, optional=True) is not None:
            self.server.check_session(session, current_caller())
        out = self.server.infer(**tensors, session=session, last_only=last_only, top_k=top_k, key_id=key_id)
        return {k: v.contiguous() for k, v in out.items() if isinstance(v, torch.Tensor)}, {}

    def open_session(self, tensors: dict, **_: Any) -> tuple[dict, dict]:
        """Start a generation session (KV cache kept here), bound to the asking connection."""
        from transport.cloud import current_caller

        return {}, {"session": self.server.open_session(current_caller())}

    def close_session(self, tensors: dict, session: str | None = None, **_: Any) -> tuple[dict, dict]:
        """Drop a session's KV cache (only the connection that opened it may)."""
        from transport import checks
        from transport.cloud import current_caller

        if checks.meta_str("session", session, optional=True) is not None:
            self.server.close_session(session, current_caller())
        return {}, {}


def make_cloud_handler(checkpoint: str, head: str, threads: int | None = None) -> StipCloudHandler:
    """Factory imported by the cloud process."""
    return StipCloudHandler(checkpoint, head, threads)


class RemoteModelServer:
    """A `stip.ModelServer` look-alike whose every call crosses the socket; records per-call timings."""

    def __init__(self, cloud: Any) -> None:
        self.cloud = cloud
        self.calls: list[dict[str, float]] = []

    def open_session(self) -> str:
        """Open a KV-cache session on the cloud."""
        return self.cloud.call("open_session", {}, {})[1]["session"]

    def close_session(self, session: str) -> None:
        """Close a session on the cloud."""
        self.cloud.call("close_session", {}, {"session": session})

    def infer(self, inputs_embeds: torch.Tensor, session: str | None = None, last_only: bool = False,
              top_k: int | None = None, key_id: str | None = None,
              **plain: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Send what the device's request holds (permuted embeddings, plain inputs, key id); return outputs."""
        tensors = {"inputs_embeds": inputs_embeds.contiguous(),
                   **{k: v.contiguous() for k, v in plain.items() if v is not None}}
        meta = {"session": session, "last_only": bool(last_only), "top_k": int(top_k) if top_k else None,
                "key_id": key_id}
        before = self.cloud.meter.snapshot()
        out, _ = self.cloud.call("infer", tensors, meta)
        delta = self.cloud.meter.delta(before, self.cloud.meter.snapshot())
        self.calls.append({**{k: v for k, v in self.cloud.last_timing.items()},
                           "bytes_up": delta["bytes_up"], "bytes_down": delta["bytes_down"],
                           "link_time_up": delta["link_time_up"], "link_time_down": delta["link_time_down"],
                           "expected_up": payload_bytes(tensors), "expected_down": payload_bytes(out)})
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

    def request(self, inputs: torch.Tensor, **kwargs: Any) -> dict[str, Any]:
        """The library's request builder, with this wrapper's timed embed and permute."""
        import stip

        return stip.DataOwner.request(self, inputs, **kwargs)

    def embed(self, inputs: torch.Tensor, **device_inputs: torch.Tensor) -> torch.Tensor:
        """Embedding starts a new step."""
        self.steps.append({"start": time.perf_counter()})
        t = time.perf_counter()
        out = self._owner.embed(inputs, **device_inputs)
        self._add("device_embed", time.perf_counter() - t)
        self.last_embeddings = out
        return out

    def permute(self, e: torch.Tensor) -> torch.Tensor:
        t = time.perf_counter()
        out = self._owner.permute(e)
        self._add("device_permute", time.perf_counter() - t)
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


def greedy_reference(model: torch.nn.Module, input_ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """Greedy tokens of the plaintext model with its own KV cache (the accuracy reference)."""
    with torch.no_grad():
        out = model(input_ids=input_ids, use_cache=True)
        tokens = []
        for _ in range(max_new_tokens):
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            tokens.append(nxt)
            out = model(input_ids=nxt, past_key_values=out.past_key_values, use_cache=True)
    return torch.cat(tokens, dim=1)


class StipProtocol(SocketProtocol):
    """STIP: permuted embeddings up, permuted outputs down; the cloud never sees pi or pi_c."""

    name = "stip"
    factory = "protocols.stip_protocol:make_cloud_handler"

    def prepare(self, model: ModelSpec, request: RunRequest) -> dict:
        """Transform the model, save the cloud's checkpoint in the run folder, keep the device's part."""
        import stip

        from protocols.common import workdir

        plain = model.build()
        developer = stip.ModelDeveloper(plain, seed=request.seed)
        cloud_model = developer.cloud_model()
        ckpt = workdir(request) / "cloud_checkpoint"
        cloud_model.save_pretrained(ckpt)
        self.developer = developer
        self.device = developer.data_owner()
        self.plain_model = plain
        self.cloud_model = cloud_model
        self._sent: tuple[torch.Tensor, torch.Tensor] | None = None
        self._input_ids: torch.Tensor | None = None
        return {"checkpoint": str(ckpt), "head": model.extra["head"], "threads": self.cfg.get("cloud_threads")}

    def run(self, model: ModelSpec, network: Any, request: RunRequest) -> list[Row]:
        """As every socket protocol; generation rows are labelled with the return mode (approx column)."""
        rows = super().run(model, network, request)
        if request.task == "generate":
            top_k = request.options.get("top_k") if request.options.get("return") == "topk" else None
            for r in rows:
                r.approx = r.approx or (f"return_topk{top_k}" if top_k else "return_full")
        return rows

    def memory_rows(self, model: ModelSpec, request: RunRequest) -> list[Row]:
        """The device's footprint (Fig. 8): embedding module materialised and measured, tokenizer RSS."""
        from protocols.memory import device_memory_rows

        return device_memory_rows(model, request.seed)

    def device_send(self, inputs: dict, sw: Stopwatch) -> tuple[dict, dict]:
        """Send exactly what `DataOwner.request` builds (the family embeds, sends or refuses each input)."""
        key = self.device.family.input_name
        device = TimedDataOwner(self.device)
        with torch.no_grad():
            request = device.request(inputs[key], **{k: v for k, v in inputs.items() if k != key})
        for phase in ("device_embed", "device_permute"):
            sw.times[phase] = sw.times.get(phase, 0.0) + device.steps[-1][phase]
        self._sent = (device.last_embeddings, request["inputs_embeds"])
        self._input_ids = inputs.get("input_ids")  # a decoder classifier pools on the device
        tensors = {k: v.contiguous() for k, v in request.items() if isinstance(v, torch.Tensor)}
        meta = {k: v for k, v in request.items() if not isinstance(v, torch.Tensor)}
        return tensors, {"top_k": None, **meta}

    def device_receive(self, tensors: dict, sw: Stopwatch) -> dict:
        """Un-permute the outputs with pi_c / pi (and pool a decoder classifier's scores)."""
        with torch.no_grad(), sw.phase("device_recover"):
            return dict(self.device.decode(tensors, input_ids=self._input_ids))

    def privacy_rows(self, repeat: int) -> list[Row]:
        """dcor between the plaintext embeddings and what crossed the wire (both conventions)."""
        if self._sent is None or repeat != 0 or not self.cfg.get("log_dcor", True):
            return []
        e, x = self._sent
        vals = dcor_both(e, x, seed=repeat, n_vectors=int(self.cfg.get("dcor_vectors", 16)),
                         n_samples=int(self.cfg.get("dcor_samples", 256)))
        return [Row("uplink", metric, v, repeat=repeat) for metric, v in vals.items()]

    def extra_rows(self, model: ModelSpec, request: RunRequest) -> list[Row]:
        """Measured on-device memory (embedding module) and, on request, parameter dcor (Fig. 6a)."""
        rows = [Row("device_embedding", "memory", module_bytes(embedding_module(self.plain_model)))]
        if request.options.get("param_dcor"):
            rows += parameter_dcor_rows(self.plain_model.state_dict(), self.cloud_model.state_dict(),
                                        int(request.options.get("param_dcor_max", 8)), request.seed)
        return rows

    def expected_bytes(self, model: ModelSpec, request: RunRequest) -> tuple[int, int]:
        """Up: permuted embeddings (+ mask); down: full logits or hidden states."""
        dtype = spec_dtype(model)
        b, t = request.batch_size, model.extra["tokens_per_sample"](request.seq_len)
        h = model.extra["hidden_size"]
        up = shape_bytes((b, t, h), dtype)
        if model.model_type != "vit":
            up += shape_bytes((b, t), torch.int64) * (2 if model.model_type == "bert" else 1)
        down = output_bytes(model, request)
        return up, down

    def generate(self, cloud: Any, model: ModelSpec, request: RunRequest) -> list[Row]:
        """Greedy generation with one round trip per token; per-token latency and breakdown rows."""
        import stip

        if model.extra["head"] != "causal_lm":
            raise ValueError(f"task generate needs a causal LM; model {model.name!r} has head {model.extra['head']!r}")
        top_k = request.options.get("top_k") if request.options.get("return") == "topk" else None
        n = int(request.max_new_tokens)
        if n < 1:
            raise ValueError("task generate needs run.max_new_tokens >= 1")
        rows: list[Row] = []
        for i in range(request.warmup + request.repeats):
            repeat = i - request.warmup
            ids = model.make_inputs(request.batch_size, request.seq_len, request.seed + i)["input_ids"]
            device, server = TimedDataOwner(self.device), RemoteModelServer(cloud)
            token_times: list[float] = []
            bar = tqdm(total=n, desc=f"generate {model.name}", unit="tok", leave=False, disable=n < 16)

            def on_token(step: int, ids: torch.Tensor) -> None:
                token_times.append(time.perf_counter())
                bar.update(1)

            start = time.perf_counter()
            with torch.no_grad():
                tokens = stip.generate(device, server, ids, n, do_sample=False, return_topk=top_k, on_token=on_token)
            end = time.perf_counter()
            bar.close()
            if repeat < 0:
                continue
            rows += generation_rows(device.steps, server.calls, token_times, start, end, request, repeat)
            if top_k:
                vocab = model.extra["vocab_size"]
                full = shape_bytes((request.batch_size, 1, vocab), spec_dtype(model))
                rows.append(Row("downlink_full_expected", "bytes", full, repeat=repeat))
            if repeat == 0:
                ref = greedy_reference(self.plain_model, ids, n)
                new = torch.as_tensor(tokens)[:, -n:] if torch.as_tensor(tokens).shape[-1] >= n else tokens
                rows.append(Row("output", "top1_agreement", float((new == ref).float().mean()), repeat=repeat))
        return rows


def generation_rows(steps: list[dict], calls: list[dict], token_times: list[float], start: float, end: float,
                    request: RunRequest, repeat: int) -> list[Row]:
    """Per-token latency (phase `token`, seq_len = context length), mean breakdown of decode steps, totals.

    Token i's latency runs from token i-1's choice to token i's (prefill: from the first embedding);
    the phase breakdown pairs the i-th device encode with the i-th cloud call.
    """
    rows: list[Row] = []
    steps = [{**step, **call} for step, call in zip(steps, calls)]  # a trailing encode with no call is dropped
    first = steps[0]["start"] if steps else start
    bounds = [first] + token_times
    for i, step in enumerate(steps[: len(token_times)]):
        step["total"] = bounds[i + 1] - bounds[i]
    if token_times:
        rows.append(Row("prefill", "latency", token_times[0] - first, repeat=repeat, seq_len=request.seq_len))
    for i in range(1, len(token_times)):
        rows.append(Row("token", "latency", token_times[i] - token_times[i - 1], repeat=repeat,
                        seq_len=request.seq_len + i))
    n = len(token_times)
    decode = steps[1:] or steps
    means = mean_steps(decode, DEVICE_KEYS + ("total", "bytes_up", "bytes_down", "link_time_up",
                                              "link_time_down", "expected_up", "expected_down"))
    for k in DEVICE_KEYS:
        if k in means:
            rows.append(Row(k, "latency", means[k], repeat=repeat))
    rows.append(Row("per_token", "latency", means.get("total", 0.0), repeat=repeat))
    for k, phase in (("bytes_up", "uplink"), ("bytes_down", "downlink"), ("expected_up", "uplink_expected"),
                     ("expected_down", "downlink_expected")):
        if k in means:
            rows.append(Row(phase, "bytes", means[k], repeat=repeat))
    for k, phase in (("link_time_up", "uplink_modelled"), ("link_time_down", "downlink_modelled")):
        if k in means:
            rows.append(Row(phase, "latency", means[k], repeat=repeat))
    rows.append(Row("generate", "latency", end - start, repeat=repeat))
    rows.append(Row("generate", "rounds", float(len(calls)), repeat=repeat))
    rows.append(Row("generate", "throughput", request.batch_size * n / (end - start), repeat=repeat))
    return rows


def parameter_dcor_rows(original: dict, transformed: dict, max_tensors: int, seed: int) -> list[Row]:
    """Per-vector dcor between original and transformed 2-D weights (the paper's Fig. 6a)."""
    rows: list[Row] = []
    names = [k for k, v in original.items() if v.ndim == 2 and k in transformed
             and transformed[k].shape == v.shape and "embed" not in k and "wte" not in k and "wpe" not in k]
    for j, name in enumerate(names[:max_tensors]):
        rows.append(Row("parameters", "dcor", dcor_parameters(original[name], transformed[name], seed=seed), repeat=j))
    return rows
