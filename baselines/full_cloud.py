"""Full-cloud baseline: the device sends token ids (or pixels) in the clear; the cloud runs the plain model.

The paper's efficiency reference. Generation runs entirely on the cloud (one request, server-side
KV cache), so its per-token latency is pure cloud compute, as in the paper's Fig. 7(c).
"""
from __future__ import annotations

import logging
import time
from typing import Any

import torch

from protocols.contract import ModelSpec, Row, RunRequest
from protocols.common import Stopwatch, configure_threads, load_for_cloud, output_bytes, payload_bytes, shape_bytes
from protocols.base import SocketProtocol
from transport import checks

log = logging.getLogger(__name__)

INPUT_KEYS = ("input_ids", "pixel_values", "attention_mask", "token_type_ids")


class FullCloudHandler:
    """Plain model in the cloud process."""

    remote_methods = ("infer", "generate")

    def __init__(self, checkpoint: str, head: str, threads: int | None = None) -> None:
        configure_threads(threads)
        self.model = load_for_cloud(checkpoint, head)

    def infer(self, tensors: dict[str, torch.Tensor], **_: Any) -> tuple[dict, dict]:
        """One forward pass on plaintext inputs."""
        unknown = sorted(set(tensors) - set(INPUT_KEYS))
        if unknown or not ({"input_ids", "pixel_values"} & set(tensors)):
            raise ValueError(f"infer takes input_ids or pixel_values (+ masks); got {sorted(tensors)}")
        _check_inputs(tensors)
        with torch.no_grad():
            out = self.model(**tensors)
        return {k: v.contiguous() for k, v in out.items() if isinstance(v, torch.Tensor)}, {}

    def generate(self, tensors: dict[str, torch.Tensor], max_new_tokens: int = 1, **_: Any) -> tuple[dict, dict]:
        """Greedy generation on the cloud with its KV cache; returns tokens and each step's compute time."""
        from transport.cloud import CallCancelled, cancelled

        checks.only(tensors, ("input_ids",))
        ids = checks.integer("input_ids", tensors["input_ids"])
        max_new_tokens = checks.meta_int("max_new_tokens", max_new_tokens, maximum=1 << 16)
        steps, tokens = [], []
        with torch.no_grad():
            t = time.perf_counter()
            out = self.model(input_ids=ids, use_cache=True)
            for _ in range(int(max_new_tokens)):
                nxt = out.logits[:, -1].argmax(-1, keepdim=True)
                tokens.append(nxt)
                steps.append(time.perf_counter() - t)
                t = time.perf_counter()
                if cancelled():  # the device gave up: free the cloud for the next client
                    raise CallCancelled(f"client left after {len(tokens)} of {max_new_tokens} tokens")
                if len(tokens) < int(max_new_tokens):
                    out = self.model(input_ids=nxt, past_key_values=out.past_key_values, use_cache=True)
        return {"tokens": torch.cat(tokens, dim=1), "step_times": torch.tensor(steps, dtype=torch.float64)}, {}


def _check_inputs(tensors: dict[str, torch.Tensor]) -> None:
    """Token ids and masks must be integer tensors of one shape; pixels finite."""
    if "pixel_values" in tensors:
        checks.finite("pixel_values", tensors["pixel_values"])
    if "input_ids" in tensors:
        ids = checks.integer("input_ids", tensors["input_ids"])
        for name in ("attention_mask", "token_type_ids"):
            if name in tensors:
                checks.integer(name, tensors[name], tuple(ids.shape))


def make_cloud_handler(checkpoint: str, head: str, threads: int | None = None) -> FullCloudHandler:
    """Factory imported by the cloud process."""
    return FullCloudHandler(checkpoint, head, threads)


class FullCloudProtocol(SocketProtocol):
    """No privacy: raw inputs up, plaintext outputs down."""

    name = "full_cloud"
    factory = "baselines.full_cloud:make_cloud_handler"

    def prepare(self, model: ModelSpec, request: RunRequest) -> dict:
        """Save the plain model as the cloud's checkpoint; the device keeps nothing but inputs."""
        from protocols.common import workdir

        self.plain_model = model.build()
        ckpt = workdir(request) / "cloud_checkpoint"
        self.plain_model.save_pretrained(ckpt)
        return {"checkpoint": str(ckpt), "head": model.extra["head"], "threads": self.cfg.get("cloud_threads")}

    def device_send(self, inputs: dict, sw: Stopwatch) -> tuple[dict, dict]:
        """Raw inputs, as they are."""
        return {k: v for k, v in inputs.items() if k in INPUT_KEYS}, {}

    def device_receive(self, tensors: dict, sw: Stopwatch) -> dict:
        """Outputs arrive in plaintext."""
        return tensors

    def expected_bytes(self, model: ModelSpec, request: RunRequest) -> tuple[int, int]:
        """Up: token ids + mask (or pixels); down: full logits or hidden states."""
        b, s = request.batch_size, request.seq_len
        if model.model_type == "vit":
            c = model.config
            up = shape_bytes((b, c.num_channels, c.image_size, c.image_size), torch.float32)
        else:
            up = shape_bytes((b, s), torch.int64) * (3 if model.model_type == "bert" else 2)
        return up, output_bytes(model, request)

    def generate(self, cloud: Any, model: ModelSpec, request: RunRequest) -> list[Row]:
        """One request; the cloud generates all tokens itself (no per-token round trip)."""
        n = int(request.max_new_tokens)
        rows: list[Row] = []
        for i in range(request.warmup + request.repeats):
            repeat = i - request.warmup
            ids = model.make_inputs(request.batch_size, request.seq_len, request.seed + i)["input_ids"]
            before = cloud.meter.snapshot()
            start = time.perf_counter()
            out, _ = cloud.call("generate", {"input_ids": ids}, {"max_new_tokens": n})
            total = time.perf_counter() - start
            if repeat < 0:
                continue
            delta = cloud.meter.delta(before, cloud.meter.snapshot())
            steps = out["step_times"].tolist()
            rows.append(Row("prefill", "latency", steps[0], repeat=repeat, seq_len=request.seq_len))
            for j, t in enumerate(steps[1:], start=1):
                rows.append(Row("token", "latency", t, repeat=repeat, seq_len=request.seq_len + j))
            decode = steps[1:] or steps
            rows.append(Row("per_token", "latency", sum(decode) / len(decode), repeat=repeat))
            rows.append(Row("cloud_compute", "latency", sum(decode) / len(decode), repeat=repeat))
            for k in ("uplink", "downlink"):
                rows.append(Row(k, "latency", cloud.last_timing[k], repeat=repeat))
            rows.append(Row("uplink", "bytes", delta["bytes_up"], repeat=repeat))
            rows.append(Row("downlink", "bytes", delta["bytes_down"], repeat=repeat))
            rows.append(Row("uplink_expected", "bytes", payload_bytes({"input_ids": ids}), repeat=repeat))
            rows.append(Row("downlink_expected", "bytes", payload_bytes(out), repeat=repeat))
            rows.append(Row("generate", "latency", total, repeat=repeat))
            rows.append(Row("generate", "rounds", 1.0, repeat=repeat))
            rows.append(Row("generate", "throughput", request.batch_size * n / total, repeat=repeat))
        return rows
