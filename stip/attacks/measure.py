"""Measurement entry points: run each attack on a given model and return tidy rows (rows.py).

Every function takes loaded models and tensors (the harness or a script loads them) and states
the drift, candidates and sizes it used as row parameters.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..parties import ModelDeveloper, ModelServer
from ..speculation import Drafter
from . import baselines, drift, frequency, hidden, kpa, moe, multiset, speculation, theft, weights
from .frontier import public_table
from .rows import row, timer

Rows = list[dict[str, Any]]
DECODES = weights.ASSUMPTION + "; then decodes traffic with the recovered keys"


def _rate(guess: torch.Tensor, truth: torch.Tensor) -> float:
    return float((guess.reshape(-1) == truth.reshape(-1)).float().mean())


def _drifted(base: nn.Module, kind: str, size: float, ids: torch.Tensor | None, seed: int) -> nn.Module:
    """The developer's fine-tuned model: `perturb` (relative size) or `finetune` (size = Adam steps)."""
    if size == 0:
        return base
    if kind == "perturb":
        return drift.perturbed_copy(base, size, seed)
    if kind == "finetune":
        return drift.finetuned_copy(base, ids, int(size), seed=seed)
    raise ValueError(f"drift kind must be 'perturb' or 'finetune', got {kind!r}")


@torch.no_grad()
def measure_multiset(name: str, base: nn.Module, ids: torch.Tensor, drifts: Sequence[float] = (0.0,),
                     drift_kind: str = "perturb", seed: int = 0) -> Rows:
    """Token recovery from permuted embeddings against the public (base) table, per weight drift."""
    public = ModelDeveloper(base, seed=seed).data_owner()
    table = public_table(public)
    by_position = multiset.adds_positions(public.embed)
    rows = []
    for size in drifts:
        tuned = _drifted(base, drift_kind, size, ids, seed)
        developer = ModelDeveloper(tuned, seed=seed)
        wire = developer.data_owner().encode(ids)
        with timer() as t:
            if by_position:
                guess = multiset.recover_with_position_tables(wire, public.embed, table.shape[0])
            else:
                guess = multiset.fingerprint_token_recovery(wire, table)
        rows.append(row("multiset", name, developer.family.name, multiset.ASSUMPTION, "token_recovery",
                        _rate(guess, ids), "fraction", ids.shape[0], t[0], drift_kind=drift_kind,
                        drift=size, weight_change=drift.relative_weight_change(base, tuned),
                        n_tokens=ids.numel(), d=table.shape[1], position_tables=by_position))
    return rows


@torch.no_grad()
def measure_vit_patches(name: str, vit: nn.Module, pixel_values: torch.Tensor, seed: int = 0) -> Rows:
    """ViT: pi from the CLS row, then pixels by inverting the public patch projection."""
    developer = ModelDeveloper(vit, seed=seed)
    device = developer.data_owner()
    patch = vit.config.patch_size
    rows = []
    for image in pixel_values:
        wire = device.encode(image[None])[0]
        with timer() as t:
            pi, patches = multiset.vit_patch_recovery(wire, device.embedding, patch)
        truth = multiset.image_patches(image, patch)
        rel = float((patches - truth).norm() / truth.norm())
        common = dict(d=int(pi.numel()), pixels_per_patch=int(truth.shape[1]))
        rows.append(row("vit_patch", name, developer.family.name, multiset.PATCH_ASSUMPTION, "pi_recovered",
                        float((pi == device.keys["pi"]).float().mean()), "fraction", 1, t[0], **common))
        rows.append(row("vit_patch", name, developer.family.name, multiset.PATCH_ASSUMPTION,
                        "pixel_relative_error", rel, "ratio", 1, t[0], **common))
    return rows


@torch.no_grad()
def measure_hidden(name: str, base: nn.Module, ids: torch.Tensor, layers: Sequence[int],
                   drifts: Sequence[float] = (0.0,), drift_kind: str = "perturb",
                   candidates: torch.Tensor | None = None, seed: int = 0) -> Rows:
    """Hidden-state vocabulary matching on one sequence per layer and drift (candidates: a row parameter)."""
    rows = []
    n_cand = int((candidates if candidates is not None else base.get_input_embeddings().weight).shape[0])
    for size in drifts:
        tuned = _drifted(base, drift_kind, size, ids, seed)
        developer = ModelDeveloper(tuned, seed=seed)
        cloud = developer.cloud_model()
        wire = developer.data_owner().encode(ids[:1])
        change = drift.relative_weight_change(base, tuned)
        for layer in layers:
            observed = hidden.states_at(cloud, layer, inputs_embeds=wire)[0]
            with timer() as t:
                guess = hidden.hidden_state_token_recovery(observed, base, layer, candidates)
            rows.append(row("hidden_state", name, developer.family.name, hidden.ASSUMPTION, "token_recovery",
                            _rate(guess, ids[0]), "fraction", 1, t[0], layer=layer, drift_kind=drift_kind,
                            drift=size, weight_change=change, candidates=n_cand, n_tokens=ids.shape[1],
                            base_forwards=n_cand * ids.shape[1]))
    return rows


