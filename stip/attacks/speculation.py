"""What speculative generation shows the cloud: the accepted length of every round trip.

Assumption: the cloud sees, for every round trip of `stip.generate(..., speculate=...)`, how many
positions the device sent (the drafts + 1) and how many cached tokens it is told to keep, hence how
many drafts were accepted (all but the last round's). It holds labelled traces of prompts of its
own making (same model, same drafter), and guesses each user's prompt kind from the trace alone,
with a leave-one-out nearest-centroid classifier over a few trace features. No key, no tokens.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..generate import generate
from ..parties import DataOwner, ModelServer
from ..speculation import Drafter

ASSUMPTION = ("cloud sees the drafted length and the kept cache length (so the accepted length) of every round "
              "trip of speculative generation, and labelled traces of its own prompts; no key, no tokens")
FEATURES = ("round_trips_per_token", "mean_accepted", "share_trips_accepting", "share_trips_drafting",
            "longest_accepted_share")


class RecordingServer:
    """The cloud's view: wraps a ModelServer and logs each request's sent length, last_n and cache_length."""

    def __init__(self, server: ModelServer):
        self.server = server
        self.requests: list[dict[str, int | None]] = []

    def open_session(self) -> Any:
        return self.server.open_session()

    def close_session(self, session: Any) -> None:
        self.server.close_session(session)

    def infer(self, inputs_embeds: torch.Tensor, **kwargs: Any) -> dict[str, torch.Tensor]:
        self.requests.append({"sent": int(inputs_embeds.shape[1]), "last_n": kwargs.get("last_n"),
                              "cache_length": kwargs.get("cache_length")})
        return self.server.infer(inputs_embeds, **kwargs)


@dataclass(frozen=True)
class Trace:
    """What the cloud reads off one generation: drafts per round trip, and accepted drafts per round but the last."""

    drafted: tuple[int, ...]
    accepted: tuple[int, ...]


def _recorded(request: dict[str, int | None], key: str) -> int:
    """One logged field of a request; every round of speculative generation sends all three."""
    value = request[key]
    if value is None:
        raise ValueError(f"a recorded request has no {key}: run stip.generate with speculate= (each speculative "
                         "round sends last_n and cache_length)")
    return int(value)


def cloud_trace(requests: Sequence[dict[str, int | None]]) -> Trace:
    """Drafted and accepted lengths from the requests alone (the cloud's arithmetic, no device state)."""
    if not requests:
        raise ValueError("no requests recorded: run stip.generate with speculate= through a RecordingServer")
    drafted = tuple(_recorded(r, "last_n") - 1 for r in requests)
    kept = [_recorded(requests[0], "sent") - drafted[0]] + [_recorded(r, "cache_length") + 1 for r in requests[1:]]
    # round r keeps its sent token, its accepted drafts and the cloud's chosen token is sent next:
    # kept[r+1] = kept[r] + accepted[r] + 1 (kept counts the cache plus the token sent with the request)
    accepted = tuple(kept[i + 1] - kept[i] - 1 for i in range(len(kept) - 1))
    return Trace(drafted, accepted)


def features(trace: Trace) -> np.ndarray:
    """FEATURES of one trace (the last round's accepted length is not visible and not used)."""
    rounds = len(trace.drafted)
    acc = np.asarray(trace.accepted or (0,), dtype=float)
    tokens = float(acc.sum() + rounds)  # lower bound when the last round accepted drafts
    return np.array([rounds / tokens, acc.mean(), float((acc > 0).mean()),
                     float(np.mean([d > 0 for d in trace.drafted])), acc.max() / tokens])


def loo_nearest_centroid(x: np.ndarray, labels: Sequence[str]) -> float:
    """Leave-one-out accuracy of a nearest-centroid classifier on z-scored features."""
    x, y = np.asarray(x, dtype=float), np.asarray(labels)
    if len(y) < 2 or len(set(y)) < 2:
        raise ValueError(f"need at least two traces of two labels, got {len(y)} of {sorted(set(y))}")
    right = 0
    for i in range(len(y)):
        train = np.arange(len(y)) != i
        mu, sd = x[train].mean(0), x[train].std(0)
        z = (x - mu) / np.where(sd > 0, sd, 1.0)
        classes = sorted(set(y[train]))
        centroids = np.stack([z[train & (y == c)].mean(0) for c in classes])
        right += classes[int(np.argmin(((centroids - z[i]) ** 2).sum(1)))] == y[i]
    return right / len(y)


def chance(labels: Sequence[str]) -> float:
    """Success of always guessing the most common label (the bar the attack must clear)."""
    values, counts = np.unique(np.asarray(labels), return_counts=True)
    return float(counts.max() / counts.sum()) if len(values) else float("nan")


def collect(device: DataOwner, server: ModelServer, prompts: Sequence[torch.Tensor], new_tokens: int,
            drafter: Drafter) -> list[Trace]:
    """The cloud's trace of each prompt's greedy speculative generation ([1, n] ids each)."""
    traces = []
    for ids in prompts:
        recorder = RecordingServer(server)
        generate(device, recorder, ids, new_tokens, speculate=drafter)
        traces.append(cloud_trace(recorder.requests))
    return traces


def task_prompts(snippets: Sequence[str]) -> list[tuple[str, str]]:
    """(label, prompt) pairs: each snippet once to copy and once to continue, so only the task differs."""
    out = []
    for s in snippets:
        out.append(("copying", f"Copy the following text exactly.\nText: {s}\nCopy:"))
        out.append(("open-ended", s))
    return out


def public_snippets(texts: Sequence[str], n: int, min_chars: int = 80, max_chars: int = 300) -> list[str]:
    """The first plain paragraph (min..max chars, no markup) of each text, up to n of them."""
    markup = set("`[]|<>#*=_{}")
    found = []
    for text in texts:
        for para in text.split("\n\n"):
            para = " ".join(para.split())
            if min_chars <= len(para) <= max_chars and not markup & set(para):
                found.append(para)
                break
        if len(found) == n:
            return found
    raise ValueError(f"found {len(found)} plain paragraphs of {min_chars}-{max_chars} characters, asked for {n}; "
                     "lower n or widen the length range")
