"""STIP generation == model.generate: family x RoPE type x sampling mode at toy size, crossing every
length threshold the config defines (stip/generation_rules.py), plus one test per red-team finding
of issue 25."""
import re
from pathlib import Path

import pytest
import torch
import transformers
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Phi3Config, Phi3ForCausalLM
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

import stip
from stip.generation_rules import CACHE_RECOMPUTE_AT, generation_rules, position_dependent

THRESHOLD = 12  # every RoPE / recompute threshold of the toy configs: prompts of 8 + 10 new tokens cross it
PROMPT, NEW = 8, 10
VOCAB = 100


def _rope(kind: str, head_dim: int) -> dict:
    if kind == "default":
        return {"rope_type": "default", "rope_theta": 10000.0}
    if kind in ("linear", "dynamic"):
        return {"rope_type": kind, "factor": 2.0, "rope_theta": 10000.0}
    half = head_dim // 2
    return {"rope_type": "longrope", "rope_theta": 10000.0, "original_max_position_embeddings": THRESHOLD,
            "short_factor": [1.0 + 0.1 * i for i in range(half)], "long_factor": [2.0 + 0.5 * i for i in range(half)]}


def _build(family: str, rope: str, seed: int = 0):
    torch.manual_seed(seed)
    common = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=VOCAB, bos_token_id=0, eos_token_id=None, pad_token_id=None)
    if family == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=64,
                                           bos_token_id=0, eos_token_id=None))
    elif family == "llama":
        max_pos = THRESHOLD if rope == "dynamic" else 64
        model = LlamaForCausalLM(LlamaConfig(**common, max_position_embeddings=max_pos,
                                             rope_parameters=_rope(rope, 8)))
    else:
        params = _rope(rope, 8)
        model = Phi3ForCausalLM(Phi3Config(**common, max_position_embeddings=64, rope_parameters=params,
                                           original_max_position_embeddings=THRESHOLD))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(8.0)  # spread the logits: random toy models otherwise emit near-ties and one token
    return model.eval()


# Phi3Config takes only default and longrope
CASES = [("gpt2", "default"), *(("llama", r) for r in ("default", "linear", "dynamic", "longrope")),
         ("phi3", "default"), ("phi3", "longrope")]
MODES = {"greedy": {}, "top_k": {"do_sample": True, "top_k": 5, "temperature": 0.9}}


def _reference(model, ids, mode, seed):
    torch.manual_seed(seed)
    return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW, min_new_tokens=0,
                          eos_token_id=None, pad_token_id=0,
                          **MODES[mode])


@pytest.mark.parametrize("family,rope", CASES)
def test_generation_matrix_matches_model_generate(family, rope):
    model = _build(family, rope)
    developer = stip.ModelDeveloper(model, seed=0)
    server, device = stip.ModelServer(developer.cloud_model()), developer.data_owner()
    ids = torch.randint(2, VOCAB, (1, PROMPT), generator=torch.Generator().manual_seed(3))
    for mode in MODES:
        expected = _reference(model, ids, mode, seed=11)
        kwargs = dict(MODES[mode], generator=torch.Generator().manual_seed(11)) if MODES[mode] else {}
        got = stip.generate(device, server, ids, NEW, **kwargs)
        assert torch.equal(got, expected), f"{family}/{rope}/{mode}: {got.tolist()} != {expected.tolist()}"
        if mode == "greedy":
            topk = stip.generate(device, server, ids, NEW, return_topk=3)
            assert torch.equal(topk, expected), f"{family}/{rope}: return_topk"
            repeating = torch.tensor([[5, 6, 7, 8] * 2])  # prompt lookup drafts: across the thresholds too
            spec = stip.generate(device, server, repeating, NEW, speculate=stip.PromptLookup(4, 2))
            assert torch.equal(spec, _reference(model, repeating, mode, 0)), f"{family}/{rope}: speculation"


def test_thresholds_found_in_the_installed_transformers_are_all_handled():
    """Every model whose prepare_inputs_for_generation drops the cache, and every RoPE type that
    dynamic_rope_update changes per forward, is known to stip.generation_rules."""
    root = Path(transformers.__file__).parent
    droppers = set()
    for path in (root / "models").glob("*/modeling_*.py"):
        text = path.read_text()
        for m in re.finditer(r"def prepare_inputs_for_generation\(.*?(?=\n    def |\nclass |\Z)", text, re.S):
            if re.search(r"\b(cache|past_key_values) = None", m.group(0)):
                droppers.add(path.parent.name)
    supported = set(stip.families.FAMILIES)
    assert droppers & supported <= set(CACHE_RECOMPUTE_AT), droppers & supported
    rope_src = (root / "modeling_rope_utils.py").read_text()
    assert '"dynamic" in rope_type' in rope_src and 'rope_type == "longrope"' in rope_src, \
        "dynamic_rope_update changed: re-check stip.generation_rules.position_dependent"
    assert {k for k in ROPE_INIT_FUNCTIONS if position_dependent(k)} == {"dynamic", "longrope"}


def test_dynamic_rope_state_is_not_shared_between_clients():
    """Finding 3: one client's long request grew the shared rotary module's frequencies for the next."""
    model = _build("llama", "dynamic")
    developer = stip.ModelDeveloper(model, seed=0)
    server, device = stip.ModelServer(developer.cloud_model()), developer.data_owner()
    short = torch.randint(2, VOCAB, (1, 20), generator=torch.Generator().manual_seed(1))
    fresh = device.decode(server.infer(**device.request(short)))["logits"]
    server.infer(**device.request(torch.randint(2, VOCAB, (1, 40))))  # another client, a long request
    session = server.open_session()
    server.infer(**device.request(torch.randint(2, VOCAB, (1, 40)), session=session, last_only=True))
    after = device.decode(server.infer(**device.request(short)))["logits"]
    assert torch.equal(after, fresh)