@torch.no_grad()
def measure_weights(name: str, base: nn.Module, ids: torch.Tensor, drifts: Sequence[float] = (0.0,),
                    drift_kind: str = "perturb", seed: int = 0, hungarian_limit: int = 8192) -> Rows:
    """Key recovery by weight alignment per drift, and whether the recovered keys decode traffic."""
    rows = []
    base_sd = base.state_dict()
    public = ModelDeveloper(base, seed=seed).data_owner()
    table = public_table(public)
    by_position = multiset.adds_positions(public.embed)
    for size in drifts:
        tuned = _drifted(base, drift_kind, size, ids, seed)
        developer = ModelDeveloper(tuned, seed=seed)
        cloud = developer.cloud_model()
        family = developer.family
        common = dict(drift_kind=drift_kind, drift=size,
                      weight_change=drift.relative_weight_change(base, tuned))
        with timer() as t:
            cloud_sd = cloud.state_dict()
            pi = weights.recover_pi(family, cloud_sd, base_sd)
            recovered = weights.recover_layer_keys(family, cloud_sd, base_sd, pi, hungarian_limit)
        fractions = weights.key_recovery_fractions(recovered, pi, developer.keys)
        for key, value in fractions.items():
            rows.append(row("weight_alignment", name, family.name, weights.ASSUMPTION, "key_recovered", value,
                            "fraction", 0, t[0], key=key, **common))
        layer_keys = [v for k, v in fractions.items() if k.startswith("layers.")]
        rows.append(row("weight_alignment", name, family.name, weights.ASSUMPTION,
                        "layer_keys_mean_recovered",
                        sum(layer_keys) / max(1, len(layer_keys)), "fraction", 0, t[0], **common))
        device = developer.data_owner()
        wire = device.encode(ids)
        plain_guess = torch.empty_like(wire)
        plain_guess[..., pi] = wire
        rows.append(row("weight_alignment", name, family.name, DECODES,
                        "token_recovery_with_recovered_pi",
                        _rate(multiset.recover_with_position_tables(plain_guess, public.embed, table.shape[0])
                              if by_position else baselines.nearest_tokens(plain_guess, table), ids),
                        "fraction", ids.shape[0], t[0],
                        **common))
        if "pi_c" in recovered:
            logits = cloud(inputs_embeds=wire).logits.argmax(-1)
            truth = tuned(input_ids=ids).logits.argmax(-1)
            rows.append(row("weight_alignment", name, family.name, DECODES,
                            "argmax_decoded_with_recovered_pi_c", _rate(recovered["pi_c"][0][logits], truth),
                            "fraction", ids.shape[0], t[0], **common))
    return rows


@torch.no_grad()
def measure_kpa(name: str, model: nn.Module, ids: torch.Tensor, ns: Sequence[int],
                sigma_rel: float = 0.0, seed: int = 0) -> Rows:
    """pi recovered from n known (embedding, wire) rows, optionally under the noise defence."""
    developer = ModelDeveloper(model, seed=seed)
    clean = developer.data_owner()
    rms = float(public_table(clean).float().pow(2).mean().sqrt())
    device = developer.data_owner(noise_sigma=sigma_rel * rms,
                                  noise_generator=torch.Generator().manual_seed(seed))
    plain = clean.embed(ids).reshape(-1, clean.hidden_size)
    wire = device.encode(ids).reshape(-1, clean.hidden_size)
    rows = []
    for n in ns:
        if n > plain.shape[0]:
            raise ValueError(f"n={n} pairs asked but only {plain.shape[0]} token rows given; pass more ids")
        with timer() as t:
            pi = kpa.assignment_permutation(plain[:n], wire[:n])
        rows.append(row("known_plaintext", name, developer.family.name, kpa.ASSUMPTION, "pi_recovered",
                        float((pi == clean.keys["pi"]).float().mean()), "fraction", n, t[0], n=n,
                        d=clean.hidden_size, sigma_rel=sigma_rel))
    return rows


