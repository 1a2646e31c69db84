"""The `speculate` option of the generation workloads: prompt-lookup drafting, typed and validated once.

STIP drafts on the device (stip.PromptLookup) and verifies k drafts in one round trip; full cloud
drafts on the cloud (transformers' `prompt_lookup_num_tokens`). Either way greedy tokens are unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass

import stip
from protocols.base import SocketConfig

SPECULATE = ("none", "prompt_lookup")


@dataclass
class SpeculativeConfig(SocketConfig):
    """Socket-protocol config with the generation workload's `speculate` option."""

    speculate: str = "none"  # generation: none | prompt_lookup (greedy, batch 1)
    draft_tokens: int = 8  # prompt lookup: at most this many drafted tokens per round
    max_ngram: int = 2  # prompt lookup: the longest n-gram matched against earlier tokens

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.speculate not in SPECULATE:
            raise ValueError(f"protocol.speculate={self.speculate!r}; choose one of {list(SPECULATE)}")
        for name in ("draft_tokens", "max_ngram"):
            if getattr(self, name) < 1:
                raise ValueError(f"protocol.{name}={getattr(self, name)} must be >= 1")

    def drafter(self) -> stip.PromptLookup | None:
        """The device's drafter for stip.generate (None: one round trip per token)."""
        if self.speculate == "none":
            return None
        return stip.PromptLookup(num_tokens=self.draft_tokens, max_ngram_size=self.max_ngram)


def check_speculative_request(cfg: SpeculativeConfig, batch_size: int) -> None:
    """Speculation accepts a different length per row, so it runs one sequence at a time."""
    if cfg.speculate != "none" and batch_size != 1:
        raise ValueError(f"protocol.speculate={cfg.speculate!r} runs one sequence; got run.batch_size={batch_size}: "
                         "set run.batch_size=1 or protocol.speculate=none")


def per_token_latency(token_times: list[float], first_round: int) -> float:
    """Mean latency of the tokens after the first round trip: (last - first round's last) / their count.

    Without speculation (first_round = 1) this is the mean of the `token` rows.
    """
    later = len(token_times) - first_round
    if later < 1:
        return 0.0
    return (token_times[-1] - token_times[first_round - 1]) / later
