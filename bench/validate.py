"""Checks of a composed run config before anything is built: each problem names the value, the limit and the fix.

A bad workload or link value costs a model build and a cloud spawn (~20 s) before failing with a raw
error deep inside torch; these checks read only the config (and the model's transformers config).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from protocols.contract import TASKS
from transport.link import link_problems


class ConfigError(ValueError):
    """A run config that cannot work; the message lists every problem with the override that fixes it."""


def max_positions(model_cfg: Mapping[str, Any]) -> int | None:
    """The model's maximum sequence length from its transformers config (None: no limit from seq_len, e.g. ViT)."""
    if model_cfg.get("model_type") == "vit":
        return None
    from protocols.models import hf_config  # noqa: PLC0415 - transformers config only when a model is named

    try:
        config = hf_config(model_cfg)
    except (OSError, ValueError, KeyError):  # e.g. real weights not downloaded: the build fails, recorded as such
        return None
    for attr in ("max_position_embeddings", "n_positions"):
        n = getattr(config, attr, None)
        if isinstance(n, int) and n > 0:
            return n
    return None


def workload_problems(run: Mapping[str, Any], model_cfg: Mapping[str, Any] | None = None) -> list[str]:
    """Task known, batch/repeats/seq_len >= 1, warm-up >= 0, and the positions the run needs within the model's."""
    out = []
    task = run.get("task")
    if task not in TASKS:
        out.append(f"run.task={task!r} is unknown; choose one of {', '.join(TASKS)} (e.g. run.task=forward)")
    for key, low, example in (("batch_size", 1, 1), ("repeats", 1, 3), ("seq_len", 1, 32), ("warmup", 0, 1)):
        value = run.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            out.append(f"run.{key}={value!r} must be an integer >= {low}; e.g. run.{key}={example}")
    new = run.get("max_new_tokens", 0)
    if task == "generate" and (isinstance(new, bool) or not isinstance(new, int) or new < 1):
        out.append(f"run.max_new_tokens={new!r}: task generate needs an integer >= 1; e.g. run.max_new_tokens=16")
    seq = run.get("seq_len")
    if model_cfg is not None and isinstance(seq, int) and seq >= 1:
        limit = max_positions(model_cfg)
        needed = seq + (new if task == "generate" and isinstance(new, int) and new > 0 else 0)
        if limit is not None and needed > limit:
            what = f"run.seq_len={seq}" + (f" + run.max_new_tokens={new}" if needed != seq else "")
            out.append(f"{what} needs {needed} positions but model {model_cfg.get('name')!r} has "
                       f"{limit} (max_position_embeddings in its config); set run.seq_len<={limit - (needed - seq)}")
    return out


GiB = float(1 << 30)
LM_HEADS = ("causal_lm", "masked_lm")


