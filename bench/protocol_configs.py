"""The protocol config group: each plug-in's dataclass is its defaults, a configs/protocol yaml lists what differs.

Hydra composes `protocol=<name>` from `<name>_defaults` (registered here from the class the yaml's `_target_`
names) and the yaml on top, so every field is in the composed config, `protocol.<field>=...` overrides work
without `+`, and run ids (a hash of the composed values) stay those of the full yamls. The defaults node
types every field Any: values keep the type they are written with (1800 stays 1800), the dataclass checks them.
"""
from __future__ import annotations

import dataclasses
import logging
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

from hydra.core.config_store import ConfigStore
from hydra.utils import get_class
from omegaconf import OmegaConf

from protocols.contract import Protocol, ProtocolConfig
from protocols.paths import config_group

log = logging.getLogger(__name__)
GROUP = "protocol"
DEFAULTS_SUFFIX = "_defaults"  # protocol/<name>.yaml starts with `defaults: [<name>_defaults, _self_]`


def protocol_class(protocol_cfg: Mapping[str, Any]) -> type[Protocol]:
    """The plug-in class its config's `_target_` names (the runner knows nothing else of a protocol)."""
    target = protocol_cfg.get("_target_")
    if not target:
        raise ValueError(f"protocol config {protocol_cfg.get('name')!r} has no _target_; see configs/protocol/*.yaml")
    return get_class(target)


def dataclass_defaults(cls: type[ProtocolConfig]) -> dict[str, Any]:
    """A config dataclass's fields and their default values, in declaration order."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def with_defaults(protocol_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A protocol node with every field of its config class: the class's defaults under the node's values.

    A node Hydra composed has them all already (unchanged); a hand-built one (`run({...})`) gains the missing."""
    return {**dataclass_defaults(protocol_class(protocol_cfg).config_class), **protocol_cfg}


def file_values(name: str, folder: Path | None = None) -> dict[str, Any] | None:
    """`protocol=<name>` as the group composes it: its class's defaults under the file's values (None: no file)."""
    path = (folder or config_group(GROUP)) / f"{name}.yaml"
    if not path.is_file():
        return None
    return with_defaults({k: v for k, v in load_file(path).items() if k != "defaults"})


def load_file(path: Path) -> dict[str, Any]:
    """A protocol yaml as a plain dict (its Hydra `defaults` list included)."""
    node = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    if not isinstance(node, dict):
        raise ValueError(f"{path} holds a {type(node).__name__}, not a protocol config (keys _target_, name, ...)")
    return {str(k): v for k, v in node.items()}


def defaults_node(cls: type[ProtocolConfig]) -> Any:
    """The dataclass's defaults as a Hydra schema node that checks keys but leaves values' types as written."""
    fields = [(name, Any, dataclasses.field(default=value)) for name, value in dataclass_defaults(cls).items()
              if not isinstance(value, (dict, list))]
    return dataclasses.make_dataclass(f"{cls.__name__}Defaults", fields)


@lru_cache(maxsize=None)
def register_protocol_defaults(folder: Path | None = None) -> tuple[str, ...]:
    """Store `<name>_defaults` in Hydra's ConfigStore for each configs/protocol/<name>.yaml (before composing)."""
    folder = folder or config_group(GROUP)
    store = ConfigStore.instance()
    names = []
    for path in sorted(folder.glob("*.yaml")):
        try:
            cls = protocol_class(load_file(path)).config_class
        except (ValueError, ImportError, AttributeError) as e:  # one broken file must not stop every other run
            log.warning("configs/protocol/%s: no defaults registered (%s); a run of it fails naming this", path.name, e)
            continue
        store.store(group=GROUP, name=f"{path.stem}{DEFAULTS_SUFFIX}", node=defaults_node(cls))
        names.append(path.stem)
    return tuple(names)
