"""Transform a saved safetensors checkpoint shard by shard (peak memory ~ one shard).

The developer side of STIP for models too big to hold twice: read each shard, transform its
tensors, write the cloud shard, drop it. Tied LM heads are materialised from the embedding.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch
import transformers
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoConfig

from .families import DEVICE, get_family
from .keys import DEVELOPER_KEYS_FILE, USER_KEYS_FILE
from .transform import expected_key_shapes, generate_keys, output_dim, transform_tensor

log = logging.getLogger(__name__)
INDEX_FILE = "model.safetensors.index.json"
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
HEAD_SHARD = "model-untied-lm-head.safetensors"  # the untied LM head, written apart from its embedding


def _tied_head(config) -> tuple[str, str] | None:
    """(head name, embedding name) when the checkpoint's LM head is tied to its embedding."""
    if not getattr(config, "tie_word_embeddings", False):
        return None
    for arch in getattr(config, "architectures", None) or []:
        tied = getattr(getattr(transformers, arch, None), "_tied_weights_keys", None)
        if isinstance(tied, dict) and tied:
            head, embedding = next(iter(tied.items()))
            return head, embedding
    return None


def _shard_shapes(shards: list[Path]) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for shard in shards:
        with safe_open(str(shard), framework="pt") as fh:
            for name in fh.keys():
                shapes[name] = tuple(fh.get_slice(name).get_shape())
    return shapes


def _write_shard(tensors: dict, path: Path, weight_map: dict[str, str]) -> None:
    save_file(tensors, str(path), metadata={"format": "pt"})
    weight_map.update({name: path.name for name in tensors})
    log.info("wrote %s (%d tensors)", path.name, len(tensors))


def transform_checkpoint(model_dir: str | Path, out_dir: str | Path, keys_dir: str | Path,
                         seed: int | None = None) -> dict:
    """Write the cloud checkpoint to `out_dir` and the developer/user key files to `keys_dir`."""
    model_dir, out_dir, keys_dir = Path(model_dir), Path(out_dir), Path(keys_dir)
    shards = sorted(model_dir.glob("*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"no *.safetensors shards in {model_dir}; save the model with "
                                "save_pretrained(safe_serialization=True) first")
    if out_dir.resolve() == model_dir.resolve():
        raise ValueError(f"--out {out_dir} is the input folder; choose another folder so the original stays intact")
    config = AutoConfig.from_pretrained(model_dir)
    family = get_family(config.model_type)
    shapes = _shard_shapes(shards)
    tied = _tied_head(config)
    if tied and tied[0] in shapes:
        tied = None  # the checkpoint already stores the head
    untied_head = bool(tied)
    if tied:
        shapes[tied[0]] = shapes[tied[1]]
    for name in shapes:
        family.spaces_for(name)  # every tensor must have a rule before anything is written
    dims = family.dims(config)
    out_dim = output_dim(family, shapes)
    keys = generate_keys(dims, out_dim, config.model_type, seed)
    keys.check_shapes(expected_key_shapes(dims, out_dim))
    keys.save(keys_dir / DEVELOPER_KEYS_FILE)
    keys.user_keys().save(keys_dir / USER_KEYS_FILE)

    out_dir.mkdir(parents=True, exist_ok=True)
    weight_map: dict[str, str] = {}
    out_names = {shard: shard.name for shard in shards}
    head_name = HEAD_SHARD
    if untied_head and len(shards) == 1:  # the stock loader prefers a lone model.safetensors over an index
        out_names[shards[0]], head_name = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
    for shard in shards:
        transformed = {}
        with safe_open(str(shard), framework="pt") as fh:
            for name in fh.keys():
                spaces, where = family.spaces_for(name)
                if spaces == DEVICE:  # zeroed for the cloud: only the shape and dtype are needed
                    like = fh.get_slice(name)
                    transformed[name] = torch.zeros(like.get_shape(), dtype=_DTYPES[like.get_dtype()])
                else:
                    transformed[name] = transform_tensor(fh.get_tensor(name), spaces, where, keys)
        _write_shard(transformed, out_dir / out_names[shard], weight_map)
        del transformed
        if tied and tied[1] in weight_map:  # untie into a shard of its own: one big tensor at a time
            with safe_open(str(shard), framework="pt") as fh:
                head_spaces, _ = family.spaces_for(tied[0])
                head = {tied[0]: transform_tensor(fh.get_tensor(tied[1]), head_spaces, {}, keys)}
            _write_shard(head, out_dir / head_name, weight_map)
            del head
            tied = None

    if len(set(weight_map.values())) > 1:  # several files: the stock loader needs the index
        index = json.loads((model_dir / INDEX_FILE).read_text()) if (model_dir / INDEX_FILE).exists() else {}
        total = sum((out_dir / name).stat().st_size for name in set(weight_map.values()))
        index["metadata"] = {**index.get("metadata", {}), "total_size": total}
        index["weight_map"] = weight_map
        (out_dir / INDEX_FILE).write_text(json.dumps(index, indent=2))
    config.tie_word_embeddings = False
    config.save_pretrained(out_dir)
    if (model_dir / "generation_config.json").exists():
        shutil.copy(model_dir / "generation_config.json", out_dir / "generation_config.json")
    return {"model_type": config.model_type, "shards": len(shards), "tensors": len(weight_map),
            "keys": len(keys.tensors), "untied_head": untied_head}
