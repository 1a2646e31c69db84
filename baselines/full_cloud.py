"""Full-cloud baseline: the device sends token ids (or pixels) in the clear; the cloud runs the plain model.

The paper's efficiency reference. Generation runs entirely on the cloud (one request, server-side
KV cache), so its per-token latency is pure cloud compute, as in the paper's Fig. 7(c). With
`speculate: prompt_lookup` the cloud drafts by prompt lookup itself (transformers'
`prompt_lookup_num_tokens`): still one request, fewer forward passes per token.
"""
from __future__ import annotations

import inspect
import logging
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from transformers.generation.streamers import BaseStreamer

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
from protocols.request_loop import CloudHandler, SocketProtocol
from protocols.speculation import SpeculativeConfig, check_cloud_drafting, check_speculative_request, per_token_latency
from protocols.workload import generation_prompt
from transport import CloudProcess, checks
from transport.cloud_server import CallCancelled, cancelled
from transport.link import NetworkProfile

log = logging.getLogger(__name__)

INPUT_KEYS = ("input_ids", "pixel_values", "attention_mask", "token_type_ids")


RETURN_MODES = ("full", "topk", "tokens")


@dataclass
class FullCloudConfig(SpeculativeConfig):
    """`protocol=full_cloud` (configs/protocol/full_cloud.yaml)."""

    # forward requests: what the cloud sends back. full: every output (all positions' logits or hidden states);
    # topk: the last position's top_k logits and token ids (an API's top logprobs); tokens: the next token id.
    # A real full-cloud LLM service returns tokens or top-k; generation always returns tokens.
    return_mode: str = "full"
    top_k: int = 5

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.return_mode not in RETURN_MODES:
            raise ValueError(f"protocol.return_mode={self.return_mode!r}; choose one of {list(RETURN_MODES)}")
        if self.top_k < 1:
            raise ValueError(f"protocol.top_k={self.top_k} must be >= 1")


class TokenClock(BaseStreamer):
    """Times each token as `model.generate` hands it over (several at once after a verified draft)."""

    def __init__(self, max_new_tokens: int) -> None:
        self.marks = [time.perf_counter()]
        self.rounds: list[int] = []
        self.max_new_tokens = max_new_tokens
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate's first put is the prompt
            self._prompt_seen = True
            return
        now, k = time.perf_counter(), int(value.numel())
        self.marks += [now] * k
        self.rounds.append(k)
        if cancelled():
            raise CallCancelled(f"client left after {len(self.marks) - 1} of {self.max_new_tokens} tokens")

    def end(self) -> None:
        pass


class FullCloudHandler(CloudHandler):
    """Plain model in the cloud process."""

    remote_methods = ("infer", "generate")

    def __init__(self, checkpoint: str, head: str, threads: int | None = None, device: str = "cpu") -> None:
        configure_threads(threads)
        self.model = load_for_cloud(checkpoint, head, device)
        # causal LMs take logits_to_keep; a head without it (encoders) is refused by last_position anyway
        self.takes_logits_to_keep = "logits_to_keep" in inspect.signature(self.model.forward).parameters

    def infer(self, tensors: dict[str, torch.Tensor], return_mode: str = "full", top_k: int | None = None,
              **_: Any) -> tuple[dict, dict]:
        """One forward pass on plaintext inputs; `return_mode` topk / tokens: only the last position's top-k or
        next token goes back (FullCloudConfig)."""
        unknown = sorted(set(tensors) - set(INPUT_KEYS))
        if unknown or not ({"input_ids", "pixel_values"} & set(tensors)):
            raise ValueError(f"infer takes input_ids or pixel_values (+ masks); got {sorted(tensors)}")
        _check_inputs(tensors)
        return_mode = checks.meta_str("return_mode", return_mode)
        if return_mode not in RETURN_MODES:
            raise ValueError(f"return_mode {return_mode!r}; choose one of {list(RETURN_MODES)}")
        inputs = to_device(tensors, self.model)
        if return_mode != "full" and self.takes_logits_to_keep:
            inputs["logits_to_keep"] = 1  # the head runs on the last position only (what the reply carries)
        with torch.no_grad():
            out = self.model(**inputs)
        if return_mode == "full":
            return self.reply(out)
        return self.reply(last_position(out, return_mode, checks.meta_int("top_k", top_k, optional=True) or 1))

    def generate(self, tensors: dict[str, torch.Tensor], max_new_tokens: int = 1, draft_tokens: int | None = None,
                 max_ngram: int | None = None, **_: Any) -> tuple[dict, dict]:
        """Greedy generation on the cloud with its KV cache; returns tokens, each step's compute time, the
        tokens per forward round and the forward passes run (`draft_tokens`: prompt-lookup drafting)."""
        checks.only(tensors, ("input_ids",))
        ids = checks.integer("input_ids", tensors["input_ids"]).to(next(self.model.parameters()).device)
        max_new_tokens = checks.meta_int("max_new_tokens", max_new_tokens, maximum=1 << 16)
        draft_tokens = checks.meta_int("draft_tokens", draft_tokens, maximum=1 << 10, optional=True)
        max_ngram = checks.meta_int("max_ngram", max_ngram, maximum=1 << 10, optional=True)
        passes = [0]
        hook = self.model.register_forward_pre_hook(lambda *_: passes.__setitem__(0, passes[0] + 1))
        try:
            if draft_tokens is None:
                out = self._greedy(ids, int(max_new_tokens))
            else:
                out = self._prompt_lookup(ids, int(max_new_tokens), draft_tokens, max_ngram or 2)
        finally:
            hook.remove()
        return self.reply({**out, "forward_passes": torch.tensor([passes[0]])})

    def _prompt_lookup(self, ids: torch.Tensor, max_new_tokens: int, draft_tokens: int,
                       max_ngram: int) -> dict[str, torch.Tensor]:
        """transformers' prompt-lookup decoding, greedy, exactly max_new_tokens tokens (no EOS stop)."""
        clock = TokenClock(max_new_tokens)
        with torch.no_grad():
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                      min_new_tokens=0, do_sample=False, eos_token_id=None, pad_token_id=0,
                                      prompt_lookup_num_tokens=draft_tokens, max_matching_ngram_size=max_ngram,
                                      streamer=clock)
        steps = [b - a for a, b in zip(clock.marks, clock.marks[1:])]
        return {"tokens": out[:, ids.shape[1]:], "step_times": torch.tensor(steps, dtype=torch.float64),
                "rounds": torch.tensor(clock.rounds)}

    def _greedy(self, ids: torch.Tensor, max_new_tokens: int) -> dict[str, torch.Tensor]:
        """One forward pass per token, each step timed."""
        marks = [time.perf_counter()]

        def on_token(step: int) -> None:
            marks.append(time.perf_counter())
            if cancelled():  # the device gave up: free the cloud for the next client
                raise CallCancelled(f"client left after {step + 1} of {max_new_tokens} tokens")

        tokens = greedy_tokens(self.model, ids, max_new_tokens, on_token=on_token)
        steps = [b - a for a, b in zip(marks, marks[1:])]
        return {"tokens": tokens, "step_times": torch.tensor(steps, dtype=torch.float64),
                "rounds": torch.ones(len(steps), dtype=torch.int64)}


