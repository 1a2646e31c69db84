"""Each privacy attack's own typed config: its fields are the keys of configs/attack/<name>.yaml, defaults the same.

bench/privacy.py pairs each class with the function that runs the attack (its ATTACKS registry) and parses every
`attacks.<name>` node with `parse_attack` once, before any attack runs: an unknown key, a wrong type or a value
outside an attack's choices fails there, naming the attack, the key and what is allowed.
"""
from __future__ import annotations

import re
import typing
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Mapping, Protocol, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from stip.attacks import inverter
from stip.attacks.matrix import SCHEMES, MatrixCfg

DRIFT_KINDS = ("perturb", "finetune")  # stip.attacks.measure._drifted


def _list(*values: Any) -> Any:
    """A list default (a fresh list per instance)."""
    return field(default_factory=lambda: list(values))


@dataclass
class AttackConfig:
    """What every attack's yaml holds: whether it runs and on which configured models."""

    enabled: bool = True
    models: list[str] = _list()
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {}  # a str (or list[str]) field: its allowed values

    def model_names(self) -> list[str]:
        """Every entry of `models:` (configs/privacy.yaml) this attack loads."""
        return list(self.models)


class Drifting(Protocol):
    """An attack run against a drifted (fine-tuned) developer model: the drift stand-in's knobs."""

    drifts: list[float]
    drift_kind: str
    drift_lr: float


class RowLimited(Protocol):
    """An attack on the first `max_rows` rows of the users' batch (0 = all)."""

    max_rows: int


@dataclass
class MultisetCfg(AttackConfig):
    models: list[str] = _list("gpt2", "bert", "llama", "mixtral", "minilm-l6", "smollm2-135m")
    drifts: list[float] = _list(0.0, 0.05)
    drift_kind: str = "perturb"
    drift_lr: float = 1e-4
    max_rows: int = 0
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"drift_kind": DRIFT_KINDS}


@dataclass
class WeightAlignmentCfg(AttackConfig):
    models: list[str] = _list("gpt2", "bert", "llama", "mixtral", "minilm-l6")
    drifts: list[float] = _list(0.0, 0.05)
    drift_kind: str = "perturb"
    drift_lr: float = 1e-4
    max_rows: int = 0
    hungarian_limit: int = 8192
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"drift_kind": DRIFT_KINDS}


@dataclass
class KnownPlaintextCfg(AttackConfig):
    models: list[str] = _list("gpt2", "llama", "minilm-l6", "smollm2-135m")
    ns: list[int] = _list(1, 2, 4, 16)
    sigma_rel: float = 0.0


@dataclass
class HiddenStateCfg(AttackConfig):
    models: list[str] = _list("llama", "smollm2-135m")
    layers: list[int] = _list(1)
    drifts: list[float] = _list(0.0, 10.0)
    drift_kind: str = "finetune"
    drift_lr: float = 1e-4
    candidates: int = 0
    order: str = "logits"
    tolerance: float = 0.01
    seq_len: int = 16
    max_rows: int = 2
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"drift_kind": DRIFT_KINDS, "order": ("index", "logits")}


@dataclass
class LearnedInverterCfg(AttackConfig):
    models: list[str] = _list("llama", "smollm2-135m")
    layers: list[int] = _list(1, 8)
    features: list[str] = _list("sorted", "aligned", "weights")
    kind: str = "ridge"
    drifts: list[float] = _list(0.0, 10.0)
    drift_kind: str = "finetune"
    drift_lr: float = 1e-4
    max_rows: int = 0
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"features": inverter.FEATURES, "kind": inverter.KINDS,
                                                     "drift_kind": DRIFT_KINDS}


@dataclass
class MoeRoutingCfg(AttackConfig):
    models: list[str] = _list("mixtral")
    max_rows: int = 0


@dataclass
class VitPatchCfg(AttackConfig):
    models: list[str] = _list("vit")
    n_images: int = 2


