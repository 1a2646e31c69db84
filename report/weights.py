"""Which weights a report row's model ran with: real, dequantised from a low-bit file, or random from a published
config, read from configs/model/*.yaml and the loader (protocols.models), never written per row."""
from __future__ import annotations

import re
from functools import lru_cache

import yaml

from protocols.models import SMOLLM2_GGUF
from protocols.paths import config_group


def _key(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def describe(cfg: dict) -> str:
    """One phrase for a model config's weights, from its `weights` field and the loader's file."""
    weights = cfg.get("weights", "random")
    if weights == "random":
        return "random (published config)"
    if weights == "smollm2":
        bits = re.search(r"\.Q(\d+)_", SMOLLM2_GGUF)
        return f"real, dequantised {bits.group(1)}-bit ({SMOLLM2_GGUF})" if bits else f"real ({SMOLLM2_GGUF})"
    if weights == "path":
        return "local folder"
    return "real"


@lru_cache(maxsize=1)
def models() -> dict[str, str]:
    """Every configured model's name (normalised: letters and digits) -> its weights phrase."""
    out = {}
    for path in sorted(config_group("model").glob("*.yaml")):
        cfg = yaml.safe_load(path.read_text()) or {}
        if cfg.get("name"):
            out[_key(str(cfg["name"]))] = f"{cfg['name']}: {describe(cfg)}"
    return out


def of_text(text: str) -> str:
    """The weights of every configured model a row's text names ('GPT-2 124M' and 'gpt2-124m' alike), longest
    names first so 'minilm-l6-mpcformer-distilled' is not read as 'minilm-l6'; '' when it names none."""
    key, found = _key(text), []
    for name in sorted(models(), key=len, reverse=True):
        if name in key:
            found.append(models()[name])
            key = key.replace(name, "|")
    return "; ".join(sorted(found))
