"""Transform a saved safetensors checkpoint block by block (peak memory: a few MiB of tensors).

The developer side of STIP for models too big to hold twice: each tensor is read in blocks of
rows (in permuted order), permuted and appended to the cloud shard, never whole. Names are matched to the stock
class (a base-model checkpoint such as the hub's GPT-2 gets its prefix), buffers the stock
loader ignores are dropped, and every tied pair the loader would tie is written out.
"""
from __future__ import annotations

import json
import logging
import re
import shutil
import sys
from dataclasses import dataclass, field
from functools import partial
from io import BufferedReader
from pathlib import Path

import torch
import transformers
from tqdm.auto import tqdm
from transformers import AutoConfig

from .families import DEVICE, Family, get_family
from .keycheck import check_keys
from .keys import DEVELOPER_KEYS_FILE, USER_KEYS_FILE
from .parties import KEY_ID_FIELD
from .shardio import Entry, ShardWriter, read_header, read_tensor
from .tied import loader_tied_pairs
from .transform import generate_keys, output_dim, transform_stored

log = logging.getLogger(__name__)
INDEX_FILE = "model.safetensors.index.json"
HEAD_SHARD = "model-untied-lm-head.safetensors"  # tied targets, written apart from their sources
WEIGHT_FILES = ("*.safetensors", "*.safetensors.index.json", "*.bin", "*.bin.index.json", "*.pt", "*.pth",
                "*.ckpt", "*.h5", "*.msgpack")
# Mask buffers that old GPT-2 checkpoints store and no current class has; the stock loader drops them.
LEGACY_BUFFERS = (r"(^|\.)attn\.masked_bias$",)


class CheckpointError(ValueError):
    """A folder or checkpoint that `stip transform` refuses; the message names it and the way out."""


@dataclass
class Source:
    """One tensor to write: its name in the cloud checkpoint and where it is read from."""

    name: str
    shard: Path
    stored_name: str
    entry: Entry


@dataclass
class Plan:
    """What the cloud checkpoint will hold, decided before anything is written."""

    files: dict[str, list[Source]] = field(default_factory=dict)  # output file -> tensors, in order
    materialised: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    renamed: int = 0

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {s.name: s.entry.shape for sources in self.files.values() for s in sources}


