"""Measurement entry points: run each attack on a given model and return tidy rows (rows.py).

Every function takes loaded models and tensors (the harness or a script loads them) and states
the drift, candidates and sizes it used as row parameters.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from transformers import PreTrainedModel
from transformers.models.vit.modeling_vit import ViTEmbeddings

from ..parties import ModelDeveloper, ModelServer
from ..speculation import Drafter
from . import baselines, drift, frequency, hidden, inverter, kpa, moe, multiset, scoring, speculation, theft, weights
from .frontier import public_table
from .rows import row, timer
from .scoring import token_rows

Rows = list[dict[str, Any]]
DECODES = weights.ASSUMPTION + "; then decodes traffic with the recovered keys"


def _rate(guess: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """Per real position (mask True; None = every position real)."""
    return scoring.token_scores(guess.reshape(truth.shape), truth, mask)["token_recovery"]


def _drifted(base: PreTrainedModel, kind: str, size: float, ids: torch.Tensor, seed: int,
             lr: float = 1e-4) -> PreTrainedModel:
    """The developer's fine-tuned model: `perturb` (relative size) or `finetune` (size = Adam steps on `ids`,
    which should be public text the attacked users never send: the `drift_text` of the measure functions)."""
    if size == 0:
        return base
    if kind == "perturb":
        return drift.perturbed_copy(base, size, seed)
    if kind == "finetune":
        return drift.finetuned_copy(base, ids, int(size), lr=lr, seed=seed)
    raise ValueError(f"drift kind must be 'perturb' or 'finetune', got {kind!r}")


def _drift_params(kind: str, size: float, base: PreTrainedModel, tuned: PreTrainedModel, lr: float,
                  text: torch.Tensor | None) -> dict[str, Any]:
    """What the drift stand-in was and how far it moved the weights (||W' - W|| / ||W||)."""
    out: dict[str, Any] = dict(drift_kind=kind, drift=size, weight_change=drift.relative_weight_change(base, tuned))
    if kind == "finetune" and size:
        out.update(drift_lr=lr, drift_tokens=int(text.numel()) if text is not None else 0)
    return out


@torch.no_grad()
def measure_multiset(name: str, base: PreTrainedModel, ids: torch.Tensor, drifts: Sequence[float] = (0.0,),
                     drift_kind: str = "perturb", seed: int = 0, mask: torch.Tensor | None = None,
                     drift_text: torch.Tensor | None = None, drift_lr: float = 1e-4) -> Rows:
    """Token recovery from permuted embeddings against the public (base) table, per weight drift.

    Scored on the real positions of `mask` (None: every position), per position and per distinct token.
    """
    public = ModelDeveloper(base, seed=seed).data_owner()
    table = public_table(public)
    by_position = multiset.adds_positions(public.embed)
    rows = []
    for size in drifts:
        text = ids if drift_text is None else drift_text
        tuned = _drifted(base, drift_kind, size, text, seed, drift_lr)
        developer = ModelDeveloper(tuned, seed=seed)
        wire = developer.data_owner().encode(ids)
        with timer() as t:
            if by_position:
                guess = multiset.recover_with_position_tables(wire, public.embed, table.shape[0])
            else:
                guess = multiset.fingerprint_token_recovery(wire, table)
        rows += token_rows("multiset", name, developer.family.name, multiset.ASSUMPTION, guess, ids, mask,
                           ids.shape[0], t[0], **_drift_params(drift_kind, size, base, tuned, drift_lr, text),
                           d=table.shape[1], position_tables=by_position, candidates=int(table.shape[0]))
    return rows


@torch.no_grad()
def measure_vit_patches(name: str, vit: PreTrainedModel, pixel_values: torch.Tensor, seed: int = 0) -> Rows:
    """ViT: pi from the CLS row, then pixels by inverting the public patch projection."""
    developer = ModelDeveloper(vit, seed=seed)
    device = developer.data_owner()
    embeddings = device.embedding
    if not isinstance(embeddings, ViTEmbeddings):
        raise ValueError(f"{name}: the device module is a {type(embeddings).__name__}, not ViTEmbeddings; "
                         "measure_vit_patches takes a ViT (family 'vit')")
    patch = vit.config.patch_size
    rows = []
    for image in pixel_values:
        wire = device.encode(image[None])[0]
        with timer() as t:
            pi, patches = multiset.vit_patch_recovery(wire, embeddings, patch)
        truth = multiset.image_patches(image, patch)
        rel = float((patches - truth).norm() / truth.norm())
        common = dict(d=int(pi.numel()), pixels_per_patch=int(truth.shape[1]))
        rows.append(row("vit_patch", name, developer.family.name, multiset.PATCH_ASSUMPTION, "pi_recovered",
                        float((pi == device.keys["pi"]).float().mean()), "fraction", 1, t[0], **common))
        rows.append(row("vit_patch", name, developer.family.name, multiset.PATCH_ASSUMPTION,
                        "pixel_relative_error", rel, "ratio", 1, t[0], **common))
    return rows


@torch.no_grad()
def measure_hidden(name: str, base: PreTrainedModel, ids: torch.Tensor, layers: Sequence[int],
                   drifts: Sequence[float] = (0.0,), drift_kind: str = "perturb",
                   candidates: torch.Tensor | None = None, seed: int = 0, mask: torch.Tensor | None = None,
                   order: str = "index", tolerance: float = 0.0, drift_text: torch.Tensor | None = None,
                   drift_lr: float = 1e-4, batch: int = 512) -> Rows:
    """Hidden-state vocabulary matching per layer and drift, every row of `ids` (its real positions).

    candidates None = the full vocabulary (the papers' setting); a row parameter says which. Right-padded
    rows: a causal model's real states never see the pads, and only the real positions are attacked.
    """
    rows = []
    vocab = int(hidden.embedding_table(base).shape[0])
    n_cand = vocab if candidates is None else int(candidates.numel())
    keep = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
    lengths = [int(k.sum()) for k in keep]
    if any(not bool(k[:n].all()) for k, n in zip(keep, lengths)):
        raise ValueError("measure_hidden needs right-padded rows (real positions first); pad on the right")
    for size in drifts:
        text = ids if drift_text is None else drift_text
        tuned = _drifted(base, drift_kind, size, text, seed, drift_lr)
        developer = ModelDeveloper(tuned, seed=seed)
        cloud = developer.cloud_model()
        device = developer.data_owner()
        params = _drift_params(drift_kind, size, base, tuned, drift_lr, text)
        for layer in layers:
            guess = torch.full_like(ids, -1)
            forwards, seconds = 0, 0.0
            for r, n in enumerate(lengths):
                wire = device.encode(ids[r:r + 1, :n])
                observed = hidden.states_at(cloud, layer, inputs_embeds=wire)[0]
                with timer() as t:
                    found, used = hidden.vocabulary_matching(observed, base, layer, candidates, batch=batch,
                                                             order=order, tolerance=tolerance)
                guess[r, :n] = found
                forwards += used
                seconds += t[0]
            rows += token_rows("hidden_state", name, developer.family.name, hidden.ASSUMPTION, guess, ids, keep,
                               len(lengths), seconds, layer=layer, candidates=n_cand,
                               candidate_set="full vocabulary" if n_cand == vocab else "true tokens + random",
                               order=order, tolerance=tolerance, base_forwards=forwards, **params)
    return rows


def key_rows(name: str, family: str, recovered: dict[str, torch.Tensor], keys: Any, dims: Any,
             out_dim: int | None, seconds: float, assumption: str = weights.ASSUMPTION, **params: Any) -> Rows:
    """Rows scoring recovered keys on what is secret: one key_recovered row per secret key attempted, the
    mean over them, the share of the secret keys' bits recovered whole, and the effective key space."""
    s = scoring.key_scores(recovered, keys, dims, out_dim)
    bits = scoring.key_space_bits(dims, out_dim)
    common = dict(forced_keys=s["forced"], n_secret_keys=s["n_secret_keys"],
                  n_secret_keys_attempted=s["n_secret_keys_attempted"], **params)
    rows = [row("weight_alignment", name, family, assumption, "key_recovered", fraction, "fraction", 0, seconds,
                key=key, key_bits=bits[key], exact=exact, **params)
            for key, (fraction, exact) in s["per_key"].items()]
    for metric in ("secret_keys_mean_recovered", "key_space_bits_recovered"):
        rows.append(row("weight_alignment", name, family, assumption, metric, s[metric], "fraction", 0, seconds,
                        **common))
    rows.append(row("weight_alignment", name, family, assumption, "effective_key_space_bits",
                    s["effective_key_space_bits"], "bits", 0, seconds, **common))
    return rows


@torch.no_grad()
def measure_weights(name: str, base: PreTrainedModel, ids: torch.Tensor, drifts: Sequence[float] = (0.0,),
                    drift_kind: str = "perturb", seed: int = 0, hungarian_limit: int = 8192,
                    mask: torch.Tensor | None = None, drift_text: torch.Tensor | None = None,
                    drift_lr: float = 1e-4) -> Rows:
    """Key recovery by weight alignment per drift (secret keys only), and whether the keys decode traffic."""
    rows = []
    base_sd = base.state_dict()
    public = ModelDeveloper(base, seed=seed).data_owner()
    table = public_table(public)
    by_position = multiset.adds_positions(public.embed)
    keep = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
    for size in drifts:
        text = ids if drift_text is None else drift_text
        tuned = _drifted(base, drift_kind, size, text, seed, drift_lr)
        developer = ModelDeveloper(tuned, seed=seed)
        cloud = developer.cloud_model()
        family = developer.family
        common = _drift_params(drift_kind, size, base, tuned, drift_lr, text)
        with timer() as t:
            cloud_sd = cloud.state_dict()
            pi = weights.recover_pi(family, cloud_sd, base_sd)
            recovered = weights.recover_layer_keys(family, cloud_sd, base_sd, pi, hungarian_limit)
        found = {"pi": pi, **{k: v for k, (v, _) in recovered.items()}}
        out_dim = int(developer.keys["pi_c"].numel()) if "pi_c" in developer.keys else None
        rows += key_rows(name, family.name, found, developer.keys, developer.dims, out_dim, t[0],
                         **common)
        device = developer.data_owner()
        wire = device.encode(ids)
        plain_guess = torch.empty_like(wire)
        plain_guess[..., pi] = wire
        guess = (multiset.recover_with_position_tables(plain_guess, public.embed, table.shape[0])
                 if by_position else baselines.nearest_tokens(plain_guess, table))
        rows += token_rows("weight_alignment", name, family.name, DECODES, guess, ids, keep, ids.shape[0], t[0],
                           decoded_with="recovered pi, nearest public embedding row", **common)
        if "pi_c" in recovered:
            logits = cloud(inputs_embeds=wire).logits.argmax(-1)
            truth = tuned(input_ids=ids).logits.argmax(-1)
            # a per-position head is scored at real positions; a pooled one (sequence classification) per sequence
            positions = keep if truth.shape == keep.shape else None
            rows.append(row("weight_alignment", name, family.name, DECODES,
                            "argmax_decoded_with_recovered_pi_c", _rate(recovered["pi_c"][0][logits], truth, positions),
                            "fraction", ids.shape[0], t[0], **common))
    return rows


@torch.no_grad()
def measure_kpa(name: str, model: PreTrainedModel, ids: torch.Tensor, ns: Sequence[int],
                sigma_rel: float = 0.0, seed: int = 0, mask: torch.Tensor | None = None) -> Rows:
    """pi recovered from n known (embedding, wire) rows of real positions, optionally under the noise defence;
    scored over pi's entries (pi is always secret: d! values)."""
    developer = ModelDeveloper(model, seed=seed)
    clean = developer.data_owner()
    rms = float(public_table(clean).float().pow(2).mean().sqrt())
    device = developer.data_owner(noise_sigma=sigma_rel * rms,
                                  noise_generator=torch.Generator().manual_seed(seed))
    keep = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
    plain = clean.embed(ids)[keep]
    wire = device.encode(ids)[keep]
    rows = []
    for n in ns:
        if n > plain.shape[0]:
            raise ValueError(f"n={n} pairs asked but only {plain.shape[0]} token rows given; pass more ids")
        with timer() as t:
            pi = kpa.assignment_permutation(plain[:n], wire[:n])
        rows.append(row("known_plaintext", name, developer.family.name, kpa.ASSUMPTION, "pi_recovered",
                        float((pi == clean.keys["pi"]).float().mean()), "fraction", n, t[0], n=n,
                        d=clean.hidden_size, sigma_rel=sigma_rel,
                        key_bits=scoring.log2_factorial(clean.hidden_size)))
    return rows


@torch.no_grad()
def measure_frequency(name: str, base: PreTrainedModel, user_chunks: Sequence[torch.Tensor],
                      reference_chunks: Sequence[torch.Tensor], corpus: str, seed: int = 0,
                      methods: Sequence[str] = ("rank", "logit_profile")) -> Rows:
    """Output-side analysis under one pi_c over the users' chunks against public text: `rank` maps argmax
    indices rank for rank (output_frequency rows); `logit_profile` matches each index's logit profile
    (output_logit_profile rows, also scoring the whole of pi_c it names)."""
    unknown = set(methods) - {"rank", "logit_profile"}
    if unknown:
        raise ValueError(f"unknown frequency method(s) {sorted(unknown)}; choose rank and/or logit_profile")
    developer = ModelDeveloper(base, seed=seed)
    cloud = developer.cloud_model()
    device = developer.data_owner()
    wires = [device.encode(c) for c in user_chunks]
    pi_c = device.keys["pi_c"]
    common = dict(corpus=corpus, reference_positions=int(sum(c.numel() for c in reference_chunks)),
                  candidates=int(pi_c.numel()))
    rows = []
    with timer() as t_obs:
        observed = frequency.argmax_indices(cloud, wires, input_name="inputs_embeds")
    common["n_positions"] = int(observed.numel())
    truth = pi_c[observed]
    if "rank" in methods:
        with timer() as t:
            reference = frequency.argmax_indices(base, reference_chunks)
            guess = frequency.frequency_mapping(observed, reference, pi_c.numel())
        result = frequency.frequency_recovery(observed, truth, guess)
        rows += [row("output_frequency", name, developer.family.name, frequency.ASSUMPTION, metric, value,
                     "count" if metric == "distinct_indices" else "fraction", len(user_chunks), t[0] + t_obs[0],
                     method="rank", **common) for metric, value in result.items()]
    if "logit_profile" in methods:
        with timer() as t:
            seen = frequency.logit_profiles(cloud, wires, input_name="inputs_embeds")
            ref = frequency.logit_profiles(base, reference_chunks)
            guess = frequency.profile_mapping(seen, ref, observed if pi_c.numel() > 4096 else None)
        result = frequency.frequency_recovery(observed, truth, guess)
        named = guess >= 0
        result["pi_c_named_recovered"] = float((guess[named] == pi_c[named]).float().mean())
        rows += [row("output_logit_profile", name, developer.family.name, frequency.PROFILE_ASSUMPTION, metric,
                     value, "count" if metric == "distinct_indices" else "fraction", len(user_chunks), t[0],
                     method="logit_profile", indices_named=int(named.sum()),
                     features=list(frequency.PROFILE_FEATURES), **common) for metric, value in result.items()]
    return rows


@torch.no_grad()
def measure_moe(name: str, base: PreTrainedModel, ids: torch.Tensor, seed: int = 0,
                mask: torch.Tensor | None = None) -> Rows:
    """Token recovery from the cloud's routing (router logits, and expert choices only), full vocabulary,
    over every row's real positions (right-padded rows)."""
    developer = ModelDeveloper(base, seed=seed)
    cloud = developer.cloud_model()
    device = developer.data_owner()
    keep = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
    lengths = [int(k.sum()) for k in keep]
    top_k = base.config.num_experts_per_tok
    rows = []
    for use in ("logits", "choices"):
        guess = torch.full_like(ids, -1)
        seconds = 0.0
        for r, n in enumerate(lengths):
            observed = moe.router_logits(cloud, inputs_embeds=device.encode(ids[r:r + 1, :n]))[0]
            with timer() as t:
                guess[r, :n] = moe.routing_token_recovery(observed, base, top_k, use)
            seconds += t[0]
        rows += token_rows("moe_routing", name, developer.family.name, moe.ASSUMPTION, guess, ids, keep,
                           len(lengths), seconds, observed=use, experts=base.config.num_local_experts, top_k=top_k,
                           candidates=int(hidden.embedding_table(base).shape[0]))
    return rows


@torch.no_grad()
def measure_theft(name: str, model: PreTrainedModel, ids: torch.Tensor, seed: int = 0) -> Rows:
    """Equivalence of (cloud weights + one user's package) with the original model."""
    developer = ModelDeveloper(model, seed=seed)
    with timer() as t:
        result = theft.functional_theft(model, developer.cloud_model(), developer.data_owner(), ids)
    return [row("functional_theft", name, developer.family.name, theft.ASSUMPTION, metric, value,
                "abs" if metric == "max_abs_error" else "fraction", ids.shape[0], t[0])
            for metric, value in result.items()]


@torch.no_grad()
def measure_projection(name: str, model: PreTrainedModel, ids: torch.Tensor, ns: Sequence[int],
                       seed: int = 0, mask: torch.Tensor | None = None) -> Rows:
    """Random projection baseline: multiset matching (ciphertext only) and least-squares KPA vs n."""
    table = public_table(ModelDeveloper(model, seed=seed).data_owner())
    d = table.shape[1]
    r = baselines.gaussian_projection(d, d, seed)
    plain = table[ids]
    wire = plain @ r
    family = ModelDeveloper(model, seed=seed).family.name
    with timer() as t:
        guess = multiset.fingerprint_token_recovery(wire, table)
    rows = token_rows("projection_multiset", name, family, baselines.PROJECTION_MULTISET_ASSUMPTION, guess, ids,
                      mask, ids.shape[0], t[0], d=d, baseline="random_projection")
    gen = torch.Generator().manual_seed(seed)
    for n in ns:
        known = table[torch.randint(0, table.shape[0], (n,), generator=gen)]
        with timer() as t:
            r_hat = baselines.projection_known_plaintext(known, known @ r)
            guess = baselines.projection_token_recovery(wire, r_hat, table)
        rows += token_rows("projection_known_plaintext", name, family, baselines.PROJECTION_KPA_ASSUMPTION,
                           guess, ids, mask, n, t[0], n=n, d=d, baseline="random_projection")
    return rows


@torch.no_grad()
def measure_split(name: str, base: PreTrainedModel, ids: torch.Tensor, layers: Sequence[int],
                  candidates: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> Rows:
    """Model split baseline: invert the device's clear layer-l activations by vocabulary matching, every
    row's real positions (right-padded rows)."""
    family = ModelDeveloper(base, seed=0).family.name
    n_cand = int((candidates if candidates is not None else hidden.embedding_table(base)).shape[0])
    keep = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
    lengths = [int(k.sum()) for k in keep]
    rows = []
    for layer in layers:
        guess = torch.full_like(ids, -1)
        seconds = 0.0
        for r, n in enumerate(lengths):
            activations = hidden.states_at(base, layer, input_ids=ids[r:r + 1, :n])[0]
            with timer() as t:
                guess[r, :n] = baselines.split_token_recovery(activations, base, layer, candidates)
            seconds += t[0]
        rows += token_rows("split_inversion", name, family, baselines.SPLIT_ASSUMPTION, guess, ids, keep,
                           len(lengths), seconds, layer=layer, candidates=n_cand, baseline="model_split")
    return rows


def measure_speculation(name: str, base: PreTrainedModel, tokenizer: Any, tasks: dict[str, Sequence[tuple[str, str]]],
                        new_tokens: int, drafter: Drafter, seed: int = 0) -> Rows:
    """Per task set ({task: [(label, prompt)]}): how often the accepted lengths alone tell the label, vs chance."""
    developer = ModelDeveloper(base, seed=seed)
    device, server = developer.data_owner(), ModelServer(developer.cloud_model())
    rows = []
    for task, labelled in tasks.items():
        labels = [label for label, _ in labelled]
        ids = [tokenizer(text, return_tensors="pt")["input_ids"] for _, text in labelled]
        with timer() as t:
            traces = speculation.collect(device, server, ids, new_tokens, drafter)
            accuracy = speculation.loo_nearest_centroid(np.stack([speculation.features(x) for x in traces]), labels)
        rows.append(row("speculation_length", name, developer.family.name, speculation.ASSUMPTION,
                        "prompt_kind_accuracy", accuracy, "fraction", len(traces), t[0], task=task,
                        chance=speculation.chance(labels), labels=sorted(set(labels)), new_tokens=new_tokens,
                        drafter=repr(drafter), classifier="leave-one-out nearest centroid",
                        features=list(speculation.FEATURES),
                        mean_round_trips_per_token=float(np.mean([speculation.features(x)[0] for x in traces]))))
    return rows


@torch.no_grad()
def measure_inverter(name: str, base: PreTrainedModel, ids: torch.Tensor, public_ids: torch.Tensor,
                     layers: Sequence[int], mask: torch.Tensor | None = None,
                     public_mask: torch.Tensor | None = None, features: Sequence[str] = inverter.FEATURES,
                     kind: str = "ridge", drifts: Sequence[float] = (0.0,), drift_kind: str = "perturb",
                     seed: int = 0, drift_text: torch.Tensor | None = None, drift_lr: float = 1e-4,
                     public_corpus: str = "") -> Rows:
    """A learned inverter per layer, drift and feature route: trained on the public model's states of
    `public_ids` (the attacker's text, never a user's), attacking the cloud's permuted states of `ids`.

    Rows (attack learned_inverter_<route>): token_recovery and distinct_token_recovery on the users' real
    tokens; for `aligned` and `weights`, the share of `pi` the alignment recovered. Cost: training seconds
    and tokens, attack seconds (with weight alignment's, for `weights`), users' sequences seen.
    """
    keep = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
    pkeep = torch.ones_like(public_ids, dtype=torch.bool) if public_mask is None else public_mask.bool()
    table = hidden.embedding_table(base).detach()
    truth = ids[keep]
    trained = set(public_ids[pkeep].tolist())
    coverage = float(torch.tensor([int(t) in trained for t in truth.tolist()], dtype=torch.float).mean())
    rows = []
    for size in drifts:
        text = ids if drift_text is None else drift_text
        tuned = _drifted(base, drift_kind, size, text, seed, drift_lr)
        developer = ModelDeveloper(tuned, seed=seed)
        cloud, device = developer.cloud_model(), developer.data_owner()
        params = _drift_params(drift_kind, size, base, tuned, drift_lr, text)
        wire = device.encode(ids)
        from_weights, t_weights = None, 0.0
        if "weights" in features:
            with timer() as t_w:
                from_weights = weights.recover_pi(developer.family, cloud.state_dict(), base.state_dict())
            t_weights = t_w[0]
        for layer in layers:
            observed = inverter.real_states(cloud, layer, keep, inputs_embeds=wire)
            with timer() as t_states:
                public = inverter.real_states(base, layer, pkeep, input_ids=public_ids)
            for route in features:
                with timer() as t_train:
                    inv = inverter.LearnedInverter(features=route, kind=kind, seed=seed).fit(
                        public, public_ids[pkeep], table)
                with timer() as t:
                    index = from_weights if route == "weights" else inv.alignment(observed)
                    found = inv.attack(observed, index)
                t[0] += t_weights if route == "weights" else 0.0
                guess = torch.full_like(ids, -1)
                guess[keep] = found
                common = dict(layer=layer, features=route, kind=kind, train_tokens=int(pkeep.sum()),
                              train_seconds=t_train[0] + t_states[0], attack_seconds=t[0],
                              train_coverage=coverage, public_corpus=public_corpus, candidates=int(table.shape[0]),
                              **params)
                attack = f"learned_inverter_{route}"  # one attack per route: each has its own assumption
                rows += token_rows(attack, name, developer.family.name, inverter.ASSUMPTIONS[route],
                                   guess, ids, keep, ids.shape[0], t[0] + t_train[0] + t_states[0], **common)
                if index is not None:
                    rows.append(row(attack, name, developer.family.name, inverter.ASSUMPTIONS[route],
                                    "pi_recovered", float((index == device.keys["pi"]).float().mean()), "fraction",
                                    ids.shape[0], t[0], **common))
    return rows
