"""The request loop every device-cloud protocol shares: warm-up, repeats, phase timings, traffic, accuracy.

A subclass says what the device sends and how it reads the reply; this class runs the cloud
process, times each phase, counts traffic at the socket, and turns it all into rows of the vocabulary.
"""
from __future__ import annotations

import abc
import logging
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Optional, TypeVar

import torch

from protocols.accuracy import accuracy_rows, output_tensor
from protocols.cloud_and_traffic import (
    CLOUD_DEVICES,
    Stopwatch,
    cloud_process,
    modelled_total,
    payload_bytes,
    resolve_device,
    traffic_rows,
)
from protocols.contract import ModelSpec, Protocol, ProtocolConfig, Row, RunRequest
from transport import CloudClient
from transport.link import NetworkProfile

log = logging.getLogger(__name__)
CLOUD_PHASES = ("uplink", "cloud_compute", "downlink")


@dataclass
class SocketConfig(ProtocolConfig):
    """What every socket protocol's config has."""

    cloud_threads: Optional[int] = None  # the cloud process's threads (None: run.threads, else transport.threads)
    accuracy_every_repeat: bool = False  # accuracy rows for every repeat (else repeat 0 only)
    cloud_device: str = "auto"  # auto (cuda where torch sees a GPU, else cpu) | cpu | cuda (refused without a GPU)

    def __post_init__(self) -> None:
        if self.cloud_threads is not None and self.cloud_threads < 1:
            raise ValueError(f"protocol.cloud_threads={self.cloud_threads} must be >= 1 or null")
        if self.cloud_device not in CLOUD_DEVICES:
            raise ValueError(f"protocol.cloud_device={self.cloud_device!r}; choose one of {list(CLOUD_DEVICES)}")


SC = TypeVar("SC", bound=SocketConfig)


def cpu_rows(sw: Stopwatch, cloud: CloudClient, repeat: int) -> list[Row]:
    """Process CPU time of the device's phases and of the cloud's compute (as the cloud reported it)."""
    rows = [Row(name, "cpu_time", t, "host", repeat=repeat) for name, t in sw.cpu.items()]
    call = cloud.last_call
    if call is not None and call.cloud_compute_cpu is not None:
        rows.append(Row("cloud_compute", "cpu_time", float(call.cloud_compute_cpu), "host", repeat=repeat))
    return rows


def cloud_threads_seen(cloud: CloudClient) -> dict:
    """The cloud process's torch threads, slice, nice value and policy as its last reply reported them
    (report.conditions)."""
    call = cloud.last_call
    return {"intra_op": call.cloud_threads if call is not None else None,
            "requested": getattr(cloud, "threads", None),
            "sched_slice_us": call.cloud_sched_slice_us if call is not None else None,
            "nice": call.cloud_nice if call is not None else None,
            "sched_policy": call.cloud_sched_policy if call is not None else None}


class CloudHandler:
    """Base of a cloud process's handler: tensors in, tensors + meta out, contiguous for the wire."""

    @staticmethod
    def reply(outputs: Any) -> tuple[dict, dict]:
        """A model's outputs as the wire reply (tensors only, back on the CPU for the wire)."""
        return {k: v.detach().cpu().contiguous() for k, v in dict(outputs).items() if isinstance(v, torch.Tensor)}, {}


