"""The keys `python -m bench` accepts, read from the typed dataclasses that consume them, and the link label.

A misspelt key (`+network.rtt=0.5`) used to be accepted and ignored: the run used the base profile under
the base name. Every group's keys come from the dataclass that reads them (NetworkProfile, RunRequest,
ModelConfig, the protocol's own config_class, RemoteCloudConfig, RootConfig below), so there is one list.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, fields
from typing import Any, Iterable, Mapping

from bench.protocol_configs import protocol_class
from protocols.catalog import shipped_networks
from protocols.contract import PartiesConfig, RemoteCloudConfig, RunRequest
from protocols.models import ModelConfig
from transport.link import NetworkProfile, link_label

# RunRequest fields the runner fills, not run.*
RUNNER_FIELDS = ("workdir", "cloud_timeout_s", "remote_cloud", "parties")


@dataclass
class RootConfig:
    """Top-level keys of configs/config.yaml, plus the ones code reads that the yaml leaves unset (`+key=`)."""

    experiment_name: str
    force: bool
    output_root: str
    results_dir: str
    reference_protocol: str
    cloud_timeout_s: float
    log_level: str
    model: ModelConfig
    protocol: dict  # keys: the protocol's own config_class
    network: NetworkProfile
    run: dict  # keys: RunRequest less RUNNER_FIELDS
    cloud: RemoteCloudConfig
    parties: PartiesConfig
    lock_timeout_s: float = 3600.0  # +lock_timeout_s=: how long a run waits for another writer of its folder
    keep_checkpoints: bool = False  # +keep_checkpoints=true: keep the run's work folder (cloud checkpoint, keys)


def field_names(cls: type) -> list[str]:
    """A dataclass's field names, in declaration order."""
    return [f.name for f in fields(cls)]


def unknown_key_problems(node: Mapping[str, Any], valid: Iterable[str], prefix: str) -> list[str]:
    """One problem per key of `node` not in `valid`, naming it and the nearest valid keys (difflib)."""
    valid = list(valid)
    out = []
    for key in node:
        if key in valid:
            continue
        near = difflib.get_close_matches(str(key), valid, n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(prefix + m for m in near)}?" if near else "no key is close"
        out.append(f"unknown key {prefix}{key}; {hint} (valid {prefix.rstrip('.') or 'top-level'} keys: "
                   f"{', '.join(valid)})")
    return out


def protocol_keys(protocol_cfg: Mapping[str, Any]) -> list[str] | None:
    """The keys of the protocol's own typed config (its class's config_class), or None if it cannot load."""
    try:
        return field_names(protocol_class(protocol_cfg).config_class)
    except Exception:  # noqa: BLE001 - a bad _target_ is reported where the protocol is built
        return None


def schema_problems(cfg: Mapping[str, Any]) -> list[str]:
    """Every unknown key of a composed run config, group by group."""
    groups: dict[str, list[str] | None] = {
        "model": field_names(ModelConfig),
        "network": field_names(NetworkProfile),
        "run": [k for k in field_names(RunRequest) if k not in RUNNER_FIELDS],
        "cloud": field_names(RemoteCloudConfig),
        "parties": field_names(PartiesConfig),
        "protocol": protocol_keys(cfg.get("protocol") or {}),
    }
    out = unknown_key_problems(cfg, field_names(RootConfig), "")
    for group, valid in groups.items():
        node = cfg.get(group)
        if isinstance(node, Mapping) and valid is not None:
            out += unknown_key_problems(node, valid, f"{group}.")
    return out


def shipped_profiles() -> dict[str, dict]:
    """The network profiles of configs/network/ by name, as Hydra composes them (protocols.catalog)."""
    return shipped_networks()


def labelled_network(network: Mapping[str, Any]) -> dict:
    """The network node under the name its values deserve (transport.link.link_label); source says so."""
    node = dict(network)
    label = link_label(node, shipped_profiles())
    base = shipped_profiles().get(str(node.get("name")))
    if label != node.get("name") and base is not None:  # a shipped profile with other values: no longer it
        node["source"] = f"{label}: profile {node['name']} with values set by the user (its own: {base['source']})"
    node["name"] = label
    return node
