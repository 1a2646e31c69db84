"""Device-side drafting for speculative STIP generation: fewer round trips than tokens.

The device already chooses every token, so it can also propose the next few: the cloud runs
[last token + drafts] through its KV cache in one forward and returns the permuted top-k at
every position; the device keeps the longest prefix greedy decoding would have chosen plus
the token after it, and tells the cloud how many cached tokens to keep. Greedy output is
exactly plain greedy decoding's. Drafting needs no model: prompt lookup (transformers'
`prompt_lookup_num_tokens`) matches the last n-gram against the device's own tokens.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
from transformers.generation.candidate_generator import PromptLookupCandidateGenerator


@runtime_checkable
class Drafter(Protocol):
    """Proposes the next tokens on the device; any source will do (prompt lookup, a draft model)."""

    def propose(self, tokens: torch.Tensor, limit: int) -> torch.Tensor:
        """At most `limit` draft token ids (1-D) to follow `tokens` ([1, n]: prompt + generated)."""
        ...


@dataclass(frozen=True)
class PromptLookup:
    """Draft by prompt lookup: the tokens that followed the last n-gram's earliest earlier match.

    Exactly transformers' PromptLookupCandidateGenerator (n-grams of `max_ngram_size` down to
    1, the first match from the left, up to `num_tokens` tokens) over the device's own tokens.
    """

    num_tokens: int = 8
    max_ngram_size: int = 2

    def __post_init__(self) -> None:
        for name in ("num_tokens", "max_ngram_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"PromptLookup.{name} must be an int >= 1, got {value!r}")

    def propose(self, tokens: torch.Tensor, limit: int) -> torch.Tensor:
        """Up to min(num_tokens, limit) tokens continuing the last n-gram's first match (none: empty)."""
        if tokens.dim() != 2 or tokens.shape[0] != 1:
            raise ValueError(f"prompt lookup drafts for one sequence [1, n], got shape {tuple(tokens.shape)}")
        n = int(tokens.shape[1])
        if limit < 1 or n < 2:
            return tokens.new_empty(0)
        lookup = PromptLookupCandidateGenerator(num_output_tokens=min(self.num_tokens, limit),
                                                max_matching_ngram_size=self.max_ngram_size,
                                                max_length=n + limit + 1)
        candidates, _ = lookup.get_candidates(tokens)
        return candidates[0, n:n + limit]


@dataclass
class GenerationStats:
    """What one stip.generate call cost: round trips, and per round the drafts sent and accepted.

    Filled in by `stip.generate(..., stats=GenerationStats())`, with or without speculation
    (without: every round drafts and accepts 0). The cloud sees the accepted length of every
    round: it is the number of tokens it is told to keep.
    """

    new_tokens: int = 0
    drafted: list[int] = field(default_factory=list)
    accepted: list[int] = field(default_factory=list)

    @property
    def round_trips(self) -> int:
        return len(self.drafted)

    @property
    def round_trips_per_token(self) -> float:
        """Round trips per generated token (1.0 without speculation); nan before any token."""
        return self.round_trips / self.new_tokens if self.new_tokens else float("nan")

    def record(self, drafted: int, accepted: int, new_tokens: int) -> None:
        self.drafted.append(drafted)
        self.accepted.append(accepted)
        self.new_tokens += new_tokens


def accepted_length(drafts: torch.Tensor, chosen: torch.Tensor) -> int:
    """How many drafts greedy decoding would have produced: the longest prefix with drafts[i] == chosen[i].

    `chosen[i]` is the device's token after the request's i-th position (the last sent token,
    then each draft), so `chosen[n]` follows the accepted drafts.
    """
    k = int(drafts.numel())
    mismatch = (drafts != chosen[:k]).nonzero()
    return int(mismatch[0, 0]) if mismatch.numel() else k
