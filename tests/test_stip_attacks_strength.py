"""Issue 27's attacks at toy size: full-vocabulary matching, the learned inverter, the logit-profile output
attack; every one scored on real positions only (a pad row recovered or not changes nothing)."""
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import stip
from stip.attacks import corpus, frequency, hidden, inverter, measure

from helpers.stip_models import tiny_llama

GEN = torch.Generator().manual_seed(0)


def _values(rows, metric, **match):
    return [r["value"] for r in rows if r["metric"] == metric and all(r.get(k) == v for k, v in match.items())]


def test_full_vocabulary_matching_scores_real_positions_and_counts_its_forwards():
    model = tiny_llama()
    batch = corpus.random_batch(model.config.vocab_size, 2, 4, seed=3, pad_id=0, min_len=2)
    rows = measure.measure_hidden("tiny", model, batch.ids, layers=(1,), mask=batch.mask)
    token = next(r for r in rows if r["metric"] == "token_recovery")
    assert token["value"] == 1.0 and token["candidates"] == model.config.vocab_size
    assert token["candidate_set"] == "full vocabulary" and token["n_real_tokens"] == batch.n_real
    assert token["base_forwards"] == batch.n_real * model.config.vocab_size  # full scan, no early exit
    fast = measure.measure_hidden("tiny", model, batch.ids, layers=(1,), mask=batch.mask, order="logits",
                                  tolerance=1e-3, batch=8)
    assert fast[0]["value"] == 1.0 and fast[0]["base_forwards"] < token["base_forwards"]


def test_pads_change_no_rate_whatever_the_pad_rows_hold():
    model = tiny_llama()
    batch = corpus.random_batch(model.config.vocab_size, 3, 8, seed=4, pad_id=0, min_len=3)
    other = batch.ids.clone()
    other[~batch.mask] = 7  # a pad token the attack would decode differently
    a = measure.measure_multiset("tiny", model, batch.ids, mask=batch.mask)
    b = measure.measure_multiset("tiny", model, other, mask=batch.mask)
    assert [r["value"] for r in a] == [r["value"] for r in b] and a[0]["n_pad_positions"] > 0
    unmasked = measure.measure_multiset("tiny", model, batch.ids)
    assert unmasked[0]["n_real_tokens"] == batch.ids.numel() > a[0]["n_real_tokens"]


def test_feature_alignment_undoes_a_permutation_of_distinct_feature_distributions():
    states = torch.randn(2000, 16, generator=GEN) * torch.arange(1, 17) + torch.arange(16) * 3.0
    pi = torch.randperm(16, generator=GEN)
    assert torch.equal(inverter.align_features(states[:1000, pi], states[1000:]), pi)


def test_learned_inverter_routes_recover_tokens_and_the_sorted_route_needs_no_key():
    model = tiny_llama()
    vocab = model.config.vocab_size
    users = corpus.random_batch(vocab, 4, 12, seed=1, pad_id=0)
    public = corpus.random_batch(vocab, 60, 12, seed=2, pad_id=0)
    rows = measure.measure_inverter("tiny", model, users.ids, public.ids, layers=(0, 1), mask=users.mask,
                                    public_mask=public.mask, features=("sorted", "weights"))
    assert _values(rows, "token_recovery", layer=0, features="sorted") == [1.0]  # layer 0 = the embeddings
    assert _values(rows, "pi_recovered", features="weights") == [1.0, 1.0]
    assert _values(rows, "token_recovery", layer=1, features="weights")[0] > 0.5
    assert all(r["train_tokens"] == public.n_real and r["n_real_tokens"] == users.n_real for r in rows
               if r["metric"] == "token_recovery")
    with pytest.raises(ValueError, match="features"):
        inverter.LearnedInverter(features="magic")


class _Logits(torch.nn.Module):
    """A stand-in model whose 'forward' returns the logits it is given (in place of input_ids)."""

    def forward(self, input_ids):
        return type("Out", (), {"logits": input_ids})()


def _traffic(means, scales, n, gen):
    return [means + scales * torch.randn(1, 64, means.numel(), generator=gen) for _ in range(n)]


def test_logit_profiles_survive_rank_swaps_that_break_rank_for_rank():
    gen = torch.Generator().manual_seed(0)
    vocab = 40  # tokens differ in their logits' offset and spread, as a trained head's rows do
    means = torch.linspace(-3.0, 3.0, vocab)[torch.randperm(vocab, generator=gen)]
    scales = torch.linspace(0.5, 3.0, vocab)[torch.randperm(vocab, generator=gen)]
    pi_c = torch.randperm(vocab, generator=gen)
    users = [chunk[..., pi_c] for chunk in _traffic(means, scales, 16, gen)]  # the cloud's permuted logits
    public = _traffic(means, scales, 16, gen)
    seen = frequency.logit_profiles(_Logits(), users)
    ref = frequency.logit_profiles(_Logits(), public)
    guess = frequency.profile_mapping(seen, ref)
    assert (guess == pi_c).float().mean() > 0.6  # every index, argmax or not (chance: 1/40)
    observed = torch.cat([c.argmax(-1).reshape(-1) for c in users])
    reference = torch.cat([c.argmax(-1).reshape(-1) for c in public])
    rank = frequency.frequency_recovery(observed, pi_c[observed],
                                        frequency.frequency_mapping(observed, reference, vocab))
    profile = frequency.frequency_recovery(observed, pi_c[observed], guess)
    assert profile["positions_recovered"] > rank["positions_recovered"] + 0.3, (rank, profile)


def test_measured_frequency_rows_name_both_methods():
    model = tiny_llama()
    vocab = model.config.vocab_size
    chunks = [torch.randint(2, vocab, (1, 8), generator=GEN) for _ in range(2)]
    rows = measure.measure_frequency("tiny", model, chunks, chunks, corpus="random ids")
    assert {(r["attack"], r["method"]) for r in rows} == {("output_frequency", "rank"),
                                                          ("output_logit_profile", "logit_profile")}
    with pytest.raises(ValueError, match="method"):
        measure.measure_frequency("tiny", model, chunks, chunks, corpus="x", methods=("votes",))


def test_weight_alignment_rows_leave_forced_keys_out_and_state_the_key_space():
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=1, vocab_size=50)).eval()
    ids = torch.randint(1, 50, (2, 6), generator=GEN)
    rows = measure.measure_weights("tiny", model, ids)
    keys = {r["key"] for r in rows if r["metric"] == "key_recovered"}
    assert "layers.0.pi_i1_k" not in keys and "layers.0.pi_i1_q" in keys and "pi" in keys
    summary = next(r for r in rows if r["metric"] == "secret_keys_mean_recovered")
    assert summary["forced_keys"] == ["layers.0.pi_i1_k", "layers.1.pi_i1_k"]
    bits = next(r for r in rows if r["metric"] == "effective_key_space_bits")
    assert bits["unit"] == "bits" and bits["value"] == pytest.approx(
        stip.attacks.scoring.effective_key_space_bits(stip.ModelDeveloper(model, seed=0).dims, 50))


def test_vocabulary_matching_rejects_bad_arguments():
    with pytest.raises(ValueError, match="order"):
        hidden.vocabulary_matching(torch.zeros(1, 64), tiny_llama(), 1, order="random")
    with pytest.raises(ValueError, match="tolerance"):
        hidden.vocabulary_matching(torch.zeros(1, 64), tiny_llama(), 1, tolerance=-1)
    assert frequency.PROFILE_FEATURES[-1] == "argmax_share"
