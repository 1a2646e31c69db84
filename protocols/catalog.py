"""The shipped network profiles (configs/network/*.yaml) by name, read as Hydra reads them, for code outside a run.

A run gets its link from Hydra; the runner's link labels and the report's "this configuration on another link"
read the same files here, once.
"""
from __future__ import annotations

from functools import lru_cache
from typing import cast

from omegaconf import OmegaConf

from protocols.paths import config_group
from transport.link import NetworkProfile, network_profile


@lru_cache(maxsize=1)
def shipped_networks() -> dict[str, dict]:
    """The network profiles of configs/network/ by name, as Hydra composes them (OmegaConf: 3.0e9 is a float)."""
    return {p.stem: cast(dict, OmegaConf.to_container(OmegaConf.load(p)))
            for p in sorted(config_group("network").glob("*.yaml"))}


def shipped_network(name: str) -> NetworkProfile:
    """A shipped network profile by name (lan, wan, puma_lan, ...), or an error listing the names."""
    profiles = shipped_networks()
    if name not in profiles:
        raise FileNotFoundError(f"no network profile {name!r} in {config_group('network')}; "
                                f"choices: {sorted(profiles)}")
    return network_profile(profiles[name])
