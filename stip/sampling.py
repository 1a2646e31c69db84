"""Token choice in the permuted vocabulary: greedy, temperature, top-k and top-p sampling.

Every filter is permutation-equivariant, so the device filters the cloud's permuted scores
where they are and maps only the surviving candidates through `pi_c`. The final draw happens
in token-id order because torch's sampler is not: `torch.multinomial` draws its noise over
the whole row in token-id order, so exact equality with `model.generate` under the same seed
needs the candidates at their token ids. What crosses `pi_c` per row:

- greedy: one index (plus, only when the maximum is tied, the tied positions);
- top-k (alone or before top-p): the k candidates (more only when the k-th score is tied);
- a top-n return from the cloud (n = k + 1): enough to see a tie at the boundary, which raises
  IncompleteCandidates (stip.generate then asks for the whole row);
- top-p alone, or plain sampling: the whole row (the same gather as `DataOwner.decode`),
  since every token stays a candidate until top-p has sorted the row.

The decisions replay transformers' `_sample` (float32 scores, TemperatureLogitsWarper,
TopKLogitsWarper, TopPLogitsWarper, softmax, multinomial) bit for bit. Measured per token on
SmolLM2-135M (one row of 49,152 logits, benchmarks/bench_stip_micro.py), STIP vs the same choice on
plaintext logits: greedy 25 us vs 15 us (permuting the embedding, the tie check and the index
map are the gap), top-k + top-p sampling 1.02x, full-vocabulary sampling 1.06x (one 49k-entry
gather next to ~0.9 ms of torch.multinomial).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import torch


class IncompleteCandidates(ValueError):
    """The cloud's top candidates tie at their boundary, so the choice may need one it did not return.

    stip.generate catches it and asks the cloud for that position's whole row.
    """


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen; the fields and their defaults mean what they mean in transformers."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.do_sample, bool):
            raise ValueError(f"do_sample must be True or False, got {self.do_sample!r}")
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
            raise ValueError(f"temperature must be a finite number > 0, got {t!r}; for greedy decoding set "
                             "do_sample=False")
        if self.top_k is not None and (isinstance(self.top_k, bool) or not isinstance(self.top_k, int)
                                       or self.top_k < 0):
            raise ValueError(f"top_k must be an int >= 0 (0 or None: no top-k filter), got {self.top_k!r}")
        p = self.top_p
        if p is not None and (isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1):
            raise ValueError(f"top_p must be a number in (0, 1] (1 or None: no top-p filter), got {p!r}")
        if not self.do_sample and (t != 1.0 or self.top_k or (p is not None and p < 1)):
            raise ValueError(f"temperature={t}, top_k={self.top_k}, top_p={p} only apply when sampling; "
                             "set do_sample=True, or leave them unset for greedy decoding")

    @property
    def k(self) -> int | None:
        """The top-k filter's size, or None when there is no top-k filter."""
        return self.top_k or None

    @property
    def needed(self) -> int | None:
        """How many top scores decide the choice (greedy: the maximum), None: every score."""
        if not self.do_sample:
            return 1
        return self.k

    @property
    def p(self) -> float | None:
        """The top-p filter's mass, or None when there is no top-p filter."""
        return self.top_p if self.top_p is not None and self.top_p < 1 else None


