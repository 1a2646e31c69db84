"""Where transformers' generation changes behaviour with the sequence length, read from a model config.

transformers 5 does three things at length thresholds that a cached, token-by-token STIP
generation must reproduce (or refuse by name):

- RoPE types whose frequencies depend on the largest position in a forward (`dynamic_rope_update`
  in transformers/modeling_rope_utils.py: any type with "dynamic" in its name, and "longrope").
  A forward carrying drafted tokens would use frequencies greedy decoding does not use yet.
- `dynamic` RoPE keeps its grown frequencies on the rotary module between forwards: state that
  one shared server model would carry from one client's request into another's (see RopeState).
- Phi-3 drops its KV cache and recomputes the whole sequence when it first grows past
  `original_max_position_embeddings` (Phi3ForCausalLM.prepare_inputs_for_generation).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

# model_type -> the config attribute at which its prepare_inputs_for_generation drops the cache and
# recomputes the sequence (tests/test_stip_generation_matrix.py scans the installed transformers for more)
CACHE_RECOMPUTE_AT = {"phi3": "original_max_position_embeddings"}


def position_dependent(rope_type: str) -> bool:
    """Whether transformers picks this RoPE type's frequencies from each forward's largest position."""
    return "dynamic" in rope_type or rope_type == "longrope"


def _rope_parameter_sets(config: Any) -> list[dict]:
    """The config's RoPE parameter dicts: one, or one per layer type (Gemma 3)."""
    params = getattr(config, "rope_parameters", None)
    if not isinstance(params, dict):
        return []
    if "rope_type" in params:
        return [params]
    return [p for p in params.values() if isinstance(p, dict) and "rope_type" in p]


@dataclass(frozen=True)
class GenerationRules:
    """One model's length thresholds: `rope` maps each position-dependent RoPE type to its threshold.

    For `longrope` the frequencies switch once, past the threshold; for `dynamic` they change at
    every length past it. `recompute_at`: transformers drops the cache when the sequence grows past it.
    """

    model_type: str
    rope: tuple[tuple[str, int], ...] = ()
    recompute_at: int | None = None

    @property
    def stateful_rope(self) -> bool:
        """The rotary module keeps state between forwards (dynamic RoPE): a server must reset it per session."""
        return any("dynamic" in kind for kind, _ in self.rope)

    def max_drafts(self, start: int) -> int | None:
        """How many drafts a forward whose first returned position is the `start`-th token may carry exactly.

        None: no limit. A drafted forward is exact only where transformers' frequencies (and its
        cache) would be the same at every one of its positions as greedy decoding's.
        """
        limits = []
        for kind, threshold in self.rope:
            if start <= threshold:
                limits.append(threshold - start)
            elif "dynamic" in kind:
                limits.append(0)  # past the threshold every length has its own frequencies
        if self.recompute_at is not None and start <= self.recompute_at:
            limits.append(self.recompute_at - start)
        return min(limits) if limits else None

    def recomputes(self, past: int, total: int) -> bool:
        """Whether transformers drops a cache of `past` tokens when the sequence grows to `total`."""
        return self.recompute_at is not None and 0 < past <= self.recompute_at < total


def generation_rules(config: Any) -> GenerationRules:
    """The thresholds `config` defines, as transformers 5 applies them during generation."""
    rope = []
    for params in _rope_parameter_sets(config):
        kind = str(params["rope_type"])
        if not position_dependent(kind):
            continue
        if kind == "longrope":
            threshold = params.get("original_max_position_embeddings") or \
                getattr(config, "original_max_position_embeddings", None)
        else:
            threshold = getattr(config, "max_position_embeddings", None)
        if threshold is None:
            raise ValueError(f"rope_type {kind!r} needs a length threshold but the config has none "
                             "(original_max_position_embeddings / max_position_embeddings); set it")
        rope.append((kind, int(threshold)))
    model_type = str(getattr(config, "model_type", ""))
    attr = CACHE_RECOMPUTE_AT.get(model_type)
    recompute = getattr(config, attr, None) if attr else None
    return GenerationRules(model_type, tuple(rope), None if recompute is None else int(recompute))


_ROPE_ATTRS = ("max_seq_len_cached", "attention_scaling", "long_inv_freq")


def _rotary_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules()
            if any(name.endswith("original_inv_freq") for name in (*m._buffers, *vars(m)))]


class RopeState:
    """Snapshot and restore of every rotary module's frequencies, so each session starts from the original.

    transformers' `dynamic` RoPE grows `inv_freq` / `max_seq_len_cached` on the module (and longrope
    writes `inv_freq` in place): ModelServer gives each session its own copy of that state.
    """

    def __init__(self, model: nn.Module) -> None:
        self.modules = _rotary_modules(model)
        self.original = self.capture()

    def capture(self) -> list[dict[tuple[str, str], Any]]:
        states = []
        for m in self.modules:
            state: dict[tuple[str, str], Any] = {("buffer", n): b.clone()
                                                 for n, b in m._buffers.items() if b is not None}
            state |= {("attr", n): (v.clone() if isinstance(v, torch.Tensor) else v)
                      for n, v in vars(m).items() if n.endswith(_ROPE_ATTRS) and not n.startswith("_")}
            states.append(state)
        return states

    def restore(self, states: list[dict[tuple[str, str], Any]] | None) -> None:
        """Put `states` (from capture(); None: the model's original state) back on the modules."""
        for m, state in zip(self.modules, states or self.original):
            for attr in [n for n in vars(m) if n.endswith(_ROPE_ATTRS) and not n.startswith("_")]:
                if ("attr", attr) not in state:  # e.g. long_inv_freq made after the snapshot
                    delattr(m, attr)
            for (kind, name), value in state.items():
                value = value.clone() if isinstance(value, torch.Tensor) else value
                if kind == "buffer":
                    m.register_buffer(name, value, persistent=False)
                else:
                    setattr(m, name, value)
