"""Real tokens to attack: several texts cut into padded batches with a mask of the real positions.

Every attack is scored on the real (non-pad) positions only (STIP.md, "Scoring attacks honestly"): a pad
embedding that sits among unused rows is recovered or missed for reasons no user cares about. The users'
texts are the shipped prompt suite plus every other installed package description; the attacker's public
text (for learned inverters and frequency references) is the other half of the descriptions, so the two
never share a text.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..draft_corpus import package_texts
from ..prompts import prompt_suite

USERS = "shipped prompt suite + even-indexed installed package descriptions"
PUBLIC = "odd-indexed installed package descriptions (disjoint from the users' texts)"


@dataclass(frozen=True)
class TokenBatch:
    """ids [batch, seq] (right-padded with pad_id), mask [batch, seq] (True = a real token), each row's text."""

    ids: torch.Tensor
    mask: torch.Tensor
    sources: tuple[str, ...]
    pad_id: int
    corpus: str = ""

    def __post_init__(self) -> None:
        if self.ids.shape != self.mask.shape or self.ids.dim() != 2:
            raise ValueError(f"ids {tuple(self.ids.shape)} and mask {tuple(self.mask.shape)} must be equal 2-D shapes")
        if len(self.sources) != self.ids.shape[0]:
            raise ValueError(f"{len(self.sources)} sources for {self.ids.shape[0]} rows; give one per row")
        if self.mask.dtype != torch.bool:
            object.__setattr__(self, "mask", self.mask.bool())

    @classmethod
    def from_sequences(cls, sequences: Sequence[torch.Tensor], pad_id: int,
                       sources: Sequence[str] | None = None, corpus: str = "") -> "TokenBatch":
        """Unpadded id sequences right-padded with pad_id to the longest; empty ones are dropped with their
        source (they hold no real token). `sources` defaults to "sequence:<i>" by position."""
        names = tuple(f"sequence:{i}" for i in range(len(sequences))) if sources is None else tuple(sources)
        if len(names) != len(sequences):
            raise ValueError(f"{len(names)} sources for {len(sequences)} sequences; give one per sequence")
        kept = [(s.reshape(-1), n) for s, n in zip(sequences, names) if s.numel()]
        if not kept:
            raise ValueError("no real tokens: give at least one non-empty sequence")
        seqs = [s for s, _ in kept]
        ids = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=pad_id)
        mask = torch.nn.utils.rnn.pad_sequence([torch.ones_like(s, dtype=torch.bool) for s in seqs],
                                               batch_first=True)
        return cls(ids, mask, tuple(n for _, n in kept), int(pad_id), corpus)

    @property
    def sequences(self) -> list[torch.Tensor]:
        """Each row's real ids, unpadded (the row's masked positions in order)."""
        return [row[keep] for row, keep in zip(self.ids, self.mask)]

    @property
    def real(self) -> torch.Tensor:
        """The real token ids, flattened row by row."""
        return self.ids[self.mask]

    @property
    def n_real(self) -> int:
        return int(self.mask.sum())

    @property
    def n_distinct(self) -> int:
        return int(torch.unique(self.real).numel())

    @property
    def attention_mask(self) -> torch.Tensor:
        """The mask as the long tensor transformers' models take."""
        return self.mask.long()

    def rows(self, index: slice | Sequence[int]) -> "TokenBatch":
        """A sub-batch of some rows (same pad, same corpus label)."""
        picked = list(range(self.ids.shape[0]))[index] if isinstance(index, slice) else list(index)
        return TokenBatch(self.ids[picked], self.mask[picked], tuple(self.sources[i] for i in picked),
                          self.pad_id, self.corpus)

    def describe(self) -> dict[str, Any]:
        """Row parameters saying what was attacked: real, distinct and pad positions, texts, corpus."""
        return {"n_real_tokens": self.n_real, "n_distinct_tokens": self.n_distinct,
                "n_pad_positions": int((~self.mask).sum()), "n_texts": len(set(self.sources)),
                "corpus": self.corpus}


def user_texts(n_packages: int = 8) -> list[tuple[str, str]]:
    """(name, text) of what users send: every shipped prompt, then `n_packages` even-indexed package texts."""
    prompts = [(f"prompt:{p.id}", p.text) for p in prompt_suite()]
    packages = package_texts()[0::2][:n_packages]
    return prompts + [(f"package:{i * 2}", t) for i, t in enumerate(packages)]


def public_texts(n_packages: int | None = None) -> list[tuple[str, str]]:
    """(name, text) the attacker trains on: odd-indexed package texts (never a user's)."""
    texts = package_texts()[1::2]
    texts = texts if n_packages is None else texts[:n_packages]
    return [(f"package:{i * 2 + 1}", t) for i, t in enumerate(texts)]


def pad_id_of(tokenizer: Any) -> int:
    """The tokenizer's pad id, else its eos id (causal LMs ship no pad token)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError(f"{type(tokenizer).__name__} has neither a pad nor an eos token; pass pad_id")
    return int(pad)


def token_batch(tokenizer: Any, texts: Sequence[tuple[str, str]], max_tokens: int = 512, seq_len: int = 32,
                per_text: int = 64, corpus: str = USERS, pad_id: int | None = None) -> TokenBatch:
    """Up to `max_tokens` real tokens: the first `per_text` tokens of each text in turn, cut into rows of
    `seq_len`; a text's last short row is right-padded (so batches hold pads, as real traffic does).
    """
    if seq_len < 2 or per_text < 2 or max_tokens < 1:
        raise ValueError(f"seq_len={seq_len}, per_text={per_text} must be >= 2 and max_tokens={max_tokens} >= 1")
    pad = pad_id_of(tokenizer) if pad_id is None else int(pad_id)
    rows: list[torch.Tensor] = []
    sources: list[str] = []
    total = 0
    for name, text in texts:
        ids = torch.as_tensor(tokenizer(text)["input_ids"], dtype=torch.long)
        ids = ids[: min(per_text, max_tokens - total)]
        for start in range(0, ids.numel(), seq_len):
            piece = ids[start:start + seq_len]
            if piece.numel() < 2:
                break
            rows.append(piece)
            sources.append(name)
            total += piece.numel()
        if total >= max_tokens:
            break
    if not rows:
        raise ValueError("no text gave 2 or more tokens; pass longer texts")
    return _padded(rows, sources, pad, seq_len, corpus)


def random_batch(vocab: int, n_rows: int, seq_len: int, seed: int = 0, pad_id: int = 0,
                 min_len: int | None = None) -> TokenBatch:
    """Random real ids (never pad_id) of random lengths min_len..seq_len, right-padded: config-built models."""
    low = max(2, seq_len // 2) if min_len is None else min_len
    if not 1 <= low <= seq_len or vocab < 3:
        raise ValueError(f"need 1 <= min_len={low} <= seq_len={seq_len} and vocab={vocab} >= 3")
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n_rows):
        n = int(torch.randint(low, seq_len + 1, (1,), generator=gen))
        ids = torch.randint(0, vocab - 1, (n,), generator=gen)
        rows.append(ids + (ids >= pad_id).long())  # skip pad_id, stay below vocab
    return _padded(rows, [f"random:{i}" for i in range(n_rows)], pad_id, seq_len,
                   f"uniform random ids, seed {seed}")


def _padded(rows: list[torch.Tensor], sources: list[str], pad: int, seq_len: int, corpus: str) -> TokenBatch:
    ids = torch.full((len(rows), seq_len), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), seq_len), dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, : r.numel()] = r
        mask[i, : r.numel()] = True
    return TokenBatch(ids, mask, tuple(sources), pad, corpus)
