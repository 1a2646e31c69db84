"""Arithmetic the report needs to read the paper's numbers: what shapes, latencies and key spaces imply.

Pure functions (no harness, no protocol code): per-token latency under a network reading, the token
counts a traffic figure implies, embedding sizes, and log10 key-space sizes of the permutations
stip/keys.py draws. `model_key_space` alone reads a configs/model/*.yaml (through transformers and
stip.families, imported when called).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from protocols.paths import config_group
from transport.link import NetworkProfile, check_link

if TYPE_CHECKING:
    from report.reported import ReportedValue
    from stip.families import Dims

MIB = 2**20
MODEL_CONFIG_DIR = config_group("model")


def per_token_latency_s(compute_s: float, one_way_s: float, bytes_up: int = 0, bytes_down: int = 0,
                        bandwidth_bps: float | None = None) -> float:
    """One generated token's latency in STIP: compute + one message each way + bytes / bandwidth.

    `bandwidth_bps=None` means unlimited (no transfer time).
    """
    if min(compute_s, one_way_s, bytes_up, bytes_down) < 0:
        raise ValueError("compute, latency and bytes must be >= 0")
    link = check_link(NetworkProfile("paper", bandwidth_bps, rtt_s=2 * one_way_s))
    return compute_s + 2 * one_way_s + link.transfer_time(bytes_up + bytes_down)


def slope_readings_ms(compute_ms: float, stated_latency_ms: float, bytes_per_token: int = 0,
                      bandwidth_bps: float | None = None) -> dict[str, float]:
    """Per-token slope (ms) if the paper's stated latency is one-way vs a round trip (RTT)."""
    return {
        reading: 1e3 * per_token_latency_s(compute_ms / 1e3, one_way / 1e3, bytes_per_token, 0, bandwidth_bps)
        for reading, one_way in (("one_way", stated_latency_ms), ("rtt", stated_latency_ms / 2))
    }


def tokens_for_traffic(mib: float, values_per_token: int, bytes_per_value: int = 4) -> float:
    """How many rows of `values_per_token` values a traffic figure in MiB holds."""
    if values_per_token <= 0 or bytes_per_value <= 0:
        raise ValueError("values_per_token and bytes_per_value must be > 0")
    return mib * MIB / (values_per_token * bytes_per_value)


def table_mib(rows: int, columns: int, bytes_per_value: int = 4) -> float:
    """Size of a dense rows x columns table (e.g. an embedding) in MiB."""
    return rows * columns * bytes_per_value / MIB


def vit_embedding_params(hidden: int, image_size: int, patch_size: int, channels: int = 3) -> int:
    """Parameters of ViTEmbeddings: patch projection (weight + bias), CLS token, position table."""
    patches = (image_size // patch_size) ** 2
    return hidden * channels * patch_size**2 + hidden + hidden + (patches + 1) * hidden


def log10_factorial(n: int) -> float:
    """log10(n!) without forming n! (lgamma)."""
    if n < 0:
        raise ValueError(f"n={n} must be >= 0")
    return math.lgamma(n + 1) / math.log(10)


@dataclass(frozen=True)
class KeySpace:
    """log10 of the number of keys of each kind, as stip/keys.py draws them (per layer where noted)."""

    hidden: int
    n_layers: int
    pi: float  # input permutation: the data key, d!
    pi_c: float | None  # output permutation (None: the model has no output space of its own)
    qk_unstructured: float  # the paper's reading: any permutation of the attention width
    qk: float  # per layer, pi_i1 as drawn: n_kv! (group!)^n_kv, times (head_dim!)^n_kv without RoPE
    vo: float  # per layer, pi_i2 alone: n_kv! (group!)^n_kv (head_dim!)^n_kv
    attention: float  # per layer, pi_i1 and pi_i2 together (they share the head order)
    ffn: float  # per layer, pi_i3 (one per expert for MoE)
    total: float  # every key the developer holds

    @property
    def qk_reduction(self) -> float:
        """Orders of magnitude the head structure (and RoPE) removes from the Q/K key space."""
        return self.qk_unstructured - self.qk


def key_space(dims: "Dims", out_dim: int | None) -> KeySpace:
    """log10 key-space sizes for a model's shapes (stip.families.Dims), per head_structured_permutations."""
    if dims.n_heads % dims.n_kv_heads:
        raise ValueError(f"n_heads={dims.n_heads} is not a multiple of n_kv_heads={dims.n_kv_heads}")
    group = dims.n_heads // dims.n_kv_heads
    heads = log10_factorial(dims.n_kv_heads) + dims.n_kv_heads * log10_factorial(group)
    within = dims.n_kv_heads * log10_factorial(dims.head_dim)
    qk = heads + (0.0 if dims.rope else within)
    vo = heads + within
    attention = heads + (0.0 if dims.rope else within) + within
    ffn = max(dims.n_experts, 1) * log10_factorial(dims.ffn)
    pi = log10_factorial(dims.hidden)
    pi_c = None if out_dim is None else log10_factorial(out_dim)
    total = pi + (pi_c or 0.0) + dims.n_layers * (attention + ffn)
    return KeySpace(dims.hidden, dims.n_layers, pi, pi_c, log10_factorial(dims.n_heads * dims.head_dim), qk, vo,
                    attention, ffn, total)


# The paper's models that ship shapes in configs/model (Tab. 5 order; LLaVA-13b has no config here).
PAPER_MODELS = ("gpt2-124m", "gpt2-355m", "gpt2-774m", "gpt2-1.5b", "llama2-7b", "llama2-13b", "llama2-70b",
                "vit-base", "vit-large", "vit-huge", "bert-tiny", "bert-medium", "bert-base", "bert-large",
                "mixtral-8x7b")
OUTPUT_SIZE = {"causal_lm": "vocab_size", "image_classification": "num_labels"}  # head kind -> config field


def model_key_space(name: str, config_dir: Path | None = None) -> KeySpace:
    """Key space of a configs/model/<name>.yaml built from its published config values."""
    import yaml  # noqa: PLC0415 - key spaces only: the readings stay importable without transformers
    from transformers import AutoConfig  # noqa: PLC0415

    from stip.families import get_family  # noqa: PLC0415

    path = (config_dir or MODEL_CONFIG_DIR) / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no model config {path}; choose one of "
                                f"{sorted(p.stem for p in path.parent.glob('*.yaml'))}")
    spec = yaml.safe_load(path.read_text())
    if not spec.get("config"):
        raise ValueError(f"{path} holds no shapes (config: {{}}, weights '{spec.get('weights')}' bring their own); "
                         "pass its Dims to key_space() instead")
    config = AutoConfig.for_model(spec["model_type"], **spec["config"])
    dims = get_family(spec["model_type"]).dims(config)
    out_field = OUTPUT_SIZE.get(spec.get("head", ""))
    return key_space(dims, getattr(config, out_field) if out_field else None)