class SocketProtocol(Protocol[SC], Generic[SC]):
    """A protocol whose cloud runs in its own process behind `transport.CloudProcess` (or a served `RemoteCloud`)."""

    config_class: ClassVar[type[ProtocolConfig]] = SocketConfig
    parallel_safe: ClassVar[bool] = True
    factory: ClassVar[str] = ""  # "module:function" of the cloud handler factory
    plain_model: Any = None

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

    def device_slowdown(self) -> float:
        """Factor applied to measured device compute in the modelled total (device slower than cloud); 1 by default."""
        return 1.0

    def accuracy_rows(self, outputs: dict, reference: dict, inputs: dict, repeat: int) -> list[Row]:
        """Accuracy of one forward request's outputs against the plaintext model's (protocols.accuracy)."""
        return accuracy_rows(output_tensor(outputs), output_tensor(reference), inputs.get("attention_mask"),
                             repeat, "host")

    def privacy_rows(self, repeat: int) -> list[Row]:
        """Rows about what crossed the wire in the last request (dcor); none by default."""
        return []

    def memory_rows(self, model: ModelSpec, request: RunRequest) -> list[Row]:
        """On-device memory only (no cloud); protocols that keep model parts on the device override this."""
        raise NotImplementedError(f"protocol {self.name!r} does not support task 'memory'")

    def generate(self, cloud: CloudClient, model: ModelSpec, network: NetworkProfile,
                 request: RunRequest) -> list[Row]:
        """Autoregressive generation; protocols that support it override this."""
        raise NotImplementedError(f"protocol {self.name!r} does not support task 'generate'")

    # --- the shared loop ---------------------------------------------------------------------
    def reference(self, inputs: dict) -> dict[str, torch.Tensor] | None:
        """Plaintext outputs of the original model on the device host (untimed), for accuracy rows."""
        if self.plain_model is None:
            return None
        with torch.no_grad():
            return dict(self.plain_model(**inputs))

    def run(self, model: ModelSpec, network: NetworkProfile, request: RunRequest) -> list[Row]:
        """Run the workload; models that do not fit this host yield shape-derived rows only."""
        if request.task == "memory":
            return self.memory_rows(model, request)
        if not model.fits_on_host or request.task == "shapes":
            return self.shape_rows(model, request)
        if request.remote_cloud is None:  # the cloud runs on this host: refuse cuda without a GPU before building
            resolve_device(self.cfg.cloud_device)
        request.workdir.mkdir(parents=True, exist_ok=True)
        kwargs = {**self.prepare(model, request), "device": self.cfg.cloud_device}
        rows = list(self.extra_rows(model, request))
        with cloud_process(self.factory, kwargs, network, request) as cloud:
            if request.task == "forward":
                rows += self.forward(cloud, model, network, request)
            else:
                rows += self.generate(cloud, model, network, request)
            self.process_threads = {"cloud": cloud_threads_seen(cloud)}  # read by the runner (report.conditions)
            self.cloud_accelerator = cloud.accelerator  # likewise: 'cpu' or the GPUs the cloud process used
        return rows

    def shape_rows(self, model: ModelSpec, request: RunRequest) -> list[Row]:
        """Traffic a forward request would cause, from shapes."""
        up, down = self.expected_bytes(model, request)
        return [Row("uplink", "bytes", up, "shapes"), Row("downlink", "bytes", down, "shapes"),
                Row("total", "bytes", up + down, "shapes")]

    def forward(self, cloud: CloudClient, model: ModelSpec, network: NetworkProfile,
                request: RunRequest) -> list[Row]:
        """Warm-up then `repeats` timed single-pass requests, with per-phase latency and traffic."""
        rows: list[Row] = []
        tokens = request.batch_size * model.tokens_per_sample(request.seq_len)
        for repeat, seed in request.repeats_with_warmup():
            inputs = model.make_inputs(request.batch_size, request.seq_len, seed)
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
            for k in CLOUD_PHASES:
                sw.add(k, cloud.last_timing[k])
            rows += cpu_rows(sw, cloud, repeat)
            rows += [Row(name, "latency", t, "socket" if name in CLOUD_PHASES else "host", repeat=repeat)
                     for name, t in sw.times.items()]
            factor = self.device_slowdown()
            if factor != 1.0:  # the declared device/cloud speed factor, applied to the measured device compute
                rows += [Row(name, "latency", t * factor, "modelled", repeat=repeat)
                         for name, t in sw.times.items() if name.startswith("device_")]
            rows.append(Row("total", "latency", total, "socket", repeat=repeat))
            compute = sum(t * (factor if name.startswith("device_") else 1.0)
                          for name, t in sw.times.items() if name not in ("uplink", "downlink"))
            rows.append(modelled_total(compute, delta, network, "total", repeat))
            rows.append(Row("total", "throughput", tokens / total, "socket", repeat=repeat))
            rows += traffic_rows(delta, payload_bytes(tensors), payload_bytes(reply), "total", repeat)
            rows += self.privacy_rows(repeat)
            if repeat == 0 or self.cfg.accuracy_every_repeat:
                ref = self.reference(inputs)
                if ref is not None:
                    rows += self.accuracy_rows(outputs, ref, inputs, repeat)
        return rows