@dataclass
class FunctionalTheftCfg(AttackConfig):
    models: list[str] = _list("gpt2", "bert", "llama", "minilm-l6")


@dataclass
class OutputFrequencyCfg(AttackConfig):
    models: list[str] = _list("smollm2-135m")
    tokens: int = 2048
    chunk: int = 128
    methods: list[str] = _list("rank", "logit_profile")
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"methods": ("rank", "logit_profile")}


@dataclass
class BaselinesCfg(AttackConfig):
    models: list[str] = _list("minilm-l6", "llama")
    projection_ns: list[int] = _list(16, 64, 384)
    split_models: list[str] = _list("llama")
    split_layers: list[int] = _list(0, 1)
    candidates: int = 32
    seq_len: int = 8
    max_rows: int = 0

    def model_names(self) -> list[str]:
        """The projection's models and the split's (both must be configured models)."""
        return [*self.models, *self.split_models]


@dataclass
class NoiseFrontierCfg(AttackConfig):
    models: list[str] = _list("llama", "minilm-l6")
    sigmas_rel: list[float] = _list(0.0, 0.1, 0.3, 1.0, 3.0)
    kpa_rows: int = 8


@dataclass
class SpeculationLengthCfg(AttackConfig):
    models: list[str] = _list("smollm2-135m")
    new_tokens: int = 32
    pairs: int = 12
    draft_corpus: str = "public"
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"draft_corpus": ("none", "public")}


@dataclass
class SchemeMatrixCfg(AttackConfig):
    """The arms and their sizes; the matrix's own defaults are stip.attacks.matrix.MatrixCfg's (the one place)."""

    models: list[str] = _list("smollm2-135m")
    schemes: list[str] = _list(*SCHEMES)
    noise_sigma_rel: float = MatrixCfg.noise_sigma_rel
    real_tokens: int = 256
    row_len: int = 32
    per_text: int = 64
    kpa_ns: list[int] = field(default_factory=lambda: list(MatrixCfg().kpa_ns))
    hidden_layer: int = MatrixCfg.hidden_layer
    hidden_sequences: int = MatrixCfg.hidden_sequences
    hidden_tokens: int = MatrixCfg.hidden_tokens
    candidates: int = MatrixCfg.candidates
    latency_reps: int = MatrixCfg.latency_reps
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"schemes": SCHEMES}


C = TypeVar("C", bound=AttackConfig)


def _type_name(hint: Any) -> str:
    return hint.__name__ if type(hint) is type else str(hint)


def parse_attack(name: str, cls: type[C], given: Any) -> C:
    """`attacks.<name>` as `cls`, or a ValueError naming the attack, the bad key or value and what is allowed."""
    if not isinstance(given, Mapping):
        raise ValueError(f"attacks.{name} must be a mapping of {cls.__name__}'s keys, got {given!r}")
    known = [f.name for f in fields(cls)]
    unknown = sorted(str(k) for k in set(given) - set(known))
    if unknown:
        raise ValueError(f"attacks.{name}: unknown key(s) {unknown}; {name} ({cls.__name__}) knows {known}")
    try:
        typed = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), dict(given)))
    except OmegaConfBaseException as e:
        match = re.match(r"\w+", str(e.full_key or e.key or ""))
        key = match.group(0) if match and match.group(0) in known else None
        if key is None:
            raise ValueError(f"attacks.{name} ({cls.__name__}): {e}") from e
        hint = typing.get_type_hints(cls)[key]
        raise ValueError(f"attacks.{name}.{key}={given[key]!r} has the wrong type: {name} ({cls.__name__}) expects "
                         f"{_type_name(hint)}") from e
    assert isinstance(typed, cls)
    for key, allowed in cls.CHOICES.items():
        value = getattr(typed, key)
        bad = [v for v in (value if isinstance(value, list) else [value]) if v not in allowed]
        if bad:
            raise ValueError(f"attacks.{name}.{key}={value!r}: {bad} not allowed; choose from {list(allowed)}")
    return typed
