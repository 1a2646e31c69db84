"""The contract between the runner and every protocol: plug-ins implement `Protocol`.

Protocols import this layer, stip/ and transport/, never bench/; the runner never knows a
protocol's internals. Protocols are selected by `_target_` in configs/protocol/*.yaml.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Callable

from transport.link import NetworkProfile

# Phase names shared by every protocol (ARCHITECTURE.md).
STIP_PHASES = ("device_embed", "device_permute", "uplink", "cloud_compute", "downlink", "device_recover")
MPC_PHASES = ("embedding", "linear", "attention_softmax", "activation", "layernorm", "head")
# Metric -> unit, shared by every protocol.
METRIC_UNITS = {
    "latency": "s",
    "bytes": "B",
    "rounds": "count",
    "messages": "count",
    "throughput": "tokens/s",
    "memory": "B",
    "dcor": "ratio",
    "dcor_samples": "ratio",
    "max_abs_error": "abs",
    "sum_abs_error": "abs",
    "top1_agreement": "ratio",
    "cosine_similarity": "ratio",
}


@dataclass
class ModelSpec:
    """What a protocol needs to know about the model under test."""

    name: str
    model_type: str
    build: Callable[[], Any]  # -> transformers PreTrainedModel in eval mode
    make_inputs: Callable[[int, int, int], dict]  # (batch, seq_len, seed) -> model kwargs (input_ids | pixel_values, ...)
    n_params: int | None = None
    config: Any = None  # the transformers config
    extra: dict = field(default_factory=dict)


@dataclass
class RunRequest:
    """One run's workload, as composed by the runner from the experiment config."""

    batch_size: int
    seq_len: int
    repeats: int
    warmup: int
    seed: int
    task: str  # "forward" | "generate"
    max_new_tokens: int = 0
    options: dict = field(default_factory=dict)


@dataclass
class Row:
    """One measurement; the runner adds run_id, experiment, model, network, seed."""

    phase: str
    metric: str
    value: float
    unit: str | None = None
    repeat: int = 0
    approx: str | None = None
    batch_size: int | None = None
    seq_len: int | None = None

    def __post_init__(self) -> None:
        if self.unit is None:
            self.unit = METRIC_UNITS.get(self.metric, "")


class Protocol(abc.ABC):
    """A protocol prepares once (keys, transformed weights, shares) and runs many requests."""

    name: str = "protocol"

    def __init__(self, cfg: dict) -> None:
        self.cfg = dict(cfg)

    @abc.abstractmethod
    def run(self, model: ModelSpec, network: NetworkProfile, request: RunRequest) -> list[Row]:
        """Run the workload and return raw per-repeat rows."""
