"""Device-side drafting for speculative STIP generation: fewer round trips than tokens.

The device already chooses every token, so it can also propose the next few: the cloud runs
[last token + drafts] through its KV cache in one forward and returns the permuted top-k at
every position; the device keeps the longest prefix greedy decoding would have chosen plus
the token after it, and tells the cloud how many cached tokens to keep. Greedy output is
exactly plain greedy decoding's. Drafting needs no model: prompt lookup (transformers'
`prompt_lookup_num_tokens`) matches the last n-gram against the device's own tokens.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch

from .draft_corpus import DraftCorpus
from .generation_rules import GenerationRules
from .parties import DataOwner
from .sampling import Sampling, greedy_among, incomplete_rows
from .sequence import SequenceInputs

if TYPE_CHECKING:
    from .generate import InferenceServer

SPECULATION_TOPK = 2  # candidates per drafted position by default: the argmax, and the runner-up to see a tie


@runtime_checkable
class Drafter(Protocol):
    """Proposes the next tokens on the device; any source will do (prompt lookup, a draft model)."""

    def propose(self, tokens: torch.Tensor, limit: int) -> torch.Tensor:
        """At most `limit` draft token ids (1-D) to follow `tokens` ([1, n]: prompt + generated)."""
        ...


@dataclass(frozen=True)
class PromptLookup:
    """Draft by prompt lookup: the tokens that followed the last n-gram's latest earlier match.

    The device's own tokens (prompt + generated) are searched for the last `max_ngram_size`
    tokens, then shorter n-grams down to 1; the latest match wins and is copied on past the end
    (a repeating loop drafts its next period too). With no match anywhere, `corpus` (a
    stip.DraftCorpus of public text on the device) is searched instead. `latest=False` and no
    corpus give exactly transformers' PromptLookupCandidateGenerator (earliest match, no wrap).
    """

    num_tokens: int = 16
    max_ngram_size: int = 3
    latest: bool = True
    corpus: DraftCorpus | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("num_tokens", "max_ngram_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"PromptLookup.{name} must be an int >= 1, got {value!r}")
        if self.corpus is not None and not isinstance(self.corpus, DraftCorpus):
            raise TypeError(f"PromptLookup.corpus must be a stip.DraftCorpus or None, got {type(self.corpus).__name__}")

    def propose(self, tokens: torch.Tensor, limit: int) -> torch.Tensor:
        """Up to min(num_tokens, limit) tokens continuing the last n-gram's match (none: empty)."""
        if tokens.dim() != 2 or tokens.shape[0] != 1:
            raise ValueError(f"prompt lookup drafts for one sequence [1, n], got shape {tuple(tokens.shape)}")
        seq, limit = tokens[0], min(self.num_tokens, limit)
        n_tokens = int(seq.numel())
        if limit < 1:
            return seq.new_empty(0)
        for n in range(min(self.max_ngram_size, n_tokens - 1), 0, -1):
            windows = seq[:-1].unfold(0, n, 1)  # windows starting before the last token: a continuation exists
            found = (windows == seq[-n:]).all(dim=1).nonzero()
            if found.numel():
                start = int(found[-1 if self.latest else 0, 0]) + n
                if not self.latest:
                    return seq[start:start + limit]
                period = n_tokens - start  # copy on past the end: the copied run repeats
                return seq[start:][torch.arange(limit) % period]
        if self.corpus is not None:
            return torch.tensor(self.corpus.continuation(seq.tolist(), limit), dtype=seq.dtype)
        return seq.new_empty(0)


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


def check_speculation(speculate: Drafter, input_ids: torch.Tensor, sampling: Sampling,
                       return_topk: int | None) -> None:
    """Speculation here is greedy and for one sequence; refuse anything else by name."""
    if not isinstance(speculate, Drafter):
        raise TypeError(f"speculate must be a drafter with propose(tokens, limit) (e.g. stip.PromptLookup()), "
                        f"got {type(speculate).__name__}")
    if sampling.do_sample:
        raise ValueError("speculate is greedy only (accepting a draft needs greedy's deterministic choice); "
                         "set do_sample=False, or generate without speculate to sample")
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"speculate takes one sequence (batch 1; rows would accept different lengths), got "
                         f"input_ids of shape {tuple(input_ids.shape)}; generate each prompt on its own")
    if return_topk is not None and (isinstance(return_topk, bool) or not isinstance(return_topk, int)
                                    or return_topk < 1):
        raise ValueError(f"return_topk must be an int >= 1, got {return_topk!r}")


