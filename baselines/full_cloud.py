"""Full-cloud baseline: the device sends token ids (or pixels) in the clear; the cloud runs the plain model.

The paper's efficiency reference. Generation runs entirely on the cloud (one request, server-side
KV cache), so its per-token latency is pure cloud compute, as in the paper's Fig. 7(c).
"""
from __future__ import annotations

import logging
import time
from typing import Any

import torch

from protocols.accuracy import token_agreement_row
from protocols.base import CloudHandler, SocketProtocol
from protocols.common import (
    Stopwatch,
    configure_threads,
    greedy_tokens,
    load_for_cloud,
    output_bytes,
    payload_bytes,
    shape_bytes,
)
from protocols.contract import ModelSpec, Row, RunRequest
from transport import CloudProcess, checks
from transport.cloud import CallCancelled, cancelled
from transport.link import NetworkProfile

log = logging.getLogger(__name__)

INPUT_KEYS = ("input_ids", "pixel_values", "attention_mask", "token_type_ids")


class FullCloudHandler(CloudHandler):
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
            return self.reply(self.model(**tensors))

    def generate(self, tensors: dict[str, torch.Tensor], max_new_tokens: int = 1, **_: Any) -> tuple[dict, dict]:
        """Greedy generation on the cloud with its KV cache; returns tokens and each step's compute time."""
        checks.only(tensors, ("input_ids",))
        ids = checks.integer("input_ids", tensors["input_ids"])
        max_new_tokens = checks.meta_int("max_new_tokens", max_new_tokens, maximum=1 << 16)
        marks = [time.perf_counter()]

        def on_token(step: int) -> None:
            marks.append(time.perf_counter())
            if cancelled():  # the device gave up: free the cloud for the next client
                raise CallCancelled(f"client left after {step + 1} of {max_new_tokens} tokens")

        tokens = greedy_tokens(self.model, ids, int(max_new_tokens), on_token=on_token)
        steps = [b - a for a, b in zip(marks, marks[1:])]
        return {"tokens": tokens, "step_times": torch.tensor(steps, dtype=torch.float64)}, {}


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

    factory = "baselines.full_cloud:make_cloud_handler"

    def prepare(self, model: ModelSpec, request: RunRequest) -> dict:
        """Save the plain model as the cloud's checkpoint; the device keeps nothing but inputs."""
        self.plain_model = model.build()
        ckpt = request.workdir / "cloud_checkpoint"
        self.plain_model.save_pretrained(ckpt)
        return {"checkpoint": str(ckpt), "head": model.head, "threads": self.cfg.cloud_threads}

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

    def generate(self, cloud: CloudProcess, model: ModelSpec, network: NetworkProfile,
                 request: RunRequest) -> list[Row]:
        """One request; the cloud generates all tokens itself (no per-token round trip)."""
        n = int(request.max_new_tokens)
        rows: list[Row] = []
        for repeat, seed in request.repeats_with_warmup():
            ids = model.make_inputs(request.batch_size, request.seq_len, seed)["input_ids"]
            before = cloud.meter.snapshot()
            start = time.perf_counter()
            out, _ = cloud.call("generate", {"input_ids": ids}, {"max_new_tokens": n})
            total = time.perf_counter() - start
            if repeat < 0:
                continue
            delta = cloud.meter.delta(before, cloud.meter.snapshot())
            steps = out["step_times"].tolist()
            rows.append(Row("prefill", "latency", steps[0], "socket", repeat=repeat, seq_len=request.seq_len))
            for j, t in enumerate(steps[1:], start=1):
                rows.append(Row("token", "latency", t, "socket", repeat=repeat, seq_len=request.seq_len + j))
            decode = steps[1:] or steps
            rows.append(Row("per_token", "latency", sum(decode) / len(decode), "socket", repeat=repeat))
            rows.append(Row("cloud_compute", "latency", sum(decode) / len(decode), "socket", repeat=repeat))
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
            if repeat == 0:
                rows.append(token_agreement_row(out["tokens"], greedy_tokens(self.plain_model, ids, n), repeat,
                                                "host"))
        return rows
