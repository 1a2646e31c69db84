"""Honest scoring (issue 27): pads never count, distinct tokens weigh once, forced keys are not secret."""
import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

import stip
from protocols.models import minilm_path
from protocols.privacy import dcor_independent, dcor_per_vector
from stip.attacks import corpus, scoring


def one_kv_head_llama():
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=1, vocab_size=50)).eval()


def test_pads_change_nothing_whether_recovered_or_not():
    truth = torch.tensor([[5, 6, 5, 0, 0], [7, 5, 0, 0, 0]])
    mask = truth != 0
    guess = truth.clone()
    guess[0, 2] = 9  # one real miss
    with_pads_right = scoring.token_scores(guess, truth, mask)
    guess[~mask] = 3  # every pad wrong
    with_pads_wrong = scoring.token_scores(guess, truth, mask)
    assert with_pads_right == with_pads_wrong
    assert with_pads_right["token_recovery"] == pytest.approx(4 / 5)
    assert with_pads_right["n_real_tokens"] == 5 and with_pads_right["n_distinct_tokens"] == 3


def test_distinct_token_rate_weighs_each_token_once():
    truth = torch.tensor([1, 1, 1, 1, 2, 3])
    guess = torch.tensor([1, 1, 1, 1, 0, 0])  # the frequent token only
    s = scoring.token_scores(guess, truth)
    assert s["token_recovery"] == pytest.approx(4 / 6)
    assert s["distinct_token_recovery"] == pytest.approx(1 / 3)


def test_token_scores_reject_bad_shapes_and_empty_masks():
    with pytest.raises(ValueError, match="differ"):
        scoring.token_scores(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="no real positions"):
        scoring.token_scores(torch.zeros(3), torch.zeros(3), torch.zeros(3, dtype=torch.bool))


def test_key_space_marks_one_kv_head_rope_keys_forced_and_they_are_identity():
    model = one_kv_head_llama()
    developer = stip.ModelDeveloper(model, seed=3)
    dims = developer.family.dims(model.config)
    out_dim = model.config.vocab_size
    bits = scoring.key_space_bits(dims, out_dim)
    assert set(bits) == set(developer.keys.tensors)  # every key the developer draws, no other
    forced = [k for k, b in bits.items() if b == 0]
    assert forced == [f"layers.{i}.pi_i1_k" for i in range(dims.n_layers)]
    for k in forced:
        assert torch.equal(developer.keys[k], torch.arange(developer.keys[k].numel()))
    # a recovery that gets only the forced keys right scores nothing on the secret keys
    recovered = {k: v.clone() if k in forced else torch.roll(v, 1) for k, v in developer.keys.tensors.items()}
    s = scoring.key_scores(recovered, developer.keys, dims, out_dim)
    assert s["forced"] == forced and s["secret_keys_mean_recovered"] == 0.0 and s["key_space_bits_recovered"] == 0
    s = scoring.key_scores(dict(developer.keys.tensors), developer.keys, dims, out_dim)
    assert s["secret_keys_mean_recovered"] == 1.0 and s["key_space_bits_recovered"] == pytest.approx(1.0)


def test_effective_key_space_counts_each_draw_once():
    dims = stip.families.Dims(hidden=4, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=2, ffn=3, rope=True)
    # pi 4!, pi_c 5!, layer: kv order 1!, within-v 2!, q-in-group 2!, ffn 3!
    expected = scoring.log2_factorial(4) + scoring.log2_factorial(5) + 1 + 1 + scoring.log2_factorial(3)
    assert scoring.effective_key_space_bits(dims, 5) == pytest.approx(expected)


def test_real_token_batch_holds_several_texts_pads_and_a_mask():
    tok = AutoTokenizer.from_pretrained(minilm_path())
    batch = corpus.token_batch(tok, corpus.user_texts(n_packages=4), max_tokens=400, seq_len=24, per_text=40)
    d = batch.describe()
    assert 300 <= d["n_real_tokens"] <= 400 and d["n_texts"] >= 8 and d["n_pad_positions"] > 0
    assert torch.all(batch.ids[~batch.mask] == batch.pad_id)
    assert batch.rows(slice(0, 2)).ids.shape == (2, 24)
    public = {name for name, _ in corpus.public_texts()}
    assert not public & {name for name, _ in corpus.user_texts(n_packages=100)}


def test_random_batch_never_uses_the_pad_id_at_real_positions():
    batch = corpus.random_batch(vocab=10, n_rows=20, seq_len=8, seed=1, pad_id=4)
    assert not torch.any(batch.real == 4) and batch.real.max() < 10 and (~batch.mask).any()


def test_batch_from_sequences_pads_keeps_sources_and_gives_the_sequences_back():
    seqs = [torch.tensor([5, 6, 7]), torch.tensor([], dtype=torch.long), torch.tensor([[8, 0]])]
    batch = corpus.TokenBatch.from_sequences(seqs, pad_id=3, sources=["a", "empty", "b"], corpus="toy")
    assert batch.ids.tolist() == [[5, 6, 7], [8, 0, 3]] and batch.mask.dtype == torch.bool
    assert batch.sources == ("a", "b") and batch.corpus == "toy" and batch.pad_id == 3  # the empty one is dropped
    assert [s.tolist() for s in batch.sequences] == [[5, 6, 7], [8, 0]]  # a real 0 is kept; only pads go
    assert batch.attention_mask.tolist() == [[1, 1, 1], [1, 1, 0]] and batch.n_real == 5
    assert corpus.TokenBatch.from_sequences(seqs[:1], pad_id=0).sources == ("sequence:0",)
    with pytest.raises(ValueError, match="2 sources for 3 sequences"):
        corpus.TokenBatch.from_sequences(seqs, pad_id=0, sources=["a", "b"])
    with pytest.raises(ValueError, match="no real tokens"):
        corpus.TokenBatch.from_sequences([torch.tensor([], dtype=torch.long)], pad_id=0)
    random = corpus.random_batch(vocab=50, n_rows=4, seq_len=9, seed=2)
    again = corpus.TokenBatch.from_sequences(random.sequences, random.pad_id, random.sources)
    assert torch.equal(again.real, random.real) and torch.equal(again.mask.sum(1), random.mask.sum(1))


def test_the_independent_vector_dcor_floor_sits_where_a_permutation_reads():
    x = torch.randn(16, 512, generator=torch.Generator().manual_seed(1))
    permuted = x[:, torch.randperm(512, generator=torch.Generator().manual_seed(2))]
    floor = dcor_independent(512)
    assert 0.04 < floor < 0.12 and abs(dcor_per_vector(x, permuted) - floor) < 0.03
