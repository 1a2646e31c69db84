"""The scheme x attack matrix: every arm of stip/schemes.py under the same attacks, on the same real tokens.

Each attack is scored on real (non-pad) positions only, per position and per distinct token (a
distinct token counts when every one of its positions is recovered). Beside the attacks, each arm's
accuracy (top-1 agreement with plaintext, max |logit difference|) and cost (transform seconds, call
latency, bytes on the wire, bytes shipped to the cloud per re-transform) are rows too. Every row
carries `scheme`.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from transformers import PreTrainedModel

from ..families import Family, get_family
from ..schemes import Arm, fresh_key_arms, rotation_arm, stip_arm
from . import hidden, kpa, multiset, rotation, weights
from .baselines import nearest_tokens
from .corpus import TokenBatch
from .rows import row, timer
from .scoring import token_scores

ACCURACY = "plaintext model's top-1 on the same real tokens (device decodes the cloud's logits)"
COST = "developer and device side cost of the scheme (this host, loaded; see summary)"
SCHEMES = ("stip", "stip_noise", "stip_fresh_keys", "rotation", "rotation_noise")


def scores(guess: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, float]:
    """The one scoring (stip.attacks.scoring.token_scores): per real position and per distinct real token."""
    return token_scores(guess.reshape(truth.shape), truth, mask)


def _rows(attack: str, scheme: str, name: str, assumption: str, found: dict[str, float], n_queries: int,
          seconds: float, **params: Any) -> list[dict[str, Any]]:
    counts = {k: int(found[k]) for k in ("n_real_tokens", "n_distinct_tokens")}
    return [row(attack, name, "llama", assumption, metric, found[metric], "fraction", n_queries, seconds,
                scheme=scheme, **counts, **params) for metric in ("token_recovery", "distinct_token_recovery")]


@dataclass
class MatrixCfg:
    """Sizes of one matrix run (configs/privacy.yaml `attacks.scheme_matrix`)."""

    noise_sigma_rel: float = 0.5  # noise arms: sigma as a fraction of the embedding table's RMS
    hidden_layer: int = 1
    hidden_sequences: int = 2
    hidden_tokens: int = 12
    candidates: int = 64
    kpa_ns: list[int] = field(default_factory=lambda: [16, 1024])
    latency_reps: int = 3
    seed: int = 0


def arm_makers(model: PreTrainedModel, cfg: MatrixCfg,
               schemes: Sequence[str] = SCHEMES) -> dict[str, Callable[[], list[Arm]]]:
    """{scheme: () -> [session arms]}: two sessions for fresh keys (the second is attacked), one for the rest.
    Lazy, so one scheme's cloud copies are freed before the next is built."""
    rms = float(hidden.embedding_table(model).detach().float().pow(2).mean().sqrt())
    sigma = cfg.noise_sigma_rel * rms
    makers = {
        "stip": lambda: [stip_arm(model, cfg.seed)],
        "stip_noise": lambda: [stip_arm(model, cfg.seed, noise_sigma=sigma, noise_seed=cfg.seed)],
        "stip_fresh_keys": lambda: fresh_key_arms(model, [cfg.seed + 101, cfg.seed + 202]),
        "rotation": lambda: [rotation_arm(model, cfg.seed)],
        "rotation_noise": lambda: [rotation_arm(model, cfg.seed, noise_sigma=sigma, noise_seed=cfg.seed)],
    }
    unknown = sorted(set(schemes) - set(makers))
    if unknown:
        raise ValueError(f"unknown scheme(s) {unknown}; known: {sorted(makers)}")
    return {s: makers[s] for s in schemes}


def build_arms(model: PreTrainedModel, cfg: MatrixCfg, schemes: Sequence[str] = SCHEMES) -> dict[str, list[Arm]]:
    """Every scheme's session arms at once (small models; scheme_matrix builds them one at a time)."""
    return {s: make() for s, make in arm_makers(model, cfg, schemes).items()}


