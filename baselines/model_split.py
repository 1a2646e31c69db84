"""Model-split baseline: embedding + the first k transformer layers on the device, the rest on the cloud.

No permutation: the hidden states after layer k cross the wire in the clear (the paper's Fig. 9).
The split point is generic: a forward pre-hook on layer k captures (device) or injects (cloud)
the hidden states, and the cloud's first k layers are replaced by pass-throughs.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from protocols.cloud_and_traffic import (
    Stopwatch,
    configure_threads,
    load_for_cloud,
    output_bytes,
    shape_bytes,
    to_device,
)
from protocols.contract import ModelSpec, ProtocolConfig, Row, RunRequest
from protocols.memory import embedding_module, module_bytes
from protocols.request_loop import CloudHandler, SocketConfig, SocketProtocol
from transport import checks

log = logging.getLogger(__name__)


@dataclass
class ModelSplitConfig(SocketConfig):
    """`protocol=model_split` (configs/protocol/model_split.yaml)."""

    device_layers: int = 1  # k: transformer layers run on the device (the paper's Fig. 9 sweeps 0..20)
    # How many times slower the device computes than the cloud. Both halves run on this host, so the measured
    # device compute is multiplied by this factor in the `modelled` rows (device_* phases, total); 1: no scaling.
    device_slowdown: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.device_layers < 0:
            raise ValueError(f"protocol.device_layers={self.device_layers} must be >= 0")
        if not self.device_slowdown > 0:
            raise ValueError(f"protocol.device_slowdown={self.device_slowdown} must be > 0 "
                             "(1: the device computes as fast as the cloud)")


class _Captured(Exception):
    """Raised by the device's hook to stop the forward pass at the split point."""

    def __init__(self, hidden: torch.Tensor) -> None:
        super().__init__("split point reached")
        self.hidden = hidden


class Passthrough(nn.Module):
    """Stands in for a layer that ran on the device: returns its input unchanged."""

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return hidden_states


def transformer_layers(model: nn.Module) -> nn.ModuleList:
    """The model's stack of transformer layers (the ModuleList as long as num_hidden_layers)."""
    n = model.config.num_hidden_layers
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise ValueError(f"no ModuleList of {n} layers in {type(model).__name__}; model_split cannot split it")


def _hidden_of(args: tuple, kwargs: dict) -> torch.Tensor:
    """The hidden states a layer receives, positional or keyword."""
    return args[0] if args else kwargs["hidden_states"]


