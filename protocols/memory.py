"""On-device memory of STIP's data owner: the tokenizer and the embedding module (the paper's Fig. 8)."""
from __future__ import annotations

import gc
import json
import logging
import os
import sys
from typing import Any, Callable

import psutil
import torch
from torch import nn
from transformers import PreTrainedModel

from protocols.contract import ModelSpec, Row
from protocols.models import auto_class, load_tokenizer
from transport.processes import run_to_end

log = logging.getLogger(__name__)


def module_bytes(module: nn.Module) -> int:
    """Bytes held by a module's parameters and buffers (shared tensors counted once)."""
    seen: set[int] = set()
    total = 0
    for t in list(module.parameters()) + list(module.buffers()):
        if t.data_ptr() in seen or t.device.type == "meta":
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total


def embedding_module(model: PreTrainedModel) -> nn.Module:
    """The model's input-embedding stage, the only part of the model a STIP device holds."""
    base = getattr(model, getattr(model, "base_model_prefix", ""), model)
    if hasattr(base, "embeddings"):
        return base.get_submodule("embeddings")
    if hasattr(base, "wte"):  # GPT-2: token + position tables
        return nn.ModuleDict({"wte": base.get_submodule("wte"), "wpe": base.get_submodule("wpe")})
    return model.get_input_embeddings()


def embedding_shape_bytes(config: Any, dtype: torch.dtype, model_type: str) -> int:
    """Embedding bytes from shapes alone, for models too big to build here (labelled as shape-derived)."""
    size = torch.empty((), dtype=dtype).element_size()
    h = config.hidden_size
    if model_type == "vit":
        patch = config.num_channels * config.patch_size ** 2 * h + h
        n_pos = (config.image_size // config.patch_size) ** 2 + 1
        return size * (patch + n_pos * h + h)
    n = config.vocab_size * h
    if model_type == "gpt2":
        n += config.n_positions * h
    if model_type == "bert":  # + position/token-type tables, LayerNorm, and two int64 id buffers
        n += config.max_position_embeddings * h + config.type_vocab_size * h + 2 * h
        return size * n + 2 * 8 * config.max_position_embeddings
    return size * n


def rss_bytes() -> int:
    """Resident set size of this process."""
    return psutil.Process(os.getpid()).memory_info().rss


def measure_rss_delta(load: Callable[[], Any]) -> tuple[Any, int]:
    """Load something and return it with the growth of this process's RSS (a measured footprint)."""
    gc.collect()
    before = rss_bytes()
    obj = load()
    gc.collect()
    return obj, max(rss_bytes() - before, 0)


def materialized_embedding(spec: ModelSpec, seed: int = 0) -> nn.Module:
    """The model's embedding stage as real CPU tensors, without building the rest (works for 70B shapes)."""
    if spec.weights != "random":  # real weights: small models, build them
        return embedding_module(spec.build())
    with torch.device("meta"):
        model = auto_class(spec.head).from_config(spec.config)
    emb = embedding_module(model)
    emb.to_empty(device="cpu")
    g = torch.Generator().manual_seed(seed)
    std = float(getattr(spec.config, "initializer_range", 0.02))
    with torch.no_grad():
        for name, p in emb.named_parameters():
            if "norm" in name.lower() or "layernorm" in name.lower():
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            elif p.ndim >= 2 or "cls_token" in name or "position" in name:
                p.copy_(torch.randn(p.shape, generator=g) * std)
            else:
                p.zero_()
        for b in emb.buffers():
            if b.is_floating_point():
                b.zero_()
            else:
                b.copy_(torch.arange(b.shape[-1]).expand_as(b) if b.ndim else b.zero_())
    return emb.to(spec.torch_dtype)


FRAME_HW = (480, 640)  # the frame Fig. 8's image-processor reading preprocesses: one VGA RGB camera frame


def tokenizer_bytes_subprocess(kind: str | None, image_size: int = 224,
                               timeout_s: float = 120.0) -> dict[str, int | None] | None:
    """RSS growth of loading the tokenizer `kind` in a fresh process (no caches shared): `tokenizer_bytes`, and for
    an image processor `after_frame_bytes`, the growth once it has also preprocessed one FRAME_HW frame."""
    if not kind:
        return None
    proc = run_to_end([sys.executable, "-m", "protocols.memory", json.dumps([kind, image_size])],
                      timeout_s=timeout_s, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if proc.returncode != 0:
        log.warning("tokenizer memory of %s not measured: %s", kind, proc.stderr[-500:])
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def device_memory_rows(spec: ModelSpec, seed: int = 0) -> list[Row]:
    """Fig. 8 rows: measured embedding-module bytes and tokenizer RSS growth (when a tokenizer exists)."""
    emb = materialized_embedding(spec, seed)
    rows = [Row("device_embedding", "memory", module_bytes(emb), "host")]
    size = int(getattr(spec.config, "image_size", 224) or 224)
    got = tokenizer_bytes_subprocess(spec.tokenizer, size) or {}
    if (loaded := got.get("tokenizer_bytes")) is not None:
        rows.append(Row("device_tokenizer", "memory", int(loaded), "host"))
    if (framed := got.get("after_frame_bytes")) is not None:  # an image processor after preprocessing one frame
        rows.append(Row("device_tokenizer", "memory_after_frame", int(framed), "host"))
    return rows


def one_frame(height: int, width: int, seed: int = 0) -> Any:
    """One RGB camera frame (uint8, seeded random pixels) as a PIL image, the input an image processor takes."""
    import numpy as np  # noqa: PLC0415 - only the image-processor child needs it
    from PIL import Image  # noqa: PLC0415

    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _main() -> None:
    """Child process of tokenizer_bytes_subprocess: load the tokenizer, print the RSS growth as JSON.

    For an image processor also preprocess one frame (made before the baseline: the camera's, not the processor's
    memory) and report the RSS growth from the same baseline while its pixel_values are held (`after_frame_bytes`:
    the processor plus its first call's working memory and output, Fig. 8's reading)."""
    # Import the loaders (and the libraries behind them) before the baseline: count the tokenizer, not code.
    from transformers import AutoTokenizer, ViTImageProcessor  # noqa: F401, PLC0415 - before the baseline
    from transformers.tokenization_utils_tokenizers import PreTrainedTokenizerFast  # noqa: F401, PLC0415

    kind, image_size = json.loads(sys.argv[1])
    frame = one_frame(*FRAME_HW) if kind == "vit_image_processor" else None
    gc.collect()
    before = rss_bytes()
    tok = load_tokenizer(kind, image_size)
    gc.collect()
    result: dict[str, int | None] = {"tokenizer_bytes": None if tok is None else max(rss_bytes() - before, 0)}
    if frame is not None and tok is not None:
        pixels = tok(images=frame, return_tensors="pt")["pixel_values"]
        gc.collect()
        result["after_frame_bytes"] = max(rss_bytes() - before, 0)
        del pixels
    print(json.dumps(result))


if __name__ == "__main__":
    _main()
