"""A device-side datastore for drafting: public text the prompt lookup falls back on when the context has no match.

Retrieval-based drafting (REST, He et al., NAACL 2024): the tokens that followed the context's last
n-gram somewhere in a public corpus. The corpus lives on the device, so the cloud learns nothing new
from it; the cloud's verification keeps the tokens exactly greedy whatever the corpus proposes.
Two public sources this project has offline: the tokenizer's own chat template (instruction-tuned
models emit its markup when used as completions) and installed packages' METADATA descriptions.
"""
from __future__ import annotations

import sysconfig
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CHAT_EXAMPLE = ({"role": "system", "content": "You are a helpful AI assistant."},
                {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"})


class DraftCorpus:
    """Token-id sequences indexed by n-gram (min_ngram..max_ngram): the latest continuation of each."""

    def __init__(self, sequences: Sequence[Sequence[int]], min_ngram: int = 2, max_ngram: int = 4):
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError(f"DraftCorpus needs 1 <= min_ngram <= max_ngram, got {min_ngram}, {max_ngram}")
        self.min_ngram, self.max_ngram = min_ngram, max_ngram
        self.tokens: list[int] = []
        self._next: dict[tuple[int, ...], int] = {}  # n-gram -> start of the tokens that followed it (latest)
        for seq in sequences:
            start, seq = len(self.tokens), [int(t) for t in seq]
            self.tokens += seq
            for n in range(min_ngram, max_ngram + 1):
                for j in range(len(seq) - n):
                    self._next[tuple(seq[j:j + n])] = start + j + n
        self._ends = _ends(sequences)
        if not self.tokens:
            raise ValueError("DraftCorpus got no tokens; pass at least one non-empty sequence")

    def __len__(self) -> int:
        return len(self.tokens)

    def continuation(self, context: Sequence[int], limit: int) -> list[int]:
        """Up to `limit` tokens after the longest matching n-gram of the context's end (none: [])."""
        for n in range(min(self.max_ngram, len(context)), self.min_ngram - 1, -1):
            start = self._next.get(tuple(int(t) for t in context[len(context) - n:]))
            if start is not None:
                end = min(start + limit, next(e for e in self._ends if e > start))
                return self.tokens[start:end]
        return []


def _ends(sequences: Sequence[Sequence[int]]) -> list[int]:
    """Cumulative end offsets, so a continuation never runs into the next sequence."""
    out, total = [], 0
    for seq in sequences:
        total += len(seq)
        out.append(total)
    return out


def chat_template_ids(tokenizer: Any) -> list[int]:
    """The tokenizer's chat template rendered on a short example conversation, as token ids."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(f"{type(tokenizer).__name__} has no chat_template; draft from package_texts() only")
    return list(tokenizer.apply_chat_template(list(CHAT_EXAMPLE), tokenize=True, return_dict=False))


def package_texts(min_chars: int = 500) -> list[str]:
    """Installed packages' METADATA descriptions (public text on every install of this project), by name."""
    files = sorted(Path(sysconfig.get_paths()["purelib"]).glob("*.dist-info/METADATA"))
    bodies = [f.read_text(errors="ignore").partition("\n\n")[2] for f in files]
    return [b for b in bodies if len(b) >= min_chars]


def public_corpus(tokenizer: Any, max_tokens: int = 300_000, min_ngram: int = 2, max_ngram: int = 4) -> DraftCorpus:
    """The chat template plus installed packages' descriptions, up to `max_tokens` tokens in all."""
    chat = [chat_template_ids(tokenizer)] if getattr(tokenizer, "chat_template", None) else []
    sequences: list[list[int]] = []
    total = sum(len(s) for s in chat)
    for text in package_texts():
        if total >= max_tokens:
            break
        ids = tokenizer(text)["input_ids"][: max_tokens - total]
        sequences.append(ids)
        total += len(ids)
    # the chat template last: its n-grams win over the same n-grams in the descriptions (latest match)
    return DraftCorpus(sequences + chat, min_ngram=min_ngram, max_ngram=max_ngram)
