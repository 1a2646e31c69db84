"""The request loop every device-cloud protocol shares: warm-up, repeats, phase timings, traffic, accuracy.

A subclass says what the device sends and how it reads the reply; this class runs the cloud
process, times each phase, counts traffic at the socket, and turns it all into tidy rows.
"""
from __future__ import annotations

import abc
import logging
import time
from typing import Any, Mapping

import torch

from protocols.contract import ModelSpec, NetworkProfile, Protocol, Row, RunRequest
from protocols.common import (
    Stopwatch, accuracy_rows, cloud_process, output_tensor, payload_bytes, phase_rows, traffic_rows,
)

log = logging.getLogger(__name__)


class SocketProtocol(Protocol):
    """A protocol whose cloud runs in its own process behind `transport.CloudProcess`."""

    factory: str = ""  # "module:function" of the cloud handler factory

    # --- what a protocol defines -------------------------------------------------------------
    @abc.abstractmethod
    def prepare(self, model: ModelSpec, request: RunRequest) -> dict:
        """Build the parties once (weights, keys, checkpoint); return the cloud factory's kwargs."""

    @abc.abstractmethod
    def device_send(self, inputs: dict, sw: Stopwatch) -> tuple[dict[str, torch.Tensor], dict]:
        """Device work before the uplink: the tensors and meta of the cloud call."""

    @abc.abstractmethod
    def device_receive(self, tensors: dict[str, torch.Tensor], sw: Stopwatch) -> dict[str, torch.Tensor]:
        """Device work after the downlink: plaintext outputs."""

    @abc.abstractmethod
    def expected_bytes(self, model: ModelSpec, request: RunRequest) -> tuple[int, int]:
        """Payload bytes (up, down) of one forward request, from shapes alone."""

    def extra_rows(self, model: ModelSpec, request: RunRequest) -> list[Row]:
        """Rows measured once per run (memory, privacy); none by default."""
        return []

    def privacy_rows(self, repeat: int) -> list[Row]:
        """Rows about what crossed the wire in the last request (dcor); none by default."""
        return []

    def memory_rows(self, model: ModelSpec, request: RunRequest) -> list[Row]:
        """On-device memory only (no cloud); protocols that keep model parts on the device override this."""
        raise NotImplementedError(f"protocol {self.name!r} does not support task 'memory'")

    def generate(self, cloud: Any, model: ModelSpec, request: RunRequest) -> list[Row]:
        """Autoregressive generation; protocols that support it override this."""
        raise NotImplementedError(f"protocol {self.name!r} does not support task 'generate'")

    # --- the shared loop ---------------------------------------------------------------------
    def reference(self, inputs: dict) -> dict[str, torch.Tensor] | None:
        """Plaintext outputs of the original model on the device host (untimed), for accuracy rows."""
        plain = getattr(self, "plain_model", None)
        if plain is None:
            return None
        with torch.no_grad():
            return dict(plain(**inputs))

    def run(self, model: ModelSpec, network: NetworkProfile, request: RunRequest) -> list[Row]:
        """Run the workload; models that do not fit this host yield shape-derived rows only."""
        if request.task == "memory":
            return self.memory_rows(model, request)
        if not model.extra.get("fits_on_host", True) or request.task == "shapes":
            return self.shape_rows(model, request)
        kwargs = self.prepare(model, request)
        rows = list(self.extra_rows(model, request))
        with cloud_process(self.factory, kwargs, network, request) as cloud:
            if request.task == "forward":
                rows += self.forward(cloud, model, request)
            elif request.task == "generate":
                rows += self.generate(cloud, model, request)
            else:
                raise ValueError(f"task {request.task!r} is unknown; choose forward, generate or shapes")
        return rows

    def shape_rows(self, model: ModelSpec, request: RunRequest) -> list[Row]:
        """Traffic a forward request would cause, from shapes (phase names end in _expected)."""
        up, down = self.expected_bytes(model, request)
        return [Row("uplink_expected", "bytes", up), Row("downlink_expected", "bytes", down)]

    def forward(self, cloud: Any, model: ModelSpec, request: RunRequest) -> list[Row]:
        """Warm-up then `repeats` timed single-pass requests, with per-phase latency and traffic."""
        rows: list[Row] = []
        tokens = request.batch_size * model.extra["tokens_per_sample"](request.seq_len)
        for i in range(request.warmup + request.repeats):
            repeat = i - request.warmup
            inputs = model.make_inputs(request.batch_size, request.seq_len, request.seed + i)
            before = cloud.meter.snapshot()
            sw = Stopwatch()
            start = time.perf_counter()
            tensors, meta = self.device_send(inputs, sw)
            reply, _ = cloud.call("infer", tensors, meta)
            outputs = self.device_receive(reply, sw)
            total = time.perf_counter() - start
            if repeat < 0:
                continue
            delta = cloud.meter.delta(before, cloud.meter.snapshot())
            sw.times.update({k: v for k, v in cloud.last_timing.items()
                             if k in ("uplink", "cloud_compute", "downlink")})
            rows += phase_rows(sw.times, repeat)
            rows.append(Row("total", "latency", total, repeat=repeat))
            rows.append(Row("total", "throughput", tokens / total, repeat=repeat))
            rows += traffic_rows(delta, payload_bytes(tensors), payload_bytes(reply), repeat)
            rows += self.privacy_rows(repeat)
            ref = self.reference(inputs) if repeat == 0 or request.options.get("accuracy_every_repeat") else None
            if ref is not None:
                rows += accuracy_rows(output_tensor(ref), output_tensor(outputs), repeat)
        return rows


def mean_steps(steps: list[Mapping[str, float]], keys: tuple[str, ...]) -> dict[str, float]:
    """Mean per step of each key present in the steps."""
    out: dict[str, float] = {}
    for k in keys:
        vals = [s[k] for s in steps if k in s]
        if vals:
            out[k] = sum(vals) / len(vals)
    return out