def check_folders(model_dir: Path, out_dir: Path, keys_dir: Path, force: bool) -> None:
    """Refuse folder choices that would lose data or ship keys; all checked before writing."""
    if not model_dir.is_dir():
        raise CheckpointError(f"--model {model_dir} is not a folder; pass the folder that save_pretrained wrote")
    if not (model_dir / "config.json").is_file():
        raise CheckpointError(f"--model {model_dir} has no config.json; save the model with save_pretrained first")
    out, keys = out_dir.resolve(), keys_dir.resolve()
    if out == model_dir.resolve():
        raise CheckpointError(f"--out {out_dir} is the input folder; "
                              "choose another folder so the original stays intact")
    if keys == out or out in keys.parents:
        raise CheckpointError(f"--keys {keys_dir} is inside --out {out_dir}: the developer keys would ship with the "
                              "cloud checkpoint; choose a --keys folder outside --out")
    if out_dir.exists() and not out_dir.is_dir():
        raise CheckpointError(f"--out {out_dir} is a file; choose a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise CheckpointError(f"--out {out_dir} is not empty (old weights there would be loaded instead of the new "
                              "ones); choose an empty folder, or pass --force to replace its weight and index files")
    for name in (DEVELOPER_KEYS_FILE, USER_KEYS_FILE):
        if (keys_dir / name).exists() and not force:
            raise CheckpointError(f"{keys_dir / name} exists; keys made for another checkpoint would be lost: "
                                  "choose another --keys folder, or pass --force to overwrite them")


def clear_weights(out_dir: Path) -> list[str]:
    """Delete the weight and index files of an --out folder (other files stay)."""
    removed = []
    for pattern in WEIGHT_FILES:
        for path in out_dir.glob(pattern):
            if path.is_file():
                path.unlink()
                removed.append(path.name)
    return removed


def _source_shards(model_dir: Path) -> list[Path]:
    index = model_dir / INDEX_FILE
    if index.is_file():
        names = sorted(set(json.loads(index.read_text()).get("weight_map", {}).values()))
        missing = [n for n in names if not (model_dir / n).is_file()]
        if missing:
            raise CheckpointError(f"{index} lists {missing[0]}, which is not in {model_dir}; copy the whole checkpoint")
        return [model_dir / n for n in names]
    shards = sorted(model_dir.glob("*.safetensors"))
    if not shards:
        raise CheckpointError(f"no *.safetensors shards in {model_dir}; save the model with "
                              "save_pretrained(safe_serialization=True) first")
    return shards


def _family_for(model_dir: Path) -> Family:
    """The family from config.json's model_type, before transformers parses the config."""
    try:
        model_type = json.loads((model_dir / "config.json").read_text()).get("model_type")
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{model_dir / 'config.json'} is not valid JSON ({err.msg}, line {err.lineno})") from None
    if not model_type:
        raise CheckpointError(f"{model_dir / 'config.json'} has no model_type; save the model with save_pretrained")
    return get_family(model_type)


def _meta_model(config) -> transformers.PreTrainedModel | None:
    """The stock class named by config.architectures, built on the meta device (no memory)."""
    archs = getattr(config, "architectures", None) or []
    if not archs and getattr(config, "tie_word_embeddings", False):
        raise CheckpointError("config.json names no architectures, so the tied weights to write out are unknown; "
                              "set architectures to the stock class (e.g. [\"GPT2LMHeadModel\"])")
    if not archs:
        return None
    cls = getattr(transformers, archs[0], None)
    if cls is None:
        raise CheckpointError(f"config.architectures names {archs[0]!r}, which this transformers "
                              f"{transformers.__version__} does not have; set it to a stock class")
    with torch.device("meta"):
        return cls(config)


def _ignored_by_loader(model: transformers.PreTrainedModel | None) -> re.Pattern:
    """Names the stock loader drops silently (its ignore patterns) plus legacy mask buffers."""
    patterns = set(LEGACY_BUFFERS)
    if model is not None:
        patterns |= set(getattr(model, "_keys_to_ignore_on_load_unexpected", None) or ())
        if any(name.endswith("rotary_emb.inv_freq") for name, _ in model.named_buffers()):
            patterns.add(r"rotary_emb\.inv_freq")
        if any(name.endswith("position_ids") for name, _ in model.named_buffers()):
            patterns.add(r"(^|\.)position_ids$")
    return re.compile("|".join(f"({p})" for p in sorted(patterns)))


def plan_checkpoint(shards: list[Path], family: Family, model: transformers.PreTrainedModel | None) -> Plan:
    """Name every output tensor as the stock class expects and find the tied targets to write."""
    expected = set(model.state_dict()) if model is not None else set()
    prefix = getattr(model, "base_model_prefix", "") if model is not None else ""
    ignored = _ignored_by_loader(model)
    plan = Plan()
    by_name: dict[str, Source] = {}
    for shard in shards:
        sources = []
        for stored, entry in read_header(shard).items():
            name = stored
            if expected and stored not in expected and prefix and f"{prefix}.{stored}" in expected:
                name, plan.renamed = f"{prefix}.{stored}", plan.renamed + 1  # a base-model checkpoint
            if name not in expected and ignored.search(name):
                plan.skipped.append(stored)
                continue
            family.spaces_for(name)  # every tensor needs a rule before anything is written
            sources.append(by_name.setdefault(name, Source(name, shard, stored, entry)))
        plan.files[shard.name] = sources
    tied = loader_tied_pairs(model) if model is not None else {}
    head = []
    for target, source in sorted(tied.items()):
        if target in by_name:
            continue
        if source not in by_name:  # stored under other names (a converted layout): cannot tell what to write
            raise CheckpointError(f"the stock class ties {target} to {source}, but the checkpoint stores neither "
                                  "under these names; transform this model in memory instead "
                                  "(ModelDeveloper(model).cloud_model().save_pretrained(...))")
        family.spaces_for(target)
        src = by_name[source]
        head.append(Source(target, src.shard, src.stored_name, src.entry))
        plan.materialised.append(target)
    if head:
        if len(shards) == 1:  # the stock loader prefers a lone model.safetensors over an index
            plan.files = {"model-00001-of-00002.safetensors": plan.files[shards[0].name]}
            plan.files["model-00002-of-00002.safetensors"] = head
        else:
            plan.files[HEAD_SHARD] = head
    return plan


def _write_file(path: Path, sources: list[Source], family: Family, keys) -> None:
    with ShardWriter(path, [(s.name, s.entry.dtype, s.entry.shape) for s in sources]) as writer:
        handles: dict[Path, BufferedReader] = {}
        try:
            for s in sources:
                spaces, where = family.spaces_for(s.name)
                if spaces == DEVICE:  # zeroed for the cloud: never read
                    writer.write_zeros(s.name)
                    continue
                fh = handles.setdefault(s.shard, open(s.shard, "rb"))
                blocks = transform_stored(partial(read_tensor, fh, s.entry), s.entry.shape,
                                          s.entry.torch_dtype.itemsize, spaces, where, keys)
                writer.write(s.name, blocks)
        finally:
            for fh in handles.values():
                fh.close()


def transform_checkpoint(model_dir: str | Path, out_dir: str | Path, keys_dir: str | Path,
                         seed: int | None = None, force: bool = False, progress: bool = True) -> dict:
    """Write the cloud checkpoint to `out_dir` and the developer/user key files to `keys_dir`.

    Refuses a non-empty `out_dir` and existing key files unless `force` (which first deletes the
    old weight and index files of `out_dir`), and a `keys_dir` inside `out_dir`.
    """
    model_dir, out_dir, keys_dir = Path(model_dir), Path(out_dir), Path(keys_dir)
    check_folders(model_dir, out_dir, keys_dir, force)
    family = _family_for(model_dir)
    shards = _source_shards(model_dir)
    config = AutoConfig.from_pretrained(model_dir)
    model = _meta_model(config)
    plan = plan_checkpoint(shards, family, model)
    shapes = plan.shapes()
    dims = family.dims(config)
    out_dim = output_dim(family, shapes)
    keys = generate_keys(dims, out_dim, config.model_type, seed)
    check_keys(keys, config.model_type, dims, out_dim)

    out_dir.mkdir(parents=True, exist_ok=True)
    removed = clear_weights(out_dir) if force else []
    weight_map: dict[str, str] = {}
    for name, sources in tqdm(plan.files.items(), desc="stip transform", unit="shard", file=sys.stderr,
                              disable=not progress):
        _write_file(out_dir / name, sources, family, keys)
        weight_map.update({s.name: name for s in sources})
    if len(plan.files) > 1:  # several files: the stock loader needs the index
        total = sum((out_dir / name).stat().st_size for name in plan.files)
        (out_dir / INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                                     indent=2))
    config.tie_word_embeddings = False
    setattr(config, KEY_ID_FIELD, keys.key_id)
    config.save_pretrained(out_dir)
    if (model_dir / "generation_config.json").exists():
        shutil.copy(model_dir / "generation_config.json", out_dir / "generation_config.json")
    keys.save(keys_dir / DEVELOPER_KEYS_FILE)
    keys.user_keys().save(keys_dir / USER_KEYS_FILE)
    return {"model_type": config.model_type, "shards": len(shards), "tensors": len(weight_map),
            "keys": len(keys.tensors), "key_id": keys.key_id, "untied_head": bool(plan.materialised),
            "materialised": plan.materialised, "skipped": plan.skipped, "renamed": plan.renamed,
            "replaced": removed}