def last_position(outputs: Any, return_mode: str, top_k: int) -> dict[str, torch.Tensor]:
    """What a full-cloud LLM service returns for one request: the last position's top-k logits and ids, or the
    next (greedy) token id per sequence; refused for outputs without logits (encoders return hidden states)."""
    logits = outputs.get("logits") if hasattr(outputs, "get") else None
    if logits is None or logits.dim() != 3:
        raise ValueError(f"return_mode={return_mode!r} needs per-position logits (a causal LM); this model returns "
                         f"{sorted(k for k in dict(outputs))}: use protocol.return_mode=full")
    last = logits[:, -1]
    if return_mode == "tokens":
        return {"tokens": last.argmax(-1, keepdim=True)}
    values, indices = last.topk(int(top_k), dim=-1)
    return {"topk_values": values, "topk_indices": indices}


def _check_inputs(tensors: dict[str, torch.Tensor]) -> None:
    """Token ids and masks must be integer tensors of one shape; pixels finite."""
    if "pixel_values" in tensors:
        checks.finite("pixel_values", tensors["pixel_values"])
    if "input_ids" in tensors:
        ids = checks.integer("input_ids", tensors["input_ids"])
        for name in ("attention_mask", "token_type_ids"):
            if name in tensors:
                checks.integer(name, tensors[name], tuple(ids.shape))


def make_cloud_handler(checkpoint: str, head: str, threads: int | None = None, device: str = "cpu") -> FullCloudHandler:
    """Factory imported by the cloud process."""
    return FullCloudHandler(checkpoint, head, threads, device)


