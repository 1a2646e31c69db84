"""The device package: what a user's device needs, saved and loaded in one call.

A folder with the model's `config.json`, the device module's tensors (`device.safetensors`: the embedding
module's parameters and buffers) and the user keys (`user_keys.safetensors`: `pi` and `pi_c` only). Loading
builds the model skeleton on the meta device (no memory for the cloud part), keeps only the device module
and fills it from the file, so a phone-sized device never holds the transformer.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import torch
import transformers
from safetensors.torch import load_file, save_file

from .generation_rules import generation_rules
from .keys import USER_KEYS_FILE, KeySet
from .parties import DataOwner, _family_of
from .pooling import last_token_pooling

DEVICE_FILE = "device.safetensors"
MANIFEST = "device.json"


def save_device_package(model: transformers.PreTrainedModel, keys: KeySet, directory: str | os.PathLike,
                        force: bool = False) -> Path:
    """Write the device package of `model` (the original, untransformed one) with the user part of `keys`."""
    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()) and not force:
        raise FileExistsError(f"{directory} is not empty; pick an empty folder or pass force=True (--force)")
    owner = DataOwner.from_model(model, keys)  # checks the keys against the model
    directory.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(directory)
    tensors = {f"param.{n}": t.detach().contiguous() for n, t in owner.embedding.named_parameters()}
    tensors |= {f"buffer.{n}": t.detach().contiguous() for n, t in owner.embedding.named_buffers()}
    save_file(tensors, str(directory / DEVICE_FILE))
    owner.keys.save(directory / USER_KEYS_FILE)
    manifest = {"family": owner.family.name, "class": type(model).__name__, "key_id": owner.key_id}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return directory


def load_device_package(directory: str | os.PathLike) -> DataOwner:
    """The DataOwner saved by `save_device_package` (or `stip device-package`), ready to make requests."""
    directory = Path(directory)
    if not (directory / MANIFEST).is_file():
        raise FileNotFoundError(f"no {MANIFEST} in {directory}; write a package with `stip device-package`")
    manifest = json.loads((directory / MANIFEST).read_text())
    config = transformers.AutoConfig.from_pretrained(directory, local_files_only=True)
    cls = getattr(transformers, manifest["class"], None)
    if cls is None:
        raise ValueError(f"transformers {transformers.__version__} has no class {manifest['class']!r} "
                         f"(named in {directory / MANIFEST})")
    with torch.device("meta"):
        skeleton = cls(config)
    module = copy.deepcopy(_family_of(skeleton).device_module(skeleton)).to_empty(device="cpu")
    tensors = load_file(str(directory / DEVICE_FILE))
    expected = {f"param.{n}" for n, _ in module.named_parameters()} | {f"buffer.{n}" for n, _ in module.named_buffers()}
    if set(tensors) != expected:
        raise ValueError(f"{directory / DEVICE_FILE} does not match a {manifest['class']} device module: "
                         f"missing {sorted(expected - set(tensors))[:5]}, "
                         f"unexpected {sorted(set(tensors) - expected)[:5]}")
    with torch.no_grad():
        for kind, named in (("param", module.named_parameters()), ("buffer", module.named_buffers())):
            for n, t in named:
                t.copy_(tensors[f"{kind}.{n}"])
    keys = KeySet.load(directory / USER_KEYS_FILE)
    return DataOwner(module, keys, _family_of(skeleton), pooling=last_token_pooling(skeleton),
                     generation=generation_rules(config))


def package_from_folders(model_dir: str | os.PathLike, keys_dir: str | os.PathLike, out: str | os.PathLike,
                         force: bool = False) -> Path:
    """`stip device-package`: the original save_pretrained folder + the keys of `stip transform` -> a package."""
    model_dir = Path(model_dir)
    config = transformers.AutoConfig.from_pretrained(model_dir, local_files_only=True)
    archs = list(getattr(config, "architectures", None) or [])
    cls = getattr(transformers, archs[0], None) if archs else None
    if cls is None:
        raise ValueError(f"{model_dir}/config.json names no transformers class in `architectures` ({archs})")
    model = cls.from_pretrained(model_dir, local_files_only=True)
    keys_path = Path(keys_dir) / USER_KEYS_FILE
    out = Path(out)
    if force and out.exists():
        shutil.rmtree(out)
    return save_device_package(model, KeySet.load(keys_path), out)