@torch.no_grad()
def measure_frequency(name: str, base: nn.Module, user_chunks: Sequence[torch.Tensor],
                      reference_chunks: Sequence[torch.Tensor], corpus: str, seed: int = 0) -> Rows:
    """Frequency analysis of permuted argmax indices over the users' chunks against public text."""
    developer = ModelDeveloper(base, seed=seed)
    cloud = developer.cloud_model()
    device = developer.data_owner()
    with timer() as t:
        observed = frequency.argmax_indices(cloud, [device.encode(c) for c in user_chunks],
                                            input_name="inputs_embeds")
        reference = frequency.argmax_indices(base, reference_chunks)
        guess = frequency.frequency_mapping(observed, reference, device.keys["pi_c"].numel())
    result = frequency.frequency_recovery(observed, device.keys["pi_c"][observed], guess)
    common = dict(corpus=corpus, n_positions=int(observed.numel()),
                  reference_positions=int(reference.numel()))
    return [row("output_frequency", name, developer.family.name, frequency.ASSUMPTION, metric, value,
                "count" if metric == "distinct_indices" else "fraction", len(user_chunks), t[0], **common)
            for metric, value in result.items()]


@torch.no_grad()
def measure_moe(name: str, base: nn.Module, ids: torch.Tensor, seed: int = 0) -> Rows:
    """Token recovery from the cloud's routing (router logits, and expert choices only)."""
    developer = ModelDeveloper(base, seed=seed)
    cloud = developer.cloud_model()
    observed = moe.router_logits(cloud, inputs_embeds=developer.data_owner().encode(ids[:1]))[0]
    top_k = base.config.num_experts_per_tok
    rows = []
    for use in ("logits", "choices"):
        with timer() as t:
            guess = moe.routing_token_recovery(observed, base, top_k, use)
        rows.append(row("moe_routing", name, developer.family.name, moe.ASSUMPTION, "token_recovery",
                        _rate(guess, ids[0]), "fraction", 1, t[0], observed=use,
                        experts=base.config.num_local_experts, top_k=top_k, n_tokens=ids.shape[1]))
    return rows


@torch.no_grad()
def measure_theft(name: str, model: nn.Module, ids: torch.Tensor, seed: int = 0) -> Rows:
    """Equivalence of (cloud weights + one user's package) with the original model."""
    developer = ModelDeveloper(model, seed=seed)
    with timer() as t:
        result = theft.functional_theft(model, developer.cloud_model(), developer.data_owner(), ids)
    return [row("functional_theft", name, developer.family.name, theft.ASSUMPTION, metric, value,
                "abs" if metric == "max_abs_error" else "fraction", ids.shape[0], t[0])
            for metric, value in result.items()]


@torch.no_grad()
def measure_projection(name: str, model: nn.Module, ids: torch.Tensor, ns: Sequence[int],
                       seed: int = 0) -> Rows:
    """Random projection baseline: multiset matching (ciphertext only) and least-squares KPA vs n."""
    table = public_table(ModelDeveloper(model, seed=seed).data_owner())
    d = table.shape[1]
    r = baselines.gaussian_projection(d, d, seed)
    plain = table[ids]
    wire = plain @ r
    family = ModelDeveloper(model, seed=seed).family.name
    with timer() as t:
        guess = multiset.fingerprint_token_recovery(wire, table)
    rows = [row("projection_multiset", name, family, baselines.PROJECTION_MULTISET_ASSUMPTION,
                "token_recovery",
                _rate(guess, ids), "fraction", ids.shape[0], t[0], d=d, baseline="random_projection")]
    gen = torch.Generator().manual_seed(seed)
    for n in ns:
        known = table[torch.randint(0, table.shape[0], (n,), generator=gen)]
        with timer() as t:
            r_hat = baselines.projection_known_plaintext(known, known @ r)
            guess = baselines.projection_token_recovery(wire, r_hat, table)
        rows.append(row("projection_known_plaintext", name, family, baselines.PROJECTION_KPA_ASSUMPTION,
                        "token_recovery", _rate(guess, ids), "fraction", n, t[0], n=n, d=d,
                        baseline="random_projection"))
    return rows


@torch.no_grad()
def measure_split(name: str, base: nn.Module, ids: torch.Tensor, layers: Sequence[int],
                  candidates: torch.Tensor | None = None) -> Rows:
    """Model split baseline: invert the device's clear layer-l activations by vocabulary matching."""
    family = ModelDeveloper(base, seed=0).family.name
    n_cand = int((candidates if candidates is not None else base.get_input_embeddings().weight).shape[0])
    rows = []
    for layer in layers:
        activations = hidden.states_at(base, layer, input_ids=ids[:1])[0]
        with timer() as t:
            guess = baselines.split_token_recovery(activations, base, layer, candidates)
        rows.append(row("split_inversion", name, family, baselines.SPLIT_ASSUMPTION, "token_recovery",
                        _rate(guess, ids[0]), "fraction", 1, t[0], layer=layer, candidates=n_cand,
                        baseline="model_split", n_tokens=ids.shape[1]))
    return rows


def measure_speculation(name: str, base: nn.Module, tokenizer: Any, tasks: dict[str, Sequence[tuple[str, str]]],
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
