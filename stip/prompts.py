"""The shipped prompt suite (stip/data/prompts.json): copying, code, summarisation, open-ended.

Used to measure speculative generation (round trips per generated token); plain text, sent as
completions without a chat template.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources

CATEGORIES = ("copying", "code", "summarisation", "open-ended")


@dataclass(frozen=True)
class Prompt:
    id: str
    category: str
    text: str


def prompt_suite(category: str | None = None) -> list[Prompt]:
    """Every prompt of the suite, or those of one category."""
    if category is not None and category not in CATEGORIES:
        raise ValueError(f"unknown prompt category {category!r}; the suite has {list(CATEGORIES)}")
    data = json.loads(resources.files("stip").joinpath("data/prompts.json").read_text(encoding="utf-8"))
    prompts = [Prompt(p["id"], p["category"], p["text"]) for p in data["prompts"]]
    return [p for p in prompts if category is None or p.category == category]
