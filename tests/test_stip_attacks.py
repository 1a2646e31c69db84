"""The attacks of stip.attacks at toy size: each succeeds where it must and fails where it must."""
import pytest
import torch
from transformers import AutoModel, AutoTokenizer, ViTConfig, ViTForImageClassification

import stip
from protocols.models import minilm_path
from stip.attacks import baselines, frequency, hidden, kpa, measure, moe, multiset, weights
from stip.attacks.drift import finetuned_copy, perturbed_copy, relative_weight_change
from stip.attacks.frontier import noise_frontier
from stip.attacks.rows import ROW_FIELDS
from stip.attacks.theft import functional_theft

from helpers.stip_models import (
    randomise_vectors,
    sample_inputs,
    tiny_bert,
    tiny_gpt2,
    tiny_llama,
    tiny_mixtral,
    tiny_qwen2,
    tiny_roberta,
    tiny_vit,
)

GEN = torch.Generator().manual_seed(0)


def _ids(model, batch=2, seq=10, seed=0):
    vocab = model.get_input_embeddings().weight.shape[0]
    return torch.randint(2, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))


def test_known_plaintext_pair_recovers_pi():
    model = tiny_gpt2()
    device = stip.ModelDeveloper(model, seed=0).data_owner()
    ids = sample_inputs(model, batch=1, seq=4)["input_ids"]
    plain = device.embed(ids)
    known = kpa.known_plaintext_permutation(plain, device.permute(plain))
    assert torch.equal(known, device.keys["pi"])
    assert torch.equal(kpa.assignment_permutation(plain[:, :1], device.permute(plain)[:, :1]), known)


def test_known_plaintext_under_noise_needs_more_pairs():
    rows = measure.measure_kpa("tiny", tiny_llama(), _ids(tiny_llama(), 2, 10), ns=(1, 16), sigma_rel=0.5)
    by_n = {r["n"]: r["value"] for r in rows}
    assert by_n[1] < 0.5 and by_n[16] == 1.0, by_n


@pytest.mark.parametrize("make", [tiny_gpt2, tiny_bert, tiny_llama, tiny_mixtral, tiny_qwen2, tiny_roberta])
def test_multiset_matching_recovers_every_token_of_untouched_embeddings(make):
    model = make()
    ids = _ids(model)
    rows = measure.measure_multiset("tiny", model, ids)
    assert rows[0]["value"] == 1.0 and set(ROW_FIELDS) <= set(rows[0])


def test_multiset_matching_fails_under_large_fresh_noise_and_on_a_projection():
    model = tiny_llama()
    ids = _ids(model)
    table = model.get_input_embeddings().weight.detach()
    rms = float(table.pow(2).mean().sqrt())
    device = stip.ModelDeveloper(model, seed=0).data_owner(noise_sigma=2 * rms,
                                                           noise_generator=torch.Generator().manual_seed(0))
    assert (multiset.fingerprint_token_recovery(device.encode(ids), table) == ids).float().mean() < 0.2
    projected = table[ids] @ baselines.gaussian_projection(64, 64, seed=0)
    assert (multiset.fingerprint_token_recovery(projected, table) == ids).float().mean() < 0.3


def test_vit_cls_row_gives_pi_and_the_patch_projection_gives_pixels():
    cfg = ViTConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=4, intermediate_size=96,
                    image_size=16, patch_size=4, num_labels=3)  # 3*4*4 = 48 <= 64: an invertible projection
    torch.manual_seed(0)
    vit = randomise_vectors(ViTForImageClassification(cfg))
    with torch.no_grad():
        vit.vit.embeddings.cls_token.normal_()
        vit.vit.embeddings.position_embeddings.normal_()
    rows = measure.measure_vit_patches("tiny", vit, torch.randn(1, 3, 16, 16, generator=GEN))
    values = {r["metric"]: r["value"] for r in rows}
    assert values["pi_recovered"] == 1.0 and values["pixel_relative_error"] < 1e-3, values
    coarse = {r["metric"]: r["value"]
              for r in measure.measure_vit_patches("tiny", tiny_vit(), torch.randn(1, 3, 32, 32))}
    assert coarse["pi_recovered"] == 1.0  # 192 pixels per 64 features: pixels only partly recovered


def test_hidden_state_matching_recovers_tokens_at_a_hidden_layer_and_fails_with_a_foreign_base():
    model = tiny_llama()
    ids = _ids(model, 1, 8)
    developer = stip.ModelDeveloper(model, seed=0)
    wire = developer.data_owner().encode(ids)
    observed = hidden.states_at(developer.cloud_model(), 1, inputs_embeds=wire)[0]
    assert torch.equal(hidden.hidden_state_token_recovery(observed, model, 1), ids[0])
    foreign = tiny_llama(seed=5)
    assert (hidden.hidden_state_token_recovery(observed, foreign, 1) == ids[0]).float().mean() < 0.3


def test_weight_alignment_recovers_every_key_of_a_drifted_model_and_decodes_traffic():
    base = tiny_llama()
    rows = measure.measure_weights("tiny", base, _ids(base), drifts=(0.1,))
    values = {(r["metric"], r.get("key")): r["value"] for r in rows if r["unit"] == "fraction"}
    assert all(v == 1.0 for v in values.values()), values
    assert ("key_recovered", "layers.1.pi_i3") in values and ("key_recovered", "pi_c") in values
    bits = next(r for r in rows if r["metric"] == "effective_key_space_bits")
    assert bits["unit"] == "bits" and bits["value"] > 1000 and bits["forced_keys"] == []


