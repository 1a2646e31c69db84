"""Helpers every device-cloud protocol shares: phase timer, cloud loading, traffic rows, shape bytes.

Each protocol module holds a `protocols.contract.Protocol` subclass (selected by `_target_` in
configs/protocol/*.yaml) and the factory of its cloud handler (imported in the cloud process).
"""
from __future__ import annotations

import inspect
import logging
import os
from typing import Callable, Mapping

import torch
from transformers import PreTrainedModel

from protocols.contract import ModelSpec, Row, RunRequest
from protocols.models import auto_class
from protocols.timing import Stopwatch  # noqa: F401 - the phase timer, for plug-ins importing helpers here
from transport import CloudProcess
from transport.auth import TOKEN_ENV, read_token_file
from transport.client import CloudClient, CloudError, RemoteCloud
from transport.cloud_server import DESCRIBE
from transport.link import NetworkProfile
from transport.threads import apply_threads, resolve_threads
from transport.wire import expected_payload_bytes

log = logging.getLogger(__name__)
HOST_LOCAL_KWARGS = ("checkpoint", "threads", "device")  # factory arguments each host sets for itself
CLOUD_DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str) -> str:
    """The torch device the cloud runs on: `auto` is cuda where torch sees a GPU, else cpu; `cuda` without one
    is refused, naming the way out."""
    if name not in CLOUD_DEVICES:
        raise ValueError(f"protocol.cloud_device={name!r}; choose one of {list(CLOUD_DEVICES)}")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("protocol.cloud_device=cuda but torch sees no GPU on this host (torch.cuda.is_available() "
                         "is False); use protocol.cloud_device=auto or cpu")
    return name


def load_for_cloud(checkpoint: str, head: str, device: str = "cpu") -> PreTrainedModel:
    """Load a saved checkpoint in the cloud process with the stock transformers auto class, on `device`."""
    return auto_class(head).from_pretrained(checkpoint).eval().to(resolve_device(device))