def _with_hidden(args: tuple, kwargs: dict, hidden: torch.Tensor) -> tuple[tuple, dict]:
    """The same call with the hidden states replaced."""
    if args:
        return (hidden,) + tuple(args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


def check_split(k: int, n_layers: int) -> int:
    """Validate the split point, naming the way out."""
    if not 0 <= int(k) < n_layers:
        raise ValueError(f"device_layers={k} is out of range for a {n_layers}-layer model; use 0..{n_layers - 1}")
    return int(k)


class SplitCloudHandler(CloudHandler):
    """The cloud's part: layers k.. and the head; layers ..k are pass-throughs."""

    remote_methods = ("infer",)

    def __init__(self, checkpoint: str, head: str, device_layers: int, threads: int | None = None,
                 device: str = "cpu") -> None:
        configure_threads(threads)
        self.model = load_for_cloud(checkpoint, head, device)
        layers = transformer_layers(self.model)
        self.k = check_split(device_layers, len(layers))
        for i in range(self.k):
            layers[i] = Passthrough()
        self._inject: torch.Tensor | None = None
        layers[self.k].register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return _with_hidden(args, kwargs, self._inject)

    def infer(self, tensors: dict[str, torch.Tensor], **_: Any) -> tuple[dict, dict]:
        """Run layers k.. on the received hidden states."""
        hidden = tensors.get("hidden_states")
        if hidden is None or hidden.ndim != 3:
            raise ValueError(f"infer needs a 3-D 'hidden_states' tensor, got {sorted(tensors)}")
        checks.only(tensors, ("hidden_states", "attention_mask"))
        checks.finite("hidden_states", hidden)
        if "attention_mask" in tensors:
            checks.integer("attention_mask", tensors["attention_mask"], tuple(hidden.shape[:2]))
        tensors = to_device(tensors, self.model)
        hidden = tensors["hidden_states"]
        self._inject = hidden
        cfg = self.model.config
        kwargs: dict[str, Any] = {}
        if cfg.model_type == "vit":  # the embedding stage needs pixels of the right shape; its output is replaced
            kwargs["pixel_values"] = torch.zeros(hidden.shape[0], cfg.num_channels, cfg.image_size, cfg.image_size,
                                                 dtype=hidden.dtype, device=hidden.device)
        else:
            kwargs["inputs_embeds"] = torch.zeros_like(hidden)
            if "attention_mask" in tensors:
                kwargs["attention_mask"] = tensors["attention_mask"]
        with torch.no_grad():
            out = self.model(**kwargs)
        self._inject = None
        return self.reply(out)


def make_cloud_handler(checkpoint: str, head: str, device_layers: int, threads: int | None = None,
                       device: str = "cpu") -> SplitCloudHandler:
    """Factory imported by the cloud process."""
    return SplitCloudHandler(checkpoint, head, device_layers, threads, device)


class ModelSplitProtocol(SocketProtocol[ModelSplitConfig]):
    """Plain hidden states after k device layers go up; plain outputs come down."""

    config_class: ClassVar[type[ProtocolConfig]] = ModelSplitConfig
    factory: ClassVar[str] = "baselines.model_split:make_cloud_handler"

    def prepare(self, model: ModelSpec, request: RunRequest) -> dict:
        """Save the plain model for the cloud; the device hooks its own copy at layer k."""
        self.plain_model = model.build()
        layers = transformer_layers(self.plain_model)
        self.k = check_split(self.cfg.device_layers, len(layers))
        self._hook = layers[self.k].register_forward_pre_hook(self._capture, with_kwargs=True)
        ckpt = request.workdir / "cloud_checkpoint"
        self.plain_model.save_pretrained(ckpt)
        self.device_bytes = module_bytes(embedding_module(self.plain_model)) + sum(
            module_bytes(layers[i]) for i in range(self.k))
        return {"checkpoint": str(ckpt), "head": model.head, "device_layers": self.k,
                "threads": self.cfg.cloud_threads}

    @staticmethod
    def _capture(module: nn.Module, args: tuple, kwargs: dict) -> None:
        raise _Captured(_hidden_of(args, kwargs))

    def reference(self, inputs: dict) -> dict | None:
        """Plain outputs with the split hook disabled."""
        self._hook.remove()
        try:
            return super().reference(inputs)
        finally:
            layers = transformer_layers(self.plain_model)
            self._hook = layers[self.k].register_forward_pre_hook(self._capture, with_kwargs=True)

    def device_send(self, inputs: dict, sw: Stopwatch) -> tuple[dict, dict]:
        """Embedding and k layers on the device (timed as device_embed), hidden states go up."""
        with torch.no_grad(), sw.phase("device_embed"):
            try:
                self.plain_model(**inputs)
            except _Captured as c:
                hidden = c.hidden
            else:  # pragma: no cover - the hook always fires
                raise RuntimeError("split hook did not fire")
        tensors = {"hidden_states": hidden.contiguous()}
        if "attention_mask" in inputs:
            tensors["attention_mask"] = inputs["attention_mask"]
        return tensors, {}

    def device_receive(self, tensors: dict, sw: Stopwatch) -> dict:
        """Outputs arrive in plaintext."""
        return tensors

    def device_slowdown(self) -> float:
        """The declared device/cloud speed factor (ModelSplitConfig.device_slowdown)."""
        return float(self.cfg.device_slowdown)

    def extra_rows(self, model: ModelSpec, request: RunRequest) -> list[Row]:
        """Measured device memory: embedding plus the k device layers (k itself is a runs-table column)."""
        return [Row("device_embedding", "memory", module_bytes(embedding_module(self.plain_model)), "host"),
                Row("device_model", "memory", self.device_bytes, "host")]

    def expected_bytes(self, model: ModelSpec, request: RunRequest) -> tuple[int, int]:
        """Up: hidden states (+ mask); down: full outputs."""
        b, t = request.batch_size, model.tokens_per_sample(request.seq_len)
        up = shape_bytes((b, t, model.hidden_size), model.torch_dtype)
        if model.model_type != "vit":
            up += shape_bytes((b, request.seq_len), torch.int64)
        return up, output_bytes(model, request)
