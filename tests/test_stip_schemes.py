"""Each scheme arm's exactness and each arm under a cheap attack, at toy size (stip/schemes.py, issue 27)."""
from __future__ import annotations

import pytest
import torch
import transformers

from stip.attacks import multiset
from stip.attacks.corpus import TokenBatch
from stip.attacks.hidden import states_at
from stip.attacks.matrix import MatrixCfg, attack_arm, build_arms, candidate_set, scores
from stip.attacks.rotation import gram_token_recovery, known_plaintext_rotation, procrustes_rotation
from stip.errors import StipInputError
from stip.schemes import fresh_key_arms, random_orthogonal, rotate_model, rotation_arm, stip_arm

VOCAB = 103


@pytest.fixture(scope="module")
def llama() -> transformers.LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=112, num_hidden_layers=2, num_attention_heads=8,
                                   num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=128)
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # non-trivial norm scales, so folding them is exercised
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.3 * torch.randn(p.shape))
    return model


@pytest.fixture(scope="module")
def tokens() -> TokenBatch:
    gen = torch.Generator().manual_seed(1)
    return TokenBatch.from_sequences([torch.randint(2, VOCAB, (n,), generator=gen) for n in (10, 6, 12)], pad_id=0)


@pytest.mark.parametrize("make", [lambda m: stip_arm(m, 0), lambda m: rotation_arm(m, 0),
                                  lambda m: rotation_arm(m, 0, permute_outputs=False),
                                  lambda m: fresh_key_arms(m, [1, 2])[1]],
                         ids=["stip", "rotation", "rotation_plain_vocab", "fresh_keys"])
def test_exact_arms_give_plaintext_logits(llama, tokens, make):
    arm = make(llama)
    ref = llama(input_ids=tokens.ids, attention_mask=tokens.attention_mask).logits
    out = arm.logits(tokens.ids, tokens.attention_mask)
    keep = tokens.mask
    assert arm.exact
    torch.testing.assert_close(out[keep], ref[keep], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("make", [lambda m: stip_arm(m, 0, noise_sigma=0.05), lambda m: rotation_arm(m, 0, 0.05)],
                         ids=["stip_noise", "rotation_noise"])
def test_noise_arms_do_not_claim_exactness(llama, tokens, make):
    arm = make(llama)
    ref = llama(input_ids=tokens.ids, attention_mask=tokens.attention_mask).logits
    assert not arm.exact
    assert (arm.logits(tokens.ids, tokens.attention_mask) - ref).abs().max() > 1e-4


def test_rotation_cloud_hides_norm_scales_and_embeddings(llama):
    arm = rotation_arm(llama, 0)
    assert torch.all(arm.cloud.model.norm.weight == 1)
    assert torch.all(arm.cloud.model.layers[0].input_layernorm.weight == 1)
    assert torch.count_nonzero(arm.cloud.model.embed_tokens.weight) == 0
    q = arm.secret["Q"]
    torch.testing.assert_close(q @ q.T, torch.eye(q.shape[0], dtype=q.dtype), atol=1e-10, rtol=0)


def test_rotation_refuses_layernorm_models():
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=50))
    with pytest.raises(StipInputError, match="LayerNorm"):
        rotate_model(gpt2, random_orthogonal(32, torch.Generator().manual_seed(0)))


def test_scores_ignore_pads_and_count_distinct_tokens():
    truth = torch.tensor([[5, 6, 5, 0], [7, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    guess = torch.tensor([[5, 6, 9, 3], [7, 1, 1, 1]])  # pads wrong, one of two 5s wrong
    got = scores(guess, truth, mask)
    assert got["token_recovery"] == pytest.approx(3 / 4)
    assert got["distinct_token_recovery"] == pytest.approx((1 / 2 + 1 + 1) / 3)  # the one definition (scoring.py)
    assert got["n_real_tokens"] == 4 and got["n_distinct_tokens"] == 3


def test_multiset_breaks_stip_not_rotation(llama, tokens):
    table = llama.get_input_embeddings().weight.detach()
    for arm, low, high in ((stip_arm(llama, 0), 1.0, 1.0), (rotation_arm(llama, 0), 0.0, 0.2)):
        guess = multiset.fingerprint_token_recovery(arm.encode(tokens.ids), table)
        assert low <= scores(guess, tokens.ids, tokens.mask)["token_recovery"] <= high, arm.name


def test_procrustes_recovers_the_rotation_from_weights(llama):
    arm = rotation_arm(llama, 3)
    torch.testing.assert_close(procrustes_rotation(arm.cloud, llama), arm.secret["Q"], atol=1e-6, rtol=0)


def test_known_plaintext_rotation_needs_d_rows(llama):
    arm = rotation_arm(llama, 3)
    ids = torch.arange(2, 2 + 80)[None]
    full = known_plaintext_rotation(arm.embed(ids)[0], arm.encode(ids)[0])
    torch.testing.assert_close(full, arm.secret["Q"], atol=1e-5, rtol=0)
    few = known_plaintext_rotation(arm.embed(ids[:, :8])[0], arm.encode(ids[:, :8])[0])
    assert (few - arm.secret["Q"]).norm() > 1.0


def test_gram_attack_reads_a_rotated_hidden_state(llama, tokens):
    arm = rotation_arm(llama, 0)
    seq = tokens.sequences[0][:6]
    observed = states_at(arm.cloud, 1, inputs_embeds=arm.encode(seq[None]))[0]
    guess = gram_token_recovery(observed, llama, 1, candidate_set(tokens, VOCAB, 32, 0))
    assert torch.equal(guess, seq)


def test_fresh_keys_stop_cross_session_known_plaintext_only(llama, tokens):
    cfg = MatrixCfg(candidates=16, kpa_ns=[8], hidden_sequences=1, hidden_tokens=4)
    arms = build_arms(llama, cfg, ["stip", "stip_fresh_keys"])
    cands = candidate_set(tokens, VOCAB, cfg.candidates, 0)

    def value(rows, attack):
        return next(r["value"] for r in rows if r["attack"] == attack and r["metric"] == "token_recovery")

    same = attack_arm("llama", arms["stip"][0], arms["stip"][0], llama, tokens, cfg, cands)
    fresh = attack_arm("llama", arms["stip_fresh_keys"][1], arms["stip_fresh_keys"][0], llama, tokens, cfg, cands)
    assert value(same, "known_plaintext_cross_session") == 1.0
    assert value(fresh, "known_plaintext_cross_session") < 0.3
    assert value(fresh, "embedding_multiset") == 1.0  # a single session still falls without any key
    assert value(fresh, "weight_alignment_decode") == 1.0
    assert {r["scheme"] for r in fresh} == {"stip_fresh_keys"}
