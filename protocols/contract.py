"""The contract between the runner and every protocol: a typed config, a ModelSpec, a RunRequest, Rows.

Protocols import this layer, stip/ and transport/, never bench/; the runner knows a protocol only by
its config's `_target_` (configs/protocol/*.yaml) and what this module declares.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Generic, Mapping, Optional, TypeVar, cast

import torch
from omegaconf import OmegaConf

from protocols.vocabulary import check
from transport.link import NetworkProfile

TASKS = ("forward", "generate", "memory", "shapes")
INPUTS = ("random", "prompt_suite")  # generation prompts: random ids, or the shipped suite (protocols.workload)


@dataclass
class ProtocolConfig:
    """Fields every protocol config has; a protocol subclasses it and validates its own in __post_init__."""

    _target_: str = ""
    name: str = ""
    approx: Optional[str] = None  # an approximation (MPC only); never a mode, a transform or a placement


C = TypeVar("C", bound=ProtocolConfig)


def typed_config(cls: type[C], cfg: C | Mapping[str, Any]) -> C:
    """The config as its dataclass: unknown keys and wrong types fail here, values in __post_init__."""
    if isinstance(cfg, cls):
        return cfg
    values = cast(Mapping[str, Any], cfg)  # not a C, so the mapping a yaml or a caller gave
    merged = OmegaConf.merge(OmegaConf.structured(cls), OmegaConf.create(dict(values)))
    return cast(C, OmegaConf.to_object(merged))  # a structured node's object is its dataclass


@dataclass
class ModelSpec:
    """What a protocol needs to know about the model under test (built from configs/model/*.yaml)."""

    name: str
    model_type: str
    build: Callable[[], Any]  # -> transformers PreTrainedModel in eval mode
    make_inputs: Callable[[int, int, int], dict]  # (batch, seq_len, seed) -> model kwargs
    config: Any = None  # the transformers config
    head: str = "base"  # causal_lm | base | image_classification
    dtype: str = "float32"
    weights: str = "random"  # random | minilm | smollm2 | path (model.path=DIR)
    n_params: int | None = None
    fits_on_host: bool = True
    tokenizer: str | None = None  # the device's tokenizer kind (configs/model/*.yaml)
    source: str = ""
    # The plaintext model accuracy is judged against when it is not this model (a distilled student's
    # teacher, configs/model `reference`); None: the model itself.
    build_reference: Callable[[], Any] | None = None

    def reference(self, built: Any) -> Any:
        """The plaintext model to compare outputs with; `built` is this model already built."""
        return built if self.build_reference is None else self.build_reference()

    @property
    def torch_dtype(self) -> torch.dtype:
        """The weights' torch dtype."""
        return getattr(torch, self.dtype)

    @property
    def hidden_size(self) -> int:
        return int(self.config.hidden_size)

    @property
    def vocab_size(self) -> int | None:
        return getattr(self.config, "vocab_size", None)

    @property
    def num_labels(self) -> int | None:
        return getattr(self.config, "num_labels", None)

    def tokens_per_sample(self, seq_len: int) -> int:
        """Sequence length the model really processes: seq_len for text, patches + CLS for ViT."""
        if self.model_type == "vit":
            return (self.config.image_size // self.config.patch_size) ** 2 + 1
        return seq_len


@dataclass
class RemoteCloudConfig:
    """A cloud already serving elsewhere (`python -m transport serve`), from the runner's `cloud.*` options."""

    address: str  # host:port
    token_file: Optional[str] = None  # the shared token (default: $STIP_CLOUD_TOKEN)
    ca_file: Optional[str] = None  # the server's certificate or its CA (PEM): TLS; None: plain TCP (loopback)
    server_hostname: Optional[str] = None  # the name in the server's certificate, when not the address's host


@dataclass
class PartiesConfig:
    """MPC parties on other hosts or in namespaces (the runner's `parties.*`, docs/multi-host.md).

    `rendezvous` None: every party on this host's loopback (the default). Checked by baselines.mpc.hosts."""

    rendezvous: Optional[str] = None  # tcp://HOST:PORT (rank 0's host) | file:///path all parties can open
    hosts: Optional[list] = None  # one address per rank: [server, device] (+ the TTP's with provider=TTP)
    local: Optional[list] = None  # ranks this runner starts (None: [1], the device); the rest get a printed command
    allow_network: bool = False  # needed for any non-loopback host or a tcp:// rendezvous (no TLS in CrypTen/Gloo)
    netns: Optional[dict] = None  # rank -> network namespace a local party enters first (transport.netns)


@dataclass
class RunRequest:
    """One run's workload and the runner's resources for it; validated here, once."""

    batch_size: int
    seq_len: int
    repeats: int
    warmup: int
    seed: int
    task: str = "forward"
    max_new_tokens: int = 0
    inputs: str = "random"
    workdir: Path = field(default_factory=lambda: Path.cwd() / "outputs" / "scratch")
    cloud_timeout_s: float = 120.0
    remote_cloud: Optional[RemoteCloudConfig] = None  # None: the runner starts its own cloud process
    threads: Optional[int] = None  # torch/OMP threads per process the run starts (None: transport.threads default)
    parties: Optional[PartiesConfig] = None  # None: MPC parties on this host's loopback (file:// rendezvous)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task {self.task!r} is unknown; choose one of {list(TASKS)}")
        for name in ("batch_size", "seq_len", "repeats"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"run.{name}={getattr(self, name)} must be >= 1")
        if self.warmup < 0:
            raise ValueError(f"run.warmup={self.warmup} must be >= 0")
        if self.task == "generate" and self.max_new_tokens < 1:
            raise ValueError("task generate needs run.max_new_tokens >= 1")
        if self.inputs not in INPUTS:
            raise ValueError(f"run.inputs={self.inputs!r}; choose one of {list(INPUTS)}")
        if self.inputs == "prompt_suite" and (self.task != "generate" or self.batch_size != 1):
            raise ValueError(f"run.inputs=prompt_suite is for task generate with batch_size 1 (one prompt per pass); "
                             f"got task={self.task!r}, batch_size={self.batch_size}")
        self.workdir = Path(self.workdir)
        if self.threads is not None and int(self.threads) < 1:
            raise ValueError(f"run.threads={self.threads} must be >= 1, or null for the default (transport.threads)")

    def repeats_with_warmup(self):
        """(repeat, seed) for each pass: warm-up passes have repeat < 0 and are not recorded."""
        for i in range(self.warmup + self.repeats):
            yield i - self.warmup, self.seed + i


@dataclass
class Row:
    """One measurement in the vocabulary of protocols/vocabulary.py; the runner adds the run's columns."""

    phase: str
    metric: str
    value: float
    source: str
    repeat: int = 0
    seq_len: int | None = None  # set only where it differs from the run's (generation tokens)
    unit: str = field(init=False)

    def __post_init__(self) -> None:
        self.unit = check(self.phase, self.metric, self.source)
        self.value = float(self.value)


@dataclass(frozen=True)
class AccuracyBound:
    """What a protocol's accuracy (phase `output`, protocols.accuracy) must reach for a run to count as converged.

    A finished run with a non-finite output, a `top1_agreement` below `min_top1` or a `max_abs_error` above
    `max_abs_error` is `diverged` (bench/status.py); None skips that check. `holds` says where the bound was
    measured and what to do outside it (named in the run's status_reason).
    """

    min_top1: Optional[float]
    max_abs_error: Optional[float]
    holds: str = ""


# Exact protocols (STIP, full cloud, model split): only float32 rounding separates them from plaintext; the largest
# error measured in results/ is 1.9e-4 (SmolLM2 logits), top-1 is 1.0 everywhere.
EXACT_BOUND = AccuracyBound(min_top1=1.0 - 1e-9, max_abs_error=1e-2,
                            holds="exact up to float32 rounding: any top-1 flip or error above 1e-2 is a bug")


class Protocol(abc.ABC, Generic[C]):
    """A protocol prepares once (keys, transformed weights, shares) and runs many requests.

    Typed by its config (as optimum-benchmark's Backend): `config_class` is the dataclass C, so `self.cfg`
    is that dataclass and its defaults are the only ones (configs/protocol/*.yaml list what differs).
    """

    config_class: ClassVar[type[ProtocolConfig]] = ProtocolConfig  # C itself (a ClassVar cannot name C)
    # Whether runs may share the host with other runs (plaintext compute); MPC timings would interfere.
    parallel_safe: ClassVar[bool] = False

    def __init__(self, cfg: C | Mapping[str, Any]) -> None:
        self.cfg: C = cast(C, typed_config(self.config_class, cfg))  # config_class is C

    @property
    def name(self) -> str:
        return self.cfg.name or type(self).__name__

    def approx_name(self) -> str | None:
        """The approximation label of the rows' `approx` column (None: exact)."""
        return self.cfg.approx

    def security_label(self) -> str | None:
        """The threat model the rows' `security` column names (protocols.vocabulary.SECURITY; None: not MPC)."""
        return None

    def engine_name(self) -> str | None:
        """The MPC engine the rows' `engine` column names (crypten | spu; None: not MPC)."""
        return None

    def accuracy_bound(self) -> AccuracyBound | None:
        """The accuracy below which a finished run is `diverged` (None: no check); exact unless overridden."""
        return EXACT_BOUND

    @abc.abstractmethod
    def run(self, model: ModelSpec, network: NetworkProfile, request: RunRequest) -> list[Row]:
        """Run the workload and return raw per-repeat rows."""