@dataclass(frozen=True)
class Reading:
    """One piece of the paper's arithmetic, recomputed from its printed numbers, for the report to state."""

    id: str
    statement: str
    value: float
    unit: str
    from_ids: tuple[str, ...]


def paper_readings(values: "list[ReportedValue]") -> list[Reading]:
    """The readings the report must state, each computed from the reported entries it names."""
    v = {r.id: r for r in values}

    def n(key: str) -> float:
        if key not in v:
            raise KeyError(f"reported entry '{key}' is missing from configs/reported; the reading needs it")
        return v[key].number()

    ratio = n("fig7a-stip-gpt2-124m-throughput") / n("fig7a-ciphergpt-throughput")
    compute = n("fig7c-slope-full-cloud")
    up = tokens_for_traffic(n("traffic-stip-uplink"), 768)
    down = tokens_for_traffic(n("traffic-stip-downlink"), 50257)
    return [
        Reading("throughput-ratio", f"45,366 / 6.7e-4 = {ratio:.2g}, not the printed "
                f"{n('fig7b-throughput-improvement'):.2g}", ratio, "x",
                ("fig7a-stip-gpt2-124m-throughput", "fig7a-ciphergpt-throughput", "fig7b-throughput-improvement")),
        Reading("ciphergpt-throughput-is-latency", "6.7e-4 token/s is one token per "
                f"{1 / n('fig7a-ciphergpt-throughput') / 60:.1f} min, the '> 25 min' per token inverted",
                1 / n("fig7a-ciphergpt-throughput"), "s", ("fig7a-ciphergpt-throughput", "fig2-ciphergpt-latency")),
        Reading("param-fold", f"70e9 / 336e6 = {n('fig7b-stip-max-params') / n('fig7b-baseline-max-params'):.1f}",
                n("fig7b-stip-max-params") / n("fig7b-baseline-max-params"), "x",
                ("fig7b-stip-max-params", "fig7b-baseline-max-params", "fig7b-param-scale-fold")),
        *(Reading(f"slope-{net}", f"{compute:g} + 2 x {n(f'fig7c-latency-{net}'):g} = "
                  f"{compute + 2 * n(f'fig7c-latency-{net}'):g} ms (one-way reading) vs printed "
                  f"{n(f'fig7c-slope-stip-{net}'):g}; as RTT {compute + n(f'fig7c-latency-{net}'):g}",
                  compute + 2 * n(f"fig7c-latency-{net}"), "ms/token",
                  ("fig7c-slope-full-cloud", f"fig7c-latency-{net}", f"fig7c-slope-stip-{net}"))
          for net in ("wired", "wireless")),
        Reading("uplink-tokens", f"5.8 MiB / (768 x 4 B) = {up:.0f} tokens (GPT-2 has 1,024 positions)", up, "count",
                ("traffic-stip-uplink",)),
        Reading("downlink-rows", f"7.5 MiB / (50,257 x 4 B) = {down:.1f} rows of logits", down, "count",
                ("traffic-stip-downlink",)),
        Reading("ciphergpt-traffic-gib", f"95,151 MiB = {n('traffic-ciphergpt') / 1024:.1f} GiB (printed '90 GiB')",
                n("traffic-ciphergpt") / 1024, "GiB", ("traffic-ciphergpt", "fig2-ciphergpt-traffic")),
        Reading("llama2-70b-embedding", f"32,000 x 8,192 is {table_mib(32000, 8192, 4):.0f} MiB fp32, "
                f"{table_mib(32000, 8192, 2):.0f} MiB fp16; printed {n('fig8-embedding-llama2-70b'):g} MiB",
                table_mib(32000, 8192, 4), "MiB", ("fig8-embedding-llama2-70b",)),
    ]
