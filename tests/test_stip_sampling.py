"""Token choice in the permuted vocabulary: the same tokens as transformers' sampler on plaintext logits."""
import pytest
import torch

import stip
from protocols.models import load_smollm2
from stip.sampling import Sampling, choose_tokens, reference_next_token
from stip.transform import permute_features

from helpers.stip_models import sample_inputs, tiny_gpt2, tiny_llama, tiny_mixtral

MODES = {
    "greedy": Sampling(),
    "full": Sampling(do_sample=True),
    "temperature": Sampling(do_sample=True, temperature=0.7),
    "top_k": Sampling(do_sample=True, top_k=5),
    "top_p": Sampling(do_sample=True, top_p=0.8),
    "all": Sampling(do_sample=True, temperature=1.3, top_k=20, top_p=0.9),
}


def tied_logits(batch: int, vocab: int, seed: int) -> torch.Tensor:
    """Logits rounded to a coarse grid: ties at the maximum and at the k-th score are common."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, vocab, generator=gen) * 2).round() / 2


@pytest.mark.parametrize("mode", MODES, ids=list(MODES))
def test_permuted_choice_equals_transformers_sampler_on_plaintext(mode):
    sampling, vocab = MODES[mode], 211
    pi_c = torch.randperm(vocab, generator=torch.Generator().manual_seed(3))
    for seed in range(40):
        batch = 1 if seed % 4 < 2 else 3  # one row takes its own tie check
        logits = tied_logits(batch, vocab, seed) if seed % 2 else torch.randn(batch, vocab) * 3
        expected = reference_next_token(logits, sampling, torch.Generator().manual_seed(seed))
        plain = choose_tokens(logits, sampling, vocab, None, torch.Generator().manual_seed(seed))
        permuted = choose_tokens(logits[:, pi_c], sampling, vocab, pi_c, torch.Generator().manual_seed(seed))
        gathered = choose_tokens(logits[:, pi_c], sampling, vocab, pi_c, torch.Generator().manual_seed(seed),
                                 inverse=torch.argsort(pi_c))
        assert torch.equal(plain, expected), f"seed {seed}"
        assert torch.equal(permuted, expected), f"seed {seed}"
        assert torch.equal(gathered, expected), f"seed {seed}"


def test_ties_at_the_maximum_and_at_the_kth_score_follow_token_order():
    vocab = 8
    pi_c = torch.tensor([7, 6, 5, 4, 3, 2, 1, 0])  # reverses token order: ties would pick the wrong end
    logits = torch.tensor([[0.0, 2.0, 1.0, 2.0, 1.0, 1.0, 0.0, 2.0]])
    assert choose_tokens(logits[:, pi_c], Sampling(), vocab, pi_c).item() == 1
    top2 = Sampling(do_sample=True, top_k=2)  # the 2nd score is tied three ways: TopK keeps all three
    seen = {choose_tokens(logits[:, pi_c], top2, vocab, pi_c, torch.Generator().manual_seed(s)).item()
            for s in range(60)}
    assert seen == {1, 3, 7}


def test_candidates_from_the_cloud_topk_give_the_same_tokens():
    vocab = 150
    pi_c = torch.randperm(vocab, generator=torch.Generator().manual_seed(1))
    sampling = Sampling(do_sample=True, temperature=0.8, top_k=6, top_p=0.9)
    for seed in range(30):
        logits = torch.randn(2, vocab, generator=torch.Generator().manual_seed(100 + seed)) * 2
        values, positions = logits[:, pi_c].topk(8, dim=-1)
        got = choose_tokens(values, sampling, vocab, pi_c[positions], torch.Generator().manual_seed(seed))
        assert torch.equal(got, reference_next_token(logits, sampling, torch.Generator().manual_seed(seed)))
    with pytest.raises(ValueError, match="exact only for greedy or top_k < 8"):
        choose_tokens(values, Sampling(do_sample=True, top_k=8), vocab, pi_c[positions])


@pytest.mark.parametrize("shape", [(1, 1, 576), (2, 64, 9001), (130, 8193)])
def test_permute_features_equals_indexing_on_every_path(shape):
    x = torch.randn(*shape)
    index = torch.randperm(shape[-1])
    assert torch.equal(permute_features(x, index), x[..., index])
    assert torch.equal(permute_features(x.transpose(0, -2), index), x.transpose(0, -2)[..., index])


@pytest.mark.parametrize("kwargs, message", [
    ({"temperature": 0.0, "do_sample": True}, "temperature must be a finite number > 0, got 0.0"),
    ({"temperature": float("nan"), "do_sample": True}, "temperature must be a finite number > 0"),
    ({"top_k": -1, "do_sample": True}, "top_k must be an int >= 0"),
    ({"top_k": 2.5, "do_sample": True}, "top_k must be an int >= 0"),
    ({"top_p": 0.0, "do_sample": True}, r"top_p must be a number in \(0, 1\]"),
    ({"top_p": 1.5, "do_sample": True}, r"top_p must be a number in \(0, 1\]"),
    ({"do_sample": "yes"}, "do_sample must be True or False"),
    ({"top_k": 5}, "only apply when sampling; set do_sample=True"),
    ({"temperature": 0.5}, "only apply when sampling; set do_sample=True"),
])
def test_sampling_settings_are_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Sampling(**kwargs)


def test_next_token_refuses_logits_of_another_vocabulary():
    developer = stip.ModelDeveloper(tiny_gpt2(), seed=0)
    with pytest.raises(stip.StipInputError, match=r"do not fit a 97-token vocabulary"):
        developer.data_owner().next_token(torch.randn(1, 50))


PLAIN = {"temperature": 1.0, "top_k": 0, "top_p": 1.0}  # override the generation config's own defaults


GENERATE_MODES = {
    "greedy": {},
    "top_k": {"do_sample": True, "top_k": 10},
    "top_p": {"do_sample": True, "top_p": 0.85, "top_k": 0},
    "full": {"do_sample": True, "top_k": 0},
    "all": {"do_sample": True, "top_k": 30, "top_p": 0.9, "temperature": 0.8},
}


@pytest.mark.parametrize("mode", GENERATE_MODES, ids=list(GENERATE_MODES))
@pytest.mark.parametrize("factory", [tiny_gpt2, tiny_llama, tiny_mixtral], ids=["gpt2", "llama", "mixtral"])
def test_generate_equals_model_generate_under_the_same_seed(factory, mode):
    model, kwargs = factory(), GENERATE_MODES[mode]
    ids = sample_inputs(model, batch=2, seq=5)["input_ids"]
    developer = stip.ModelDeveloper(model, seed=0)
    server, device = stip.ModelServer(developer.cloud_model()), developer.data_owner()
    for seed in (0, 1):
        torch.manual_seed(seed)
        expected = model.generate(ids, max_new_tokens=12, min_new_tokens=0, eos_token_id=None, pad_token_id=0,
                                  **({**PLAIN, **kwargs} if kwargs else {"do_sample": False}))
        tokens = stip.generate(device, server, ids, 12, generator=torch.Generator().manual_seed(seed),
                               **{k: v for k, v in kwargs.items() if v != 0})
        assert torch.equal(tokens, expected), f"seed {seed}"


def test_generate_with_cloud_topk_sampling_equals_model_generate():
    model = tiny_llama()
    ids = sample_inputs(model, batch=2, seq=5)["input_ids"]
    developer = stip.ModelDeveloper(model, seed=0)
    server, device = stip.ModelServer(developer.cloud_model()), developer.data_owner()
    torch.manual_seed(4)
    expected = model.generate(ids, max_new_tokens=12, eos_token_id=None, pad_token_id=0,
                              **{**PLAIN, "do_sample": True, "top_k": 8, "top_p": 0.9})
    tokens = stip.generate(device, server, ids, 12, do_sample=True, top_k=8, top_p=0.9, return_topk=8,
                           generator=torch.Generator().manual_seed(4))
    assert torch.equal(tokens, expected)


@pytest.mark.slow
def test_smollm2_sampling_equals_model_generate():
    model, tokenizer = load_smollm2()
    ids = tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    developer = stip.ModelDeveloper(model, seed=0)
    server, device = stip.ModelServer(developer.cloud_model()), developer.data_owner()
    for kwargs in ({"top_k": 50, "top_p": 0.9, "temperature": 0.7}, {"top_k": 0}):
        torch.manual_seed(11)
        expected = model.generate(ids, max_new_tokens=8, do_sample=True, eos_token_id=None, pad_token_id=0,
                                  **{**PLAIN, **kwargs})
        tokens = stip.generate(device, server, ids, 8, do_sample=True,
                               generator=torch.Generator().manual_seed(11),
                               **{k: v for k, v in kwargs.items() if v != 0})
        assert torch.equal(tokens, expected), kwargs
