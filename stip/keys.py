"""Permutation keys: generation (seeded or OS-random), validation, and owner-only key files.

A permutation is an index vector `p` with `x @ P == x[..., p]`. The developer holds every key;
a registered user holds only `pi` (input) and `pi_c` (output). Key values never go to logs:
`KeySet.__repr__` and `describe` show names and shapes only.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_save

DEVELOPER_KEYS_FILE = "developer_keys.safetensors"
USER_KEYS_FILE = "user_keys.safetensors"
USER_KEY_NAMES = ("pi", "pi_c")
KEY_ID = "key_id"


def new_key_id(tensors: dict[str, torch.Tensor], seeded: bool) -> str:
    """A non-secret id naming a key set, so a device can refuse a cloud model made with other keys.

    OS-random keys get a uuid4 from the OS. Seeded (benchmark) keys get a hash of their content,
    so the same seed gives the same id in every process; it reveals nothing the seed does not.
    """
    if not seeded:
        return uuid.uuid4().hex
    digest = hashlib.sha256(b"stip-key-id-v1")
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].to(torch.long).contiguous().numpy().tobytes())
    return digest.hexdigest()[:32]


class KeyMismatchError(ValueError):
    """Keys that do not fit the model they are used with (another model's shapes)."""


class PermutationSource:
    """Draws random permutations: seeded (reproducible) or from the OS's secure randomness."""

    def __init__(self, seed: int | None) -> None:
        self.seeded = seed is not None
        self._gen = torch.Generator().manual_seed(int(seed)) if seed is not None else None
        self._os_random = random.SystemRandom()  # used only when unseeded (no generator)

    def permutation(self, n: int) -> torch.Tensor:
        """A uniformly random permutation of range(n) as an int64 index vector."""
        if self._gen is not None:
            return torch.randperm(n, generator=self._gen)
        order = list(range(n))
        self._os_random.shuffle(order)  # Fisher-Yates over os.urandom: the full n! key space
        return torch.tensor(order, dtype=torch.long)


def head_structured_permutations(
    n_heads: int, n_kv_heads: int, head_dim: int, fixed_within_qk: bool, source: PermutationSource
) -> dict[str, torch.Tensor]:
    """Index vectors for Q, K, V and the O-projection input that keep attention equivalent.

    Whole KV groups move (query heads move with their group and may be shuffled inside it);
    Q and K share one within-head order per group (identity under RoPE, whose rotary pairs
    carry different frequencies); V has its own within-head order. See STIP.md.
    """
    if n_heads % n_kv_heads:
        raise KeyMismatchError(f"n_heads={n_heads} is not a multiple of n_kv_heads={n_kv_heads}")
    group = n_heads // n_kv_heads
    identity = torch.arange(head_dim)
    kv_order = source.permutation(n_kv_heads)
    within_qk = [identity if fixed_within_qk else source.permutation(head_dim) for _ in range(n_kv_heads)]
    within_v = [source.permutation(head_dim) for _ in range(n_kv_heads)]
    q_source_heads = torch.cat([kv_order[b] * group + source.permutation(group) for b in range(n_kv_heads)])

    def flat(heads: torch.Tensor, within: list[torch.Tensor], group_of) -> torch.Tensor:
        return torch.cat([h * head_dim + within[group_of(int(h))] for h in heads])

    return {
        "pi_i1_q": flat(q_source_heads, within_qk, lambda h: h // group),
        "pi_i1_k": flat(kv_order, within_qk, lambda h: h),
        "pi_i2_v": flat(kv_order, within_v, lambda h: h),
        "pi_i2_o": flat(q_source_heads, within_v, lambda h: h // group),
    }


@dataclass
class KeySet:
    """Named permutation index vectors plus non-secret metadata (model type, shapes)."""

    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str] = field(default_factory=dict)

    def __getitem__(self, name: str) -> torch.Tensor:
        try:
            return self.tensors[name]
        except KeyError:
            raise KeyMismatchError(
                f"key '{name}' is not in this key set (model_type={self.metadata.get('model_type')}); "
                "were these keys made for another model?"
            ) from None

    @property
    def key_id(self) -> str | None:
        """The key set's non-secret id (also in the cloud config as `stip_key_id`)."""
        return self.metadata.get(KEY_ID)

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def __repr__(self) -> str:  # never print values
        return f"KeySet({len(self.tensors)} keys, metadata={self.metadata})"

    def user_keys(self) -> "KeySet":
        """The subset a registered user receives: input and output permutations only."""
        return KeySet({k: self.tensors[k] for k in USER_KEY_NAMES if k in self.tensors},
                      {**self.metadata, "role": "user"})

    def describe(self) -> list[dict]:
        """Names, shapes and validity of each key; no values (safe to print)."""
        rows = []
        for name, t in sorted(self.tensors.items()):
            flat = t.reshape(-1, t.shape[-1]) if t.dim() > 1 else t[None]
            valid = all(torch.equal(r.sort().values, torch.arange(r.numel())) for r in flat)
            rows.append({"name": name, "shape": list(t.shape), "dtype": str(t.dtype), "is_permutation": valid})
        return rows

    def check_shapes(self, expected: dict[str, tuple[int, ...]]) -> None:
        """Raise KeyMismatchError naming the first key whose shape does not fit the model."""
        for name, shape in expected.items():
            if name not in self.tensors:
                raise KeyMismatchError(f"key '{name}' missing: the keys were made for another model "
                                       f"({self.metadata.get('model_type')}); regenerate them with "
                                       "`stip transform` or ModelDeveloper")
            found = tuple(self.tensors[name].shape)
            if found != tuple(shape):
                raise KeyMismatchError(f"key '{name}' has shape {found} but this model needs {tuple(shape)}: "
                                       "the keys belong to another model; use the keys made for this one")

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically as safetensors with owner-only permissions (0600)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {k: str(v) for k, v in self.metadata.items()}
        data = safetensors_save({k: v.contiguous() for k, v in self.tensors.items()}, metadata=meta)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".keys-")  # mkstemp creates 0600
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "KeySet":
        """Load a key file written by `save`."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no key file at {path}; create keys with `stip transform` or "
                                    "ModelDeveloper.save_keys()")
        with safe_open(str(path), framework="pt") as fh:
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
            metadata = dict(fh.metadata() or {})
        return cls(tensors, metadata)

    def metadata_json(self) -> str:
        return json.dumps(self.metadata, sort_keys=True)
