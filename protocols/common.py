"""Device-cloud protocols run over the socket runtime; shared timing, traffic and accuracy helpers.

Each protocol module holds a `protocols.contract.Protocol` subclass (selected by `_target_` in
configs/protocol/*.yaml) and the factory of its cloud handler (imported in the cloud process).
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch

from protocols.contract import ModelSpec, NetworkProfile, Row, RunRequest

log = logging.getLogger(__name__)

class Stopwatch:
    """Named wall-clock phases of one request, measured with perf_counter."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block and add it to `name` (phases may repeat within a request)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - start


def load_for_cloud(checkpoint: str, head: str) -> torch.nn.Module:
    """Load a saved checkpoint in the cloud process with the stock transformers auto class."""
    from protocols.models import auto_class

    return auto_class(head).from_pretrained(checkpoint).eval()


def configure_threads(n: int | None) -> None:
    """Pin torch's intra-op threads so device and cloud processes do not fight over cores."""
    if n:
        torch.set_num_threads(int(n))


def workdir(request: RunRequest) -> Path:
    """The run's private folder for checkpoints (the runner passes it in options)."""
    path = Path(request.options.get("workdir") or Path.cwd() / "outputs" / "scratch")
    path.mkdir(parents=True, exist_ok=True)
    return path


def output_tensor(outputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The tensor accuracy is judged on: logits if present, else the last hidden state."""
    for key in ("logits", "last_hidden_state"):
        if key in outputs and outputs[key] is not None:
            return outputs[key]
    raise KeyError(f"no logits or last_hidden_state in outputs {sorted(outputs)}")


def accuracy_rows(ref: torch.Tensor, got: torch.Tensor, repeat: int) -> list[Row]:
    """max/sum-of-abs error against the plaintext model, and top-1 agreement along the last axis."""
    ref, got = ref.detach().float(), got.detach().float()
    if ref.shape != got.shape:
        raise ValueError(f"output shape {tuple(got.shape)} differs from plaintext {tuple(ref.shape)}")
    diff = (ref - got).abs()
    rows = [
        Row("output", "max_abs_error", float(diff.max()), repeat=repeat),
        # The paper's Table 5 "sum of absolute differences": summed over the output vector, averaged over positions.
        Row("output", "sum_abs_error", float(diff.sum(-1).mean()), repeat=repeat),
        Row("output", "top1_agreement", float((ref.argmax(-1) == got.argmax(-1)).float().mean()), repeat=repeat),
    ]
    return rows


def traffic_rows(delta: Mapping[str, float], expected_up: int, expected_down: int, repeat: int,
                 per: float = 1.0) -> list[Row]:
    """Socket-counted bytes/messages, shape-expected payload bytes and modelled link time for one request."""
    return [
        Row("uplink", "bytes", delta["bytes_up"] / per, repeat=repeat),
        Row("downlink", "bytes", delta["bytes_down"] / per, repeat=repeat),
        Row("uplink_expected", "bytes", expected_up / per, repeat=repeat),
        Row("downlink_expected", "bytes", expected_down / per, repeat=repeat),
        Row("uplink", "messages", delta["messages_up"] / per, repeat=repeat),
        Row("downlink", "messages", delta["messages_down"] / per, repeat=repeat),
        Row("total", "rounds", min(delta["messages_up"], delta["messages_down"]) / per, repeat=repeat),
        Row("uplink_modelled", "latency", delta["link_time_up"] / per, repeat=repeat),
        Row("downlink_modelled", "latency", delta["link_time_down"] / per, repeat=repeat),
    ]


def phase_rows(times: Mapping[str, float], repeat: int, per: float = 1.0) -> list[Row]:
    """Latency rows for each measured phase (divided by `per`, e.g. the number of generated tokens)."""
    return [Row(name, "latency", t / per, repeat=repeat) for name, t in times.items()]


def payload_bytes(tensors: Mapping[str, torch.Tensor]) -> int:
    """Bytes of tensor data a message carries, from shapes and dtypes (the wire module's definition)."""
    try:
        from transport.wire import expected_payload_bytes
    except ImportError:  # pragma: no cover - wire format module not present yet
        return int(sum(t.numel() * t.element_size() for t in tensors.values()))
    return int(expected_payload_bytes(tensors))


def shape_bytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    """Bytes of a tensor of this shape and dtype, without allocating it."""
    n = 1
    for s in shape:
        n *= int(s)
    return n * torch.empty((), dtype=dtype).element_size()


def cloud_process(factory: str, kwargs: dict, network: NetworkProfile, request: RunRequest):
    """Start the cloud party as a separate OS process behind the socket runtime."""
    from transport import CloudProcess

    timeout = float(request.options.get("cloud_timeout_s", 120))
    return CloudProcess(factory, kwargs, network=network, timeout_s=timeout)


def spec_dtype(model: ModelSpec) -> torch.dtype:
    """The model's torch dtype from its spec."""
    from protocols.models import DTYPES

    return DTYPES[model.extra.get("dtype", "float32")]


def output_bytes(model: ModelSpec, request: RunRequest) -> int:
    """Payload bytes of the model's full outputs for one forward request, from shapes."""
    dtype = spec_dtype(model)
    b, t = request.batch_size, model.extra["tokens_per_sample"](request.seq_len)
    h = model.extra["hidden_size"]
    head = model.extra["head"]
    if head == "causal_lm":
        return shape_bytes((b, t, model.extra["vocab_size"]), dtype)
    if head == "image_classification":
        return shape_bytes((b, model.extra["num_labels"]), dtype)
    return shape_bytes((b, t, h), dtype) + shape_bytes((b, h), dtype)