def _drafts(speculate: Drafter, tokens: torch.Tensor, limit: int, eos: torch.Tensor | None) -> torch.Tensor:
    """The drafter's proposal, at most `limit` long and cut before an EOS (as transformers' prompt lookup)."""
    drafts = speculate.propose(tokens, limit).reshape(-1).to(tokens.dtype)[:max(limit, 0)]
    if eos is not None:
        stop = torch.isin(drafts, eos).nonzero()
        if stop.numel():
            drafts = drafts[:int(stop[0, 0])]
    return drafts


def _choose_greedy(device: DataOwner, out: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy token after every returned position [m], and whether a tie may reach past the candidates [m]."""
    if "topk_values" not in out:
        raise ValueError(f"a speculative step expects the cloud's top-k, got {sorted(out)}")
    values = out["topk_values"][0]  # [m, k]
    ids = device.decode({"topk_values": values, "topk_indices": out["topk_indices"][0]})["topk_indices"]
    return greedy_among(values, ids), incomplete_rows(values, 1)


def generate_speculative(
    device: DataOwner, server: InferenceServer, inputs: SequenceInputs, max_new_tokens: int,
    speculate: Drafter, top_k: int, eos: torch.Tensor | None,
    on_token: Callable[[int, torch.Tensor], None] | None, rules: GenerationRules, stats: GenerationStats | None,
) -> torch.Tensor:
    """Draft, verify in one round trip, keep the greedy prefix + one token, crop the cloud's cache.

    Drafts stop where a forward carrying them would differ from greedy's one-token forwards
    (rules.max_drafts: RoPE frequencies that change with length, Phi-3's cache recompute), and
    a position whose top-`top_k` ties at the boundary is redone with its whole row.
    """
    from .generate import infer  # noqa: PLC0415 - circular: stip.generate imports this module

    remaining, session, fresh_needed = max_new_tokens, None, True
    try:
        while remaining > 0:
            length = inputs.length  # the last token (already chosen) is the request's first returned position
            limit = remaining - 1 if not (session is None and inputs.prompt_only) else 0  # LLaVA: image first
            allowed = rules.max_drafts(length)
            drafts = _drafts(speculate, inputs.ids, limit if allowed is None else min(limit, allowed), eos)
            fresh = fresh_needed or rules.recomputes(length - 1, length + drafts.numel())
            if fresh:  # the prompt, or transformers drops the cache here: the whole sequence in a new session
                if session is not None:
                    server.close_session(session)
                session = server.open_session()
                request = inputs.prompt_request(device, session, top_k, drafts)
            else:
                assert session is not None  # the first round (fresh_needed) opened it
                request = inputs.step_request(device, torch.cat([inputs.ids[0, -1:], drafts])[None], session, top_k,
                                              last_n=drafts.numel() + 1, cache_length=length - 1)
            fresh_needed = False
            assert session is not None  # opened above or by an earlier round
            chosen, open_tie = _choose_greedy(device, infer(server, request))
            n = accepted_length(drafts, chosen)
            ties = open_tie[:n + 1].nonzero()
            if ties.numel():  # the position's whole row decides: redo it alone, keeping the drafts before it
                n = int(ties[0, 0])
                keep = length - 1 + n
                if fresh and keep == 0:
                    redo = inputs.prompt_request(device, session, None, upto=1)
                    redo["cache_length"] = 0
                else:
                    token = torch.cat([inputs.ids[0, -1:], drafts])[n:n + 1][None]
                    redo = inputs.step_request(device, token, session, None, cache_length=keep)
                new = torch.cat([drafts[:n], device.next_token(infer(server, redo))[0]])
            else:
                new = torch.cat([drafts[:n], chosen[n:n + 1]])
            for i, token in enumerate(new):
                if on_token is not None:
                    on_token(max_new_tokens - remaining + i, token.view(1, 1))
            inputs.append(new[None])
            remaining -= new.numel()
            if stats is not None:
                stats.record(drafted=drafts.numel(), accepted=n, new_tokens=new.numel())
            if eos is not None and bool(torch.isin(new[-1:], eos).any()):
                break
    finally:
        if session is not None:
            server.close_session(session)
    return inputs.ids