def to_device(tensors: Mapping[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The request's tensors on the model's device (a no-op on CPU)."""
    device = next(model.parameters()).device
    return {k: v.to(device) for k, v in tensors.items()}


def configure_threads(n: int | None) -> None:
    """Pin this process's torch threads to `n` (None: leave the count its starter set by transport.threads' policy)."""
    if n is not None:
        apply_threads(n)


def cloud_process(factory: str, kwargs: dict, network: NetworkProfile, request: RunRequest) -> CloudClient:
    """Start the cloud party as a separate OS process, or reach the remote one `cloud.address` names."""
    if request.remote_cloud is not None:
        return remote_cloud(factory, kwargs, network, request)
    return CloudProcess(factory, kwargs, network=network, timeout_s=request.cloud_timeout_s,
                        threads=cloud_threads(kwargs.get("threads"), request))


def cloud_threads(protocol_threads: int | None, request: RunRequest) -> int:
    """The cloud process's threads: `protocol.cloud_threads`, else `run.threads`, else the policy's default."""
    return resolve_threads(protocol_threads if protocol_threads is not None else request.threads)


def remote_cloud(factory: str, kwargs: dict, network: NetworkProfile, request: RunRequest) -> RemoteCloud:
    """Connect to a served cloud and refuse it unless it runs this protocol's handler with prepare()'s settings."""
    r = request.remote_cloud
    assert r is not None
    token = read_token_file(r.token_file) if r.token_file else os.environ.get(TOKEN_ENV) or None  # 0600 only
    cloud = RemoteCloud(r.address, token=token, ca_file=r.ca_file, server_hostname=r.server_hostname,
                        network=network, timeout_s=request.cloud_timeout_s).start()
    try:
        _, served = cloud.call(DESCRIBE)
        check_served_handler(served, factory, kwargs, r.address)
        cloud.accelerator = served.get("accelerator")  # what the served cloud computes on (report.conditions)
    except BaseException:
        cloud.close()
        raise
    return cloud


def check_served_handler(served: Mapping, factory: str, kwargs: Mapping, address: str) -> None:
    """Raise CloudError when a served cloud's handler or settings are not the ones this protocol prepared."""
    name = served.get("factory") or served.get("handler", "?")
    same = served.get("factory") == factory if served.get("factory") else \
        str(served.get("handler", "")).rsplit(".", 1)[0] == factory.split(":")[0]
    if not same:
        raise CloudError(f"the cloud at {address} runs {name}, but this protocol needs {factory}; restart it with "
                         f"`python -m transport serve --factory {factory} ...` or pick the matching protocol=")
    settings = served.get("settings") or {}
    differ = {k: (settings[k], v) for k, v in kwargs.items()
              if k in settings and k not in HOST_LOCAL_KWARGS and settings[k] != v}
    if differ:
        detail = ", ".join(f"{k}={s!r} there, {v!r} here" for k, (s, v) in differ.items())
        raise CloudError(f"the cloud at {address} serves {factory} with other settings ({detail}); restart it with "
                         "the --kwargs this run prepares")


def payload_bytes(tensors: Mapping[str, torch.Tensor]) -> int:
    """Bytes of tensor data a message carries, from shapes and dtypes (the wire module's definition)."""
    return int(expected_payload_bytes(tensors))


def shape_bytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    """Bytes of a tensor of this shape and dtype, without allocating it."""
    n = 1
    for s in shape:
        n *= int(s)
    return n * torch.empty((), dtype=dtype).element_size()


def _config_int(model: ModelSpec, name: str, value: int | None) -> int:
    """A size the model's head needs; its config must give it."""
    if value is None:
        raise ValueError(f"model {model.name!r} ({model.head}) has no {name} in its config; set it in the config")
    return value


def output_bytes(model: ModelSpec, request: RunRequest) -> int:
    """Payload bytes of the model's full outputs for one forward request, from shapes."""
    b, t, h = request.batch_size, model.tokens_per_sample(request.seq_len), model.hidden_size
    if model.head in ("causal_lm", "masked_lm"):
        return shape_bytes((b, t, _config_int(model, "vocab_size", model.vocab_size)), model.torch_dtype)
    if model.head in ("image_classification", "sequence_classification"):  # a STIP decoder classifier: t x this
        return shape_bytes((b, _config_int(model, "num_labels", model.num_labels)), model.torch_dtype)
    return shape_bytes((b, t, h), model.torch_dtype) + shape_bytes((b, h), model.torch_dtype)


def traffic_rows(delta: Mapping[str, float], expected_up: int, expected_down: int, phase: str,
                 repeat: int) -> list[Row]:
    """One request's traffic: socket bytes per direction and in total (both sides' sends), request-reply
    rounds, messages, shape-derived payload bytes and the link time the profile models per direction."""
    rounds = min(delta["messages_up"], delta["messages_down"])
    return [
        Row("uplink", "bytes", delta["bytes_up"], "socket", repeat=repeat),
        Row("downlink", "bytes", delta["bytes_down"], "socket", repeat=repeat),
        Row(phase, "bytes", delta["bytes_up"] + delta["bytes_down"], "socket", repeat=repeat),
        Row("uplink", "bytes", expected_up, "shapes", repeat=repeat),
        Row("downlink", "bytes", expected_down, "shapes", repeat=repeat),
        Row("uplink", "messages", delta["messages_up"], "socket", repeat=repeat),
        Row("downlink", "messages", delta["messages_down"], "socket", repeat=repeat),
        Row(phase, "rounds", rounds, "socket", repeat=repeat),
        Row("uplink", "latency", delta["link_time_up"], "modelled", repeat=repeat),
        Row("downlink", "latency", delta["link_time_down"], "modelled", repeat=repeat),
    ]


def modelled_total(compute_s: float, delta: Mapping[str, float], network: NetworkProfile, phase: str,
                   repeat: int) -> Row:
    """End-to-end latency on the profile: measured compute + rounds x RTT + bytes / bandwidth (one formula)."""
    rounds = min(delta["messages_up"], delta["messages_down"])
    return Row(phase, "latency", compute_s + network.time(rounds, delta["bytes_up"] + delta["bytes_down"]),
               "modelled", repeat=repeat)


def greedy_tokens(model: torch.nn.Module, input_ids: torch.Tensor, max_new_tokens: int,
                  on_token: Callable[[int], None] | None = None) -> torch.Tensor:
    """Greedy tokens of a plaintext causal LM with its own KV cache; `on_token(step)` after each choice.

    The head runs on the last position only where the model takes `logits_to_keep` (only it is used)."""
    keep = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    with torch.no_grad():
        out = model(input_ids=input_ids, use_cache=True, **keep)
        tokens = []
        for step in range(max_new_tokens):
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            tokens.append(nxt)
            if on_token is not None:
                on_token(step)
            if step + 1 < max_new_tokens:
                out = model(input_ids=nxt, past_key_values=out.past_key_values, use_cache=True, **keep)
    return torch.cat(tokens, dim=1)