def test_weight_alignment_scores_a_pooled_head_per_sequence_with_padded_inputs():
    # bench.privacy attacks BERT (sequence classification: one argmax per sequence) on padded rows; the
    # per-position mask must not be applied to its per-sequence outputs
    base = tiny_bert()
    ids = _ids(base, batch=3, seq=8)
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[1, 5:] = False
    rows = measure.measure_weights("tiny", base, ids, mask=mask)
    pooled = [r for r in rows if r["metric"] == "argmax_decoded_with_recovered_pi_c"]
    assert len(pooled) == 1 and pooled[0]["value"] == 1.0


def test_weight_alignment_against_an_unrelated_base_recovers_little():
    developer = stip.ModelDeveloper(tiny_llama(), seed=0)
    foreign = tiny_llama(seed=7).state_dict()
    pi = weights.recover_pi(developer.family, developer.cloud_model().state_dict(), foreign)
    assert (pi == developer.keys["pi"]).float().mean() < 0.2


def test_frequency_analysis_maps_indices_when_traffic_follows_public_frequencies():
    zipf = torch.tensor([1.0 / (r + 1) for r in range(50)])
    reference = torch.multinomial(zipf, 20000, replacement=True, generator=GEN)
    tokens = torch.multinomial(zipf, 20000, replacement=True, generator=GEN)
    pi_c = torch.randperm(50, generator=GEN)
    observed = torch.argsort(pi_c)[tokens]  # the permuted index j with pi_c[j] = token
    guess = frequency.frequency_mapping(observed, reference, 50)
    result = frequency.frequency_recovery(observed, tokens, guess)
    assert result["positions_recovered"] > 0.5
    uniform = torch.randint(0, 50, (20000,), generator=GEN)
    flat = frequency.frequency_recovery(observed, tokens, frequency.frequency_mapping(observed, uniform, 50))
    assert flat["positions_recovered"] < result["positions_recovered"] / 2


def test_moe_router_logits_give_the_tokens_away():
    model = tiny_mixtral()
    rows = {r["observed"]: r["value"] for r in measure.measure_moe("tiny", model, _ids(model, 1, 8))}
    assert rows["logits"] == 1.0 and rows["choices"] < rows["logits"], rows


def test_moe_routing_attack_rejects_an_unknown_mode():
    with pytest.raises(ValueError, match="logits"):
        moe.routing_token_recovery(torch.zeros(1, 2, 4), tiny_mixtral(), 2, use="votes")


def test_functional_theft_is_exact():
    model = tiny_llama()
    developer = stip.ModelDeveloper(model, seed=0)
    result = functional_theft(model, developer.cloud_model(), developer.data_owner(), _ids(model))
    assert result["max_abs_error"] < 1e-4 and result["top1_agreement"] == 1.0


def test_random_projection_falls_to_known_plaintext_once_n_reaches_d():
    rows = {r["n"]: r["value"] for r in measure.measure_projection("tiny", tiny_llama(), _ids(tiny_llama()),
                                                                     ns=(16, 64)) if "n" in r}
    assert rows[16] < 0.5 and rows[64] == 1.0, rows


def test_model_split_activations_are_inverted_by_vocabulary_matching():
    rows = measure.measure_split("tiny", tiny_llama(), _ids(tiny_llama(), 1, 8), layers=(1,))
    assert rows[0]["value"] == 1.0


def test_noise_defence_is_off_by_default_seeded_and_checked():
    model = tiny_llama()
    developer = stip.ModelDeveloper(model, seed=0)
    ids = _ids(model)
    plain = developer.data_owner()
    assert torch.equal(plain.encode(ids), plain.permute(plain.embed(ids)))
    noisy = [developer.data_owner(noise_sigma=0.1, noise_generator=torch.Generator().manual_seed(3))
             for _ in "ab"]
    first, second = (d.request(ids)["inputs_embeds"] for d in noisy)
    assert torch.equal(first, second) and not torch.equal(first, plain.encode(ids))
    assert torch.allclose((first - plain.encode(ids)).std(), torch.tensor(0.1), rtol=0.2)
    with pytest.raises(stip.StipInputError, match="noise_sigma"):
        developer.data_owner(noise_sigma=-1.0)


def test_noise_stops_multiset_matching_but_not_decoding_with_the_pi_from_the_weights():
    rows = noise_frontier("tiny", tiny_llama(), _ids(tiny_llama()), sigmas_rel=(0.0, 1.0))
    value = {(r["attack"], r["sigma_rel"]): r["value"] for r in rows}
    assert value[("noise_defence", 0.0)] == 1.0 and value[("multiset", 0.0)] == 1.0
    assert value[("multiset", 1.0)] < 0.2
    assert value[("weight_alignment_nearest", 1.0)] == 1.0
    assert all(set(ROW_FIELDS) <= set(r) for r in rows)


def test_drift_sizes_are_checked():
    with pytest.raises(ValueError, match="relative drift"):
        perturbed_copy(tiny_llama(), -0.1)


def test_value_multiset_fingerprint_recovers_real_minilm_tokens():
    """Ciphertext-only on real weights: the cloud holds only what crossed the wire + public table."""
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    model = AutoModel.from_pretrained(minilm_path()).eval()
    device = stip.ModelDeveloper(model, seed=0).data_owner()
    ids = tokenizer(["The quick brown fox jumps over the lazy dog.", "My password is hunter2."],
                    padding=True, return_tensors="pt")["input_ids"]
    wire = device.encode(ids)
    guesses = multiset.fingerprint_token_recovery(wire, model.get_input_embeddings().weight.detach())
    rate = (guesses == ids).float().mean().item()
    assert rate == 1.0, f"recovered {rate:.0%} of tokens"


def test_finetuned_copy_drifts_even_under_no_grad():
    model = tiny_llama()
    with torch.no_grad():
        tuned = finetuned_copy(model, _ids(model), steps=2, lr=1e-3)
    assert relative_weight_change(model, tuned) > 0 and relative_weight_change(model, model) == 0