def activation_bytes(run: Mapping[str, Any], model_cfg: Mapping[str, Any]) -> tuple[int, int]:
    """(estimated bytes, tokens) of one forward's activations, from shapes: per token one layer's live tensors
    (residual, q/k/v, the MLP's intermediate, a row of attention scores per head) and the outputs held by both
    the cloud and the device (logits for LM heads). An estimate, not a bound: never allocated here."""
    from protocols.models import DTYPES, hf_config  # noqa: PLC0415 - transformers config only when a model is named

    config = hf_config(model_cfg)
    hidden = int(getattr(config, "hidden_size", 0) or getattr(config, "n_embd", 0) or 0)
    inter = int(getattr(config, "intermediate_size", 0) or getattr(config, "n_inner", 0) or 4 * hidden)
    heads = int(getattr(config, "num_attention_heads", 0) or getattr(config, "n_head", 0) or 1)
    if model_cfg.get("model_type") == "vit":
        tokens = (int(config.image_size) // int(config.patch_size)) ** 2 + 1
    else:
        new = run.get("max_new_tokens", 0) if run.get("task") == "generate" else 0
        tokens = int(run["seq_len"]) + (int(new) if isinstance(new, int) else 0)
    vocab = int(getattr(config, "vocab_size", 0) or 0) if model_cfg.get("head") in LM_HEADS else 0
    per_token = 4 * hidden + inter + heads * tokens + 2 * (vocab + hidden)
    element = DTYPES[str(model_cfg.get("dtype", "float32"))].itemsize
    return int(run["batch_size"]) * tokens * per_token * element, int(run["batch_size"]) * tokens


def memory_problems(run: Mapping[str, Any], model_cfg: Mapping[str, Any] | None) -> list[str]:
    """Refuse a workload whose activations alone, estimated from shapes, pass this host's memory (before the
    model, checkpoint and cloud are built). Shape-only runs, and models too large to run here (the runner then
    reports shape-derived figures), allocate no activations and pass."""
    import psutil  # noqa: PLC0415

    if model_cfg is None or run.get("task") in (None, "shapes") or workload_problems(run):
        return []
    try:
        need, tokens = activation_bytes(run, model_cfg)
    except (OSError, ValueError, KeyError, AttributeError, TypeError):  # no config here: the build names it
        return []
    total = psutil.virtual_memory().total
    if need <= total:
        return []
    from protocols.models import count_params, fits_on_host  # noqa: PLC0415

    if not fits_on_host(count_params(model_cfg), str(model_cfg.get("dtype", "float32"))):
        return []  # measured from shapes only: nothing of this size is allocated
    per_sample = max(need // int(run["batch_size"]), 1)
    fit = max(int(total // (2 * per_sample)), 0)
    return [f"run.batch_size={run['batch_size']} x {tokens // int(run['batch_size'])} tokens needs about "
            f"{need / GiB:.1f} GiB of activations (estimated from shapes, model {model_cfg.get('name')!r}) but this "
            f"host has {total / GiB:.1f} GiB of memory; lower it, e.g. run.batch_size={fit}" if fit >= 1 else
            f"run.seq_len={run['seq_len']} needs about {need / GiB:.1f} GiB of activations (estimated from shapes) "
            f"but this host has {total / GiB:.1f} GiB of memory; lower run.seq_len"]


def cloud_problems(cloud: Mapping[str, Any], network: Mapping[str, Any]) -> list[str]:
    """A remote cloud: a host:port address, readable token and CA files, and no emulated link on top."""
    address = cloud.get("address")
    if not address:
        return []
    from transport.auth import TOKEN_ENV, plaintext_token_problem, token_file_problem  # noqa: PLC0415
    from transport.client import parse_address  # noqa: PLC0415

    out = []
    host = None
    try:
        host, _ = parse_address(str(address))
    except ValueError as e:
        out.append(f"cloud.address: {e}; e.g. cloud.address=127.0.0.1:7443")
    for key in ("token_file", "ca_file"):
        path = cloud.get(key)
        if path and not Path(str(path)).is_file():
            out.append(f"cloud.{key}={path!r} is not a readable file; give the path of the {key.replace('_', ' ')}")
        elif path and key == "token_file" and (problem := token_file_problem(str(path))):
            out.append(f"cloud.token_file: {problem}")
    has_token = bool(cloud.get("token_file") or os.environ.get(TOKEN_ENV))
    if host is not None and (exposed := plaintext_token_problem(host, "" if has_token else None,
                                                                bool(cloud.get("ca_file")))):
        out.append(f"cloud.address={address}: {exposed}")
    if network.get("bandwidth_bps") or network.get("rtt_s"):
        out.append(f"network={network.get('name')!r} emulates a link, but cloud.address measures the real one "
                   "(the remote server emulates no downlink); use network=none with cloud.address")
    return out


def parties_problems(parties: Mapping[str, Any], protocol: Mapping[str, Any]) -> list[str]:
    """`parties.*` places CrypTen's ranks (with a rendezvous) or SPU's (parties.hosts alone, host:port per rank):
    set with another protocol or engine it would be silently ignored."""
    rendezvous, hosts = parties.get("rendezvous"), parties.get("hosts")
    if not rendezvous and not hosts:
        return []
    engine = protocol.get("engine", "crypten")
    if rendezvous and (protocol.get("name") != "mpc" or engine != "crypten"):
        return [f"parties.rendezvous={rendezvous!r} places CrypTen's parties, but this run is "
                f"protocol={protocol.get('name')!r} engine={protocol.get('engine')!r}; use protocol=mpc "
                "protocol.engine=crypten, or cloud.address for a remote STIP/full-cloud cloud (docs/multi-host.md)"]
    if not rendezvous and (protocol.get("name") != "mpc" or engine != "spu"):
        return [f"parties.hosts={hosts!r} without parties.rendezvous places SPU's parties (one host:port per rank), "
                f"but this run is protocol={protocol.get('name')!r} engine={engine!r}; use protocol=mpc "
                "protocol.engine=spu, or give CrypTen's parties.rendezvous (docs/multi-host.md)"]
    if parties.get("netns") and int(os.geteuid()) != 0:
        return [f"parties.netns={parties.get('netns')!r}: entering a network namespace needs root"]
    return []


def experiment_problems(name: Any) -> list[str]:
    """The experiment name becomes a folder of runs and results: one safe path component, never a path."""
    from bench.results import safe_name  # noqa: PLC0415

    if safe_name(name):
        return []
    return [f"experiment_name={name!r} must be one folder name (letters, digits, _ . = + -; no '/' or '..'); "
            "e.g. experiment_name=adhoc"]


def check_run_config(cfg: Mapping[str, Any]) -> None:
    """Raise ConfigError listing every problem of a composed run config (plain mapping), before any work:
    unknown keys first (bench.schema), then the values."""
    from bench.schema import schema_problems  # noqa: PLC0415 - the schema reads the protocol classes

    problems = schema_problems(cfg)
    if problems:  # a misspelt key would make the value checks below misleading: name it alone
        raise ConfigError("invalid run configuration (nothing was built or run):\n  - " + "\n  - ".join(problems))
    problems = experiment_problems(cfg.get("experiment_name"))
    problems += workload_problems(cfg.get("run") or {}, cfg.get("model"))
    problems += memory_problems(cfg.get("run") or {}, cfg.get("model"))
    problems += link_problems(cfg.get("network") or {})  # the one link check (transport.link)
    problems += cloud_problems(cfg.get("cloud") or {}, cfg.get("network") or {})
    problems += parties_problems(cfg.get("parties") or {}, cfg.get("protocol") or {})
    if problems:
        raise ConfigError("invalid run configuration (nothing was built or run):\n  - " + "\n  - ".join(problems))


def sweep_without_multirun(params: Mapping[str, Any] | None, overrides: list[str]) -> str | None:
    """The refusal for a sweep config launched without -m (which would silently run one default job), or None."""
    if not params:
        return None
    axes = "; ".join(f"{k}: {v}" for k, v in params.items())
    args = " ".join(overrides)
    return (f"this config is a sweep (hydra.sweeper.params: {axes}) but was launched without -m, which would run "
            f"one default job instead of the sweep; add -m: python -m bench -m {args}")