def test_speculation_drafts_stop_at_a_rope_frequency_change():
    """Finding 2: the server refuses drafts whose forward would use other frequencies than greedy's."""
    model = _build("llama", "dynamic")
    developer = stip.ModelDeveloper(model, seed=0)
    server, device = stip.ModelServer(developer.cloud_model()), developer.data_owner()
    assert generation_rules(model.config).max_drafts(THRESHOLD + 1) == 0
    with pytest.raises(stip.StipInputError, match="drafted tokens at sequence length"):
        server.infer(**device.request(torch.randint(2, VOCAB, (1, THRESHOLD + 2)), session=server.open_session(),
                                      last_n=3))


def test_phi3_cache_recompute_crossing_is_refused_on_a_cached_step():
    """Finding 1: a cached step across original_max_position_embeddings is refused (stip.generate re-sends)."""
    model = _build("phi3", "longrope")
    developer = stip.ModelDeveloper(model, seed=0)
    server, device = stip.ModelServer(developer.cloud_model()), developer.data_owner()
    session = server.open_session()
    server.infer(**device.request(torch.randint(2, VOCAB, (1, THRESHOLD)), session=session, last_only=True))
    with pytest.raises(stip.StipInputError, match="drops its KV cache"):
        server.infer(**device.request(torch.tensor([[3]]), session=session, last_only=True))


def test_topk_tie_at_the_boundary_falls_back_to_the_whole_row():
    """Finding 4: two identical LM-head rows tie at the top; a top-1 return alone picked the wrong one."""
    model = _build("llama", "default")
    ids = torch.randint(2, VOCAB, (1, PROMPT), generator=torch.Generator().manual_seed(3))
    top = int(model(ids).logits[0, -1].argmax())
    with torch.no_grad():  # another token's LM-head row = the argmax's: the first step's maximum is tied
        model.lm_head.weight[99 if top < 50 else 2] = model.lm_head.weight[top]
    expected = _reference(model, ids, "greedy", 0)
    for seed in range(4):
        developer = stip.ModelDeveloper(model, seed=seed)
        server, device = stip.ModelServer(developer.cloud_model()), developer.data_owner()
        assert torch.equal(stip.generate(device, server, ids, NEW, return_topk=1), expected), seed


def test_gpt2_token_types_pad_and_eos_lists_as_transformers():
    """Findings 5 and 6: token types extended with their last value; finished rows get pad_token_id;
    eos_token_id may be a list."""
    model = _build("gpt2", "default")
    developer = stip.ModelDeveloper(model, seed=0)
    server, device = stip.ModelServer(developer.cloud_model()), developer.data_owner()
    ids = torch.randint(2, VOCAB, (2, PROMPT), generator=torch.Generator().manual_seed(5))
    types = torch.tensor([[0] * 4 + [1] * 4, [1] * 8])
    expected = model.generate(ids, attention_mask=torch.ones_like(ids), token_type_ids=types, max_new_tokens=NEW,
                              do_sample=False, eos_token_id=None, pad_token_id=0)
    got = stip.generate(device, server, ids, NEW, device_inputs={"token_type_ids": types})
    assert torch.equal(got, expected)
    plain = stip.generate(device, server, ids, NEW)
    eos = [int(plain[0, PROMPT + 1]), int(plain[1, PROMPT + 3])]  # each row stops early, at another step
    expected = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW, do_sample=False,
                              eos_token_id=eos, pad_token_id=0)
    got = stip.generate(device, server, ids, NEW, eos_token_id=eos, pad_token_id=0)
    assert torch.equal(got, expected) and (got == 0).any()


def test_weights_fingerprint_refuses_a_device_built_for_other_weights():
    """Finding 7: same keys, fine-tuned embedding: the old device was silently accepted."""
    model = _build("llama", "default")
    developer = stip.ModelDeveloper(model, seed=0)
    old_device = developer.data_owner()
    with torch.no_grad():
        model.model.embed_tokens.weight.add_(0.01)  # a fine-tune, re-transformed with the same keys
    tuned = stip.ModelDeveloper(model, keys=developer.keys)
    server = stip.ModelServer(tuned.cloud_model())
    ids = torch.tensor([[3, 4, 5]])
    server.infer(**tuned.data_owner().request(ids))
    with pytest.raises(stip.KeyMismatchError, match="embedding weights"):
        server.infer(**old_device.request(ids))


def test_session_cache_is_used_one_new_position_per_step(caplog):
    """The cache reaches the model (not a deprecated keyword swallowed): it holds every token after each step."""
    model = _build("llama", "default")
    developer = stip.ModelDeveloper(model, seed=0)
    server, device = stip.ModelServer(developer.cloud_model()), developer.data_owner()
    session = server.open_session()
    server.infer(**device.request(torch.tensor([[3, 4, 5]]), session=session, last_only=True))
    for n in range(4, 7):
        server.infer(**device.request(torch.tensor([[n]]), session=session, last_only=True))
        assert server._sessions[session]["cache"].get_seq_length() == n
    assert "deprecated" not in caplog.text
