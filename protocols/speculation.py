"""The `speculate` option of the generation workloads: prompt-lookup drafting, typed and validated once.

STIP drafts on the device (stip.PromptLookup, optionally with a device-side public corpus) and
verifies k drafts in one round trip; full cloud drafts on the cloud (transformers'
`prompt_lookup_num_tokens`: earliest match, no corpus). Either way greedy tokens are unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import stip
from protocols.models import load_tokenizer
from protocols.request_loop import SocketConfig
from stip.draft_corpus import public_corpus

SPECULATE = ("none", "prompt_lookup")
DRAFT_CORPORA = ("none", "public")


@dataclass
class SpeculativeConfig(SocketConfig):
    """Socket-protocol config with the generation workload's `speculate` option."""

    speculate: str = "none"  # generation: none | prompt_lookup (greedy, batch 1)
    draft_tokens: int = 8  # prompt lookup: at most this many drafted tokens per round
    max_ngram: int = 2  # prompt lookup: the longest n-gram matched against earlier tokens
    draft_latest: bool = False  # prompt lookup: the latest match (else the earliest, as transformers)
    draft_corpus: str = "none"  # none | public: chat template + installed packages' descriptions (STIP device)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.speculate not in SPECULATE:
            raise ValueError(f"protocol.speculate={self.speculate!r}; choose one of {list(SPECULATE)}")
        if self.draft_corpus not in DRAFT_CORPORA:
            raise ValueError(f"protocol.draft_corpus={self.draft_corpus!r}; choose one of {list(DRAFT_CORPORA)}")
        for name in ("draft_tokens", "max_ngram"):
            if getattr(self, name) < 1:
                raise ValueError(f"protocol.{name}={getattr(self, name)} must be >= 1")

    def drafter(self, tokenizer_kind: str | None = None) -> stip.PromptLookup | None:
        """The device's drafter for stip.generate (None: one round trip per token).

        draft_corpus=public needs the model's tokenizer (`tokenizer_kind`, e.g. smollm2) to encode the corpus.
        """
        if self.speculate == "none":
            return None
        corpus = None
        if self.draft_corpus == "public":
            if not tokenizer_kind:
                raise ValueError("protocol.draft_corpus=public needs a model with a tokenizer (model.tokenizer); "
                                 "set protocol.draft_corpus=none for this model")
            corpus = device_corpus(tokenizer_kind)
        return stip.PromptLookup(num_tokens=self.draft_tokens, max_ngram_size=self.max_ngram,
                                 latest=self.draft_latest, corpus=corpus)


@lru_cache(maxsize=2)
def device_corpus(tokenizer_kind: str) -> stip.DraftCorpus:
    """The public draft corpus encoded by one tokenizer (built once per process: a few seconds)."""
    tokenizer = load_tokenizer(tokenizer_kind)
    if tokenizer is None:
        raise RuntimeError(f"protocol.draft_corpus=public needs the {tokenizer_kind!r} tokenizer, which did not load "
                           "(HF_HUB_OFFLINE and the local model files); set protocol.draft_corpus=none")
    return public_corpus(tokenizer)


def check_cloud_drafting(cfg: SpeculativeConfig) -> None:
    """The full cloud drafts with transformers' prompt lookup: earliest match, no corpus; refuse the others."""
    if cfg.speculate != "none" and (cfg.draft_latest or cfg.draft_corpus != "none"):
        raise ValueError(f"full cloud drafts with transformers' prompt lookup (earliest match, no corpus); got "
                         f"protocol.draft_latest={cfg.draft_latest}, draft_corpus={cfg.draft_corpus!r}: set "
                         "draft_latest=false draft_corpus=none")


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