def _top_p(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """transformers' TopPLogitsWarper (min_tokens_to_keep=1), on scores in token-id order."""
    sorted_logits, sorted_indices = torch.sort(scores, descending=False)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove = cumulative <= (1 - top_p)
    remove[..., -1:] = False
    return scores.masked_fill(remove.scatter(1, sorted_indices, remove), float("-inf"))


def _draw(token_scores: torch.Tensor, sampling: Sampling, generator: torch.Generator | None) -> torch.Tensor:
    """Top-p, softmax and multinomial on filtered scores in token-id order, as transformers does."""
    if sampling.p is not None:
        token_scores = _top_p(token_scores, sampling.p)
    return torch.multinomial(torch.softmax(token_scores, dim=-1), 1, generator=generator)


def _map(token_ids: torch.Tensor | None, positions: torch.Tensor) -> torch.Tensor:
    """Token ids of `positions` [B, m]: token_ids is [n] (one permutation), [B, n], or None (identity)."""
    if token_ids is None:
        return positions
    if token_ids.dim() == 1:
        return token_ids[positions]
    return token_ids.gather(-1, positions)


def _greedy_row(scores: torch.Tensor, token_ids: torch.Tensor | None) -> torch.Tensor:
    """One CPU row: numpy's argmax (first maximum) is ~8x faster than torch's on a vocabulary row."""
    row = scores[0].detach().numpy()
    j = int(row.argmax())
    if token_ids is not None:
        if j + 1 < row.shape[0] and row[j + 1:].max() == row[j]:  # tied: the lowest token id wins
            ids = token_ids.expand_as(scores)[0]
            return ids[torch.from_numpy(row == row[j])].min().view(1, 1)
        j = int(token_ids.numpy()[j] if token_ids.dim() == 1 else token_ids[0, j])
    return torch.tensor([[j]])


def _greedy(scores: torch.Tensor, token_ids: torch.Tensor | None) -> torch.Tensor:
    """argmax with transformers' tie rule (lowest token id), checked only where positions are permuted."""
    if scores.shape[0] == 1 and scores.device.type == "cpu":
        return _greedy_row(scores, token_ids)
    best, position = scores.max(dim=-1, keepdim=True)  # the first maximum in column order
    if token_ids is None:
        return position
    tokens = _map(token_ids, position)
    if int((scores == best).sum()) > scores.shape[0]:  # a tie: the lowest token id among the maxima wins
        ids = token_ids.expand_as(scores)
        tokens = torch.where(scores == best, ids, torch.iinfo(ids.dtype).max).amin(dim=-1, keepdim=True)
    return tokens


def choose_tokens(
    scores: torch.Tensor,
    sampling: Sampling,
    vocab_size: int,
    token_ids: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    inverse: torch.Tensor | None = None,
) -> torch.Tensor:
    """The next token id per row [B, 1] from scores [B, n] whose column j scores token token_ids[.., j].

    `token_ids` is pi_c ([n] == [vocab_size]: a full permuted row), the candidates' ids [B, n]
    (the cloud's top-k return), or None (plaintext logits in token-id order). `inverse`
    (argsort of pi_c) lets a whole row be un-permuted by a gather, cheaper than a scatter.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be [batch, candidates], got shape {tuple(scores.shape)}")
    n = scores.shape[-1]
    full_row = n == vocab_size
    if not full_row:
        check_candidates(scores, sampling, vocab_size)
    scores = scores.float()
    if not sampling.do_sample:
        return _greedy(scores, token_ids)
    if sampling.temperature != 1.0:
        scores = scores / sampling.temperature
    batch = scores.shape[0]
    k = min(sampling.k, vocab_size) if sampling.k is not None else None
    if k is None or k >= n:  # every score is a candidate
        if token_ids is None and full_row:
            token_scores = scores
        elif inverse is not None and full_row:
            token_scores = scores.index_select(1, inverse)
        else:
            if token_ids is None:  # plaintext scores narrower than the vocabulary: which tokens they score is unknown
                raise ValueError(f"scores have {n} columns but vocab_size is {vocab_size}; pass their token_ids")
            token_scores = scores.new_full((batch, vocab_size), float("-inf"))
            token_scores.scatter_(1, token_ids.expand(batch, n), scores)
        return _draw(token_scores, sampling, generator)
    values, positions = scores.topk(k + 1, dim=-1)
    token_scores = scores.new_full((batch, vocab_size), float("-inf"))
    if bool((values[:, k] == values[:, k - 1]).any()):  # the k-th score is tied: TopK keeps every tie
        kept = scores.masked_fill(scores < values[:, k - 1:k], float("-inf"))
        ids = torch.arange(n).expand(batch, n) if token_ids is None else token_ids.expand(batch, n)
        token_scores.scatter_(1, ids, kept)
    else:
        token_scores.scatter_(1, _map(token_ids, positions[:, :k]), values[:, :k])
    return _draw(token_scores, sampling, generator)


def check_candidates(scores: torch.Tensor, sampling: Sampling, vocab_size: int) -> None:
    """Refuse candidate scores [B, n] (a top-n return) that cannot decide the choice exactly.

    The choice needs the top `needed` scores and every score tied with the last of them; the
    (needed+1)-th returned score shows whether one more is tied. Raises IncompleteCandidates on
    a tie at the boundary (the whole row is needed), ValueError when n is too small to tell.
    """
    n, need = scores.shape[-1], sampling.needed
    if need is None or need >= n:
        raise ValueError(f"{n} candidate scores of a {vocab_size}-token vocabulary are exact only for greedy "
                         f"or top_k < {n} sampling (one more candidate than top_k shows a tie at the boundary; "
                         f"got do_sample={sampling.do_sample}, top_k={sampling.top_k}); return more candidates "
                         "or set top_k")
    ordered = scores.float().sort(dim=-1, descending=True).values
    if bool((ordered[:, n - 1] == ordered[:, need - 1]).any()):
        raise IncompleteCandidates(f"the top {n} scores tie from rank {need} to {n}, so the choice may need a "
                                   "candidate the cloud did not return; ask for the whole row")


def incomplete_rows(values: torch.Tensor, need: int = 1) -> torch.Tensor:
    """Per row of candidate scores [m, n]: whether a tie at rank `need` may reach past the n returned."""
    ordered = values.float().sort(dim=-1, descending=True).values
    if ordered.shape[-1] <= need:
        return torch.ones(ordered.shape[0], dtype=torch.bool)
    return ordered[:, -1] == ordered[:, need - 1]


def greedy_among(values: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """Greedy's token per row [m] among candidates (lowest token id among the maxima); rows must be complete."""
    return _greedy(values.float(), token_ids)[:, 0]


def reference_next_token(logits: torch.Tensor, sampling: Sampling,
                         generator: torch.Generator | None = None) -> torch.Tensor:
    """transformers' own processors and sampler on plaintext logits [B, V]: the ground truth for tests."""
    from transformers.generation.logits_process import (  # noqa: PLC0415 - the tests' reference only
        LogitsProcessorList,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    scores = logits.float()
    if not sampling.do_sample:
        return scores.argmax(dim=-1, keepdim=True)
    processors = LogitsProcessorList()
    if sampling.temperature != 1.0:
        processors.append(TemperatureLogitsWarper(float(sampling.temperature)))
    if sampling.k is not None:
        processors.append(TopKLogitsWarper(sampling.k))
    if sampling.p is not None:
        processors.append(TopPLogitsWarper(sampling.p))
    no_ids = cast(torch.LongTensor, torch.zeros((scores.shape[0], 0), dtype=torch.long))  # warpers never read ids
    scores = processors(no_ids, scores)
    return torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=generator)