class FullCloudProtocol(SocketProtocol[FullCloudConfig]):
    """No privacy: raw inputs up, plaintext outputs down."""

    config_class: ClassVar[type[ProtocolConfig]] = FullCloudConfig

    factory = "baselines.full_cloud:make_cloud_handler"

    def prepare(self, model: ModelSpec, request: RunRequest) -> dict:
        """Save the plain model as the cloud's checkpoint; the device keeps nothing but inputs."""
        self.plain_model = model.build()
        ckpt = request.workdir / "cloud_checkpoint"
        self.plain_model.save_pretrained(ckpt)
        return {"checkpoint": str(ckpt), "head": model.head, "threads": self.cfg.cloud_threads}

    def device_send(self, inputs: dict, sw: Stopwatch) -> tuple[dict, dict]:
        """Raw inputs, as they are, and what to send back (return_mode)."""
        meta = {} if self.cfg.return_mode == "full" else {"return_mode": self.cfg.return_mode, "top_k": self.cfg.top_k}
        return {k: v for k, v in inputs.items() if k in INPUT_KEYS}, meta

    def device_receive(self, tensors: dict, sw: Stopwatch) -> dict:
        """Outputs arrive in plaintext."""
        return tensors

    def accuracy_rows(self, outputs: dict, reference: dict, inputs: dict, repeat: int) -> list[Row]:
        """Full outputs: protocols.accuracy; top-k / tokens: the next token against the plaintext model's argmax."""
        if self.cfg.return_mode == "full":
            return super().accuracy_rows(outputs, reference, inputs, repeat)
        chosen = outputs["tokens"] if "tokens" in outputs else outputs["topk_indices"][:, :1]
        return [token_agreement_row(chosen, reference["logits"][:, -1].argmax(-1, keepdim=True), repeat, "host")]

    def expected_bytes(self, model: ModelSpec, request: RunRequest) -> tuple[int, int]:
        """Up: token ids + mask (or pixels); down: full logits or hidden states, or the top-k / next token."""
        b, s = request.batch_size, request.seq_len
        if model.model_type == "vit":
            c = model.config
            up = shape_bytes((b, c.num_channels, c.image_size, c.image_size), torch.float32)
        else:
            up = shape_bytes((b, s), torch.int64) * (3 if model.model_type == "bert" else 2)
        if self.cfg.return_mode == "tokens":
            return up, shape_bytes((b, 1), torch.int64)
        if self.cfg.return_mode == "topk":
            k = self.cfg.top_k
            return up, shape_bytes((b, k), model.torch_dtype) + shape_bytes((b, k), torch.int64)
        return up, output_bytes(model, request)

    def generate(self, cloud: CloudProcess, model: ModelSpec, network: NetworkProfile,
                 request: RunRequest) -> list[Row]:
        """One request; the cloud generates all tokens itself (no per-token round trip).

        Token rows time the cloud's compute between tokens (0 for tokens of one verified draft);
        `per_token` latency and the speculation rows follow protocols/vocabulary.py.
        """
        check_speculative_request(self.cfg, request.batch_size)
        check_cloud_drafting(self.cfg)
        n = int(request.max_new_tokens)
        meta: dict[str, Any] = {"max_new_tokens": n}
        if self.cfg.speculate == "prompt_lookup":
            meta.update(draft_tokens=self.cfg.draft_tokens, max_ngram=self.cfg.max_ngram)
        rows: list[Row] = []
        for repeat, seed in request.repeats_with_warmup():
            ids = generation_prompt(model, request, repeat, seed)
            before = cloud.meter.snapshot()
            start = time.perf_counter()
            out, _ = cloud.call("generate", {"input_ids": ids}, meta)
            total = time.perf_counter() - start
            if repeat < 0:
                continue
            delta = cloud.meter.delta(before, cloud.meter.snapshot())
            steps = out["step_times"].tolist()
            rounds = out["rounds"].tolist()
            marks = torch.tensor(steps, dtype=torch.float64).cumsum(0).tolist()
            per_token = per_token_latency(marks, rounds[0]) if len(marks) > rounds[0] else steps[0]
            rows.append(Row("prefill", "latency", steps[0], "socket", repeat=repeat, seq_len=ids.shape[1]))
            for j, t in enumerate(steps[1:], start=1):
                rows.append(Row("token", "latency", t, "socket", repeat=repeat, seq_len=ids.shape[1] + j))
            rows.append(Row("per_token", "latency", per_token, "socket", repeat=repeat))
            rows.append(Row("cloud_compute", "latency", per_token, "socket", repeat=repeat))
            rows.append(Row("generate", "forward_passes_per_token", int(out["forward_passes"]) / n, "host",
                            repeat=repeat))
            rows.append(Row("generate", "accepted_tokens", sum(r - 1 for r in rounds) / len(rounds), "host",
                            repeat=repeat))
            for direction, key in (("uplink", "bytes_up"), ("downlink", "bytes_down")):
                rows.append(Row(direction, "bytes_per_token", delta[key] / n, "socket", repeat=repeat))
            for k in ("uplink", "downlink"):
                rows.append(Row(k, "latency", cloud.last_timing[k], "socket", repeat=repeat))
            rows.append(Row("uplink", "bytes", delta["bytes_up"], "socket", repeat=repeat))
            rows.append(Row("downlink", "bytes", delta["bytes_down"], "socket", repeat=repeat))
            rows.append(Row("uplink", "bytes", payload_bytes({"input_ids": ids}), "shapes", repeat=repeat))
            rows.append(Row("downlink", "bytes", payload_bytes(out), "shapes", repeat=repeat))
            rows.append(Row("generate", "latency", total, "socket", repeat=repeat))
            compute = total - cloud.last_timing["uplink"] - cloud.last_timing["downlink"]
            n_bytes = delta["bytes_up"] + delta["bytes_down"]
            rows.append(Row("generate", "latency", compute + network.time(1, n_bytes), "modelled", repeat=repeat))
            rows.append(Row("generate", "bytes", n_bytes, "socket", repeat=repeat))
            rows.append(Row("generate", "rounds", min(delta["messages_up"], delta["messages_down"]), "socket",
                            repeat=repeat))
            rows.append(Row("generate", "throughput", request.batch_size * n / total, "socket", repeat=repeat))
            if repeat == 0 or request.inputs == "prompt_suite":
                rows.append(token_agreement_row(out["tokens"], greedy_tokens(self.plain_model, ids, n), repeat,
                                                "host"))
        return rows