@torch.no_grad()
def accuracy_and_cost(name: str, arm: Arm, sessions: list[Arm], plain: PreTrainedModel, tokens: TokenBatch,
                      reps: int, ref: torch.Tensor | None = None, latency_rows: int = 2) -> list[dict[str, Any]]:
    """Top-1 agreement and max |logit diff| on real positions (`ref`: plaintext logits of `tokens`);
    latency on the first `latency_rows` rows, interleaved with plaintext; bytes; re-transform cost."""
    ref = plain(input_ids=tokens.ids, attention_mask=tokens.attention_mask).logits if ref is None else ref
    keep = tokens.mask
    out = arm.logits(tokens.ids, tokens.attention_mask)
    small_ids, small_mask = tokens.ids[:latency_rows], tokens.attention_mask[:latency_rows]
    times, plain_times = [], []
    arm.logits(small_ids, small_mask)  # warm-up: first-call allocations are not the scheme's cost
    plain(input_ids=small_ids, attention_mask=small_mask)
    for _ in range(reps):
        start = time.perf_counter()
        arm.logits(small_ids, small_mask)
        times.append(time.perf_counter() - start)
        start = time.perf_counter()
        plain(input_ids=small_ids, attention_mask=small_mask)
        plain_times.append(time.perf_counter() - start)
    agree = float((out.argmax(-1)[keep] == ref.argmax(-1)[keep]).float().mean())
    diff = float((out[keep] - ref[keep]).abs().max())
    wire = arm.encode(tokens.ids)
    call, base = statistics.median(times), statistics.median(plain_times)
    common = dict(scheme=arm.name, exact_claimed=arm.exact, noise_sigma=arm.noise_sigma, n_real=tokens.n_real)
    out_rows = [
        row("scheme_accuracy", name, "llama", ACCURACY, "top1_agreement", agree, "fraction", tokens.ids.shape[0],
            call, **common),
        row("scheme_accuracy", name, "llama", ACCURACY, "max_abs_logit_diff", diff, "logit", tokens.ids.shape[0],
            call, **common),
        row("scheme_cost", name, "llama", COST, "call_latency", call, "s", latency_rows, call,
            plaintext_latency=base, batch=list(small_ids.shape), **common),
        row("scheme_cost", name, "llama", COST, "latency_ratio_vs_plaintext", call / base, "ratio",
            latency_rows, call, batch=list(small_ids.shape), **common),
        row("scheme_cost", name, "llama", COST, "upload_bytes_per_token", wire[0, 0].numel() * wire.element_size(),
            "bytes", 1, 0.0, **common),
        row("scheme_cost", name, "llama", COST, "download_bytes_per_token", out.shape[-1] * out.element_size(),
            "bytes", 1, 0.0, **common),
        row("scheme_cost", name, "llama", COST, "transform_seconds", arm.transform_seconds, "s", 0,
            arm.transform_seconds, **common),
    ]
    if len(sessions) > 1:  # a new key set per session: the model is re-transformed and shipped every session
        out_rows.append(row("scheme_cost", name, "llama", COST, "per_session_retransform_seconds",
                            statistics.median(a.transform_seconds for a in sessions), "s", 0,
                            sum(a.transform_seconds for a in sessions), sessions=len(sessions), **common))
        out_rows.append(row("scheme_cost", name, "llama", COST, "per_session_cloud_bytes", arm.cloud_bytes(),
                            "bytes", 0, 0.0, sessions=len(sessions), **common))
    return out_rows


def _decode_wire(arm: Arm, wire: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """The plaintext guess for wire rows given a recovered key (pi index vector, or Q)."""
    if arm.kind == "rotation":
        return wire.double() @ key.T
    plain = torch.empty_like(wire)
    plain[..., key] = wire
    return plain


@torch.no_grad()
def attack_arm(name: str, arm: Arm, earlier: Arm, base: PreTrainedModel, tokens: TokenBatch, cfg: MatrixCfg,
               candidates: torch.Tensor, aligned: dict[str, tuple[torch.Tensor, float]] | None = None
               ) -> list[dict[str, Any]]:
    """Every matrix attack on one arm; `earlier` is the session the known plaintext came from.

    `aligned` caches weight alignment by the cloud's non-secret key id (stip and stip_noise share one cloud
    model: the attack sees the same weights, so it is run once; its row keeps the first run's seconds).
    """
    table = hidden.embedding_table(base).detach()
    wire = arm.encode(tokens.ids)
    out: list[dict[str, Any]] = []
    scheme = arm.name

    with timer() as t:
        guess = multiset.fingerprint_token_recovery(wire, table)
    out += _rows("embedding_multiset", scheme, name, multiset.ASSUMPTION, scores(guess, tokens.ids, tokens.mask),
                 tokens.ids.shape[0], t[0])

    cache = {} if aligned is None else aligned
    cloud_id = getattr(arm.cloud.config, "stip_key_id", None)
    with timer() as t:
        if cloud_id is not None and cloud_id in cache:
            key, seconds = cache[cloud_id]
        elif arm.kind == "rotation":
            key = rotation.procrustes_rotation(arm.cloud, base)
        else:
            key = weights.recover_pi(weights_family(arm), arm.cloud.state_dict(), base.state_dict())
    if cloud_id is None or cloud_id not in cache:
        seconds = t[0]
        if cloud_id is not None:
            cache[cloud_id] = (key, seconds)
    if arm.kind == "rotation":
        key_ok = float(1 - (key - arm.secret["Q"]).norm() / arm.secret["Q"].norm())
        assumption = rotation.PROCRUSTES_ASSUMPTION
    else:
        key_ok = float((key == arm.secret["pi"]).float().mean())
        assumption = weights.ASSUMPTION + "; then decodes traffic with the recovered pi (nearest row)"
    with timer() as t:
        guess = nearest_tokens(_decode_wire(arm, wire, key).float(), table)
    out += _rows("weight_alignment_decode", scheme, name, assumption, scores(guess, tokens.ids, tokens.mask),
                 tokens.ids.shape[0], seconds + t[0], variant="procrustes" if arm.kind == "rotation" else "hungarian",
                 key_recovered=key_ok)

    gen = torch.Generator().manual_seed(cfg.seed + 7)
    for n in cfg.kpa_ns:
        known = torch.randint(0, table.shape[0], (n,), generator=gen)
        with timer() as t:
            plain_rows, seen = earlier.embed(known[None])[0], earlier.encode(known[None])[0]
            if arm.kind == "rotation":
                key = rotation.known_plaintext_rotation(plain_rows, seen)
            else:
                key = kpa.assignment_permutation(plain_rows, seen)
            guess = nearest_tokens(_decode_wire(arm, wire, key).float(), table)
        out += _rows("known_plaintext_cross_session", scheme, name,
                     rotation.KPA_ASSUMPTION + "; decodes a later session's traffic with that key",
                     scores(guess, tokens.ids, tokens.mask), n, t[0], n=n,
                     same_keys=earlier is arm, variant="procrustes" if arm.kind == "rotation" else "hungarian")

    seqs = [s[: cfg.hidden_tokens] for s in tokens.sequences[: cfg.hidden_sequences]]
    truth = torch.cat(seqs)
    for variant in ("sorted", "gram"):
        with timer() as t:
            guesses = []
            for seq in seqs:
                observed = hidden.states_at(arm.cloud, cfg.hidden_layer, inputs_embeds=arm.encode(seq[None]))[0]
                if variant == "sorted":
                    guesses.append(hidden.hidden_state_token_recovery(observed, base, cfg.hidden_layer, candidates))
                else:
                    guesses.append(rotation.gram_token_recovery(observed, base, cfg.hidden_layer, candidates))
        assumption = hidden.ASSUMPTION if variant == "sorted" else rotation.GRAM_ASSUMPTION
        out += _rows(f"hidden_state_{variant}", scheme, name, assumption, scores(torch.cat(guesses), truth),
                     truth.numel() * candidates.numel(), t[0], layer=cfg.hidden_layer,
                     candidates=int(candidates.numel()))
    return out


def weights_family(arm: Arm) -> Family:
    """The STIP family of a permutation arm's cloud model (for weight alignment)."""
    return get_family(arm.cloud.config.model_type)


def candidate_set(tokens: TokenBatch, vocab: int, n: int, seed: int) -> torch.Tensor:
    """The hidden-state attacks' candidates: the true tokens plus random distractors, n in all."""
    true = torch.unique(torch.cat(tokens.sequences))
    extra = torch.randperm(vocab, generator=torch.Generator().manual_seed(seed))
    rest = extra[~torch.isin(extra, true)][: max(0, n - true.numel())]
    return torch.cat([true, rest])


def scheme_matrix(name: str, model: PreTrainedModel, tokens: TokenBatch, cfg: MatrixCfg,
                  schemes: Sequence[str] = SCHEMES, base: PreTrainedModel | None = None) -> list[dict[str, Any]]:
    """Rows for every scheme: accuracy and cost, then each attack. `base`: the attacker's public model
    (defaults to `model`, i.e. the developer published the weights unchanged)."""
    base = model if base is None else base
    makers = arm_makers(model, cfg, schemes)
    hidden_tokens = TokenBatch.from_sequences(
        [s[: cfg.hidden_tokens] for s in tokens.sequences[: cfg.hidden_sequences]], tokens.pad_id,
        sources=tokens.sources[: cfg.hidden_sequences], corpus=tokens.corpus)
    cands = candidate_set(hidden_tokens, hidden.embedding_table(model).shape[0], cfg.candidates, cfg.seed)
    with torch.no_grad():
        ref = model(input_ids=tokens.ids, attention_mask=tokens.attention_mask).logits
    out: list[dict[str, Any]] = []
    aligned: dict[str, tuple[torch.Tensor, float]] = {}
    for make in makers.values():
        sessions = make()
        arm = sessions[-1]
        out += accuracy_and_cost(name, arm, sessions, model, tokens, cfg.latency_reps, ref=ref)
        out += attack_arm(name, arm, sessions[0], base, tokens, cfg, cands, aligned)
        del sessions, arm
    return out
