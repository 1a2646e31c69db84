"""Speculative STIP generation: device drafts, one verifying round trip, tokens identical to greedy."""
import pytest
import torch

import stip
from stip.speculation import accepted_length

from helpers.stip_models import DECODERS, FACTORIES, sample_inputs, tiny_llama, tiny_llava, tiny_mistral


class CountingServer:
    """Wraps a ModelServer; records every request's options and what came back."""

    def __init__(self, server):
        self.server, self.requests, self.returned = server, [], []

    def open_session(self):
        return self.server.open_session()

    def close_session(self, session):
        self.server.close_session(session)

    def infer(self, x, **kwargs):
        self.requests.append({"seq": x.shape[1], **{k: v for k, v in kwargs.items() if not torch.is_tensor(v)}})
        out = self.server.infer(x, **kwargs)
        self.returned.append({k: tuple(v.shape) for k, v in out.items()})
        return out


class OracleDrafter:
    """Proposes `right` tokens of the true continuation, then one wrong: a known accept/reject pattern."""

    def __init__(self, reference, right=3):
        self.reference, self.right = reference[0], right

    def propose(self, tokens, limit):
        start = tokens.shape[1]
        truth = self.reference[start:start + min(self.right + 1, limit)].clone()
        if truth.numel() > self.right:
            truth[self.right] = (truth[self.right] + 1) % 89  # a token greedy did not choose (every vocab >= 89)
        return truth


def plaintext_greedy(model, ids, n, attention_mask=None, **inputs):
    mask = torch.ones_like(ids) if attention_mask is None else attention_mask
    return model.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=0, do_sample=False,
                          eos_token_id=None, pad_token_id=0, **inputs)


def setup(model):
    developer = stip.ModelDeveloper(model, seed=0)
    return developer.data_owner(), CountingServer(stip.ModelServer(developer.cloud_model()))


@pytest.mark.parametrize("family", DECODERS)
def test_rejected_drafts_are_cropped_exactly_on_every_decoder(family):
    """3 right drafts and 1 wrong per round: 4 tokens per round trip, the wrong one's KV entry cropped.

    Prompt 6 + 16 new tokens runs well past the sliding windows (5) of mistral, gemma2 and gemma3.
    """
    model = FACTORIES[family]()
    ids = sample_inputs(model, batch=1, seq=6)["input_ids"]
    reference = plaintext_greedy(model, ids, 16)
    device, server = setup(model)
    stats = stip.GenerationStats()
    tokens = stip.generate(device, server, ids, 16, speculate=OracleDrafter(reference), stats=stats)
    assert torch.equal(tokens, reference)
    assert stats.round_trips == len(server.requests) == 4 and stats.new_tokens == 16
    assert stats.drafted == [4, 4, 4, 3] and stats.accepted == [3, 3, 3, 3]
    assert [r.get("cache_length") for r in server.requests] == [None, 9, 13, 17]
    assert [r["seq"] for r in server.requests] == [10, 5, 5, 4]
    assert server.returned[0] == {"topk_values": (1, 5, 2), "topk_indices": (1, 5, 2)}, "top-2 per position only"
    assert not server.server._sessions


@pytest.mark.parametrize("family", DECODERS)
def test_prompt_lookup_gives_plain_greedy_tokens_on_every_decoder(family):
    model = FACTORIES[family]()
    ids = sample_inputs(model, batch=1, seq=6)["input_ids"].repeat(1, 2)  # a repeated prompt: drafts found
    device, server = setup(model)
    stats = stip.GenerationStats()
    tokens = stip.generate(device, server, ids, 20, speculate=stip.PromptLookup(num_tokens=4), stats=stats)
    assert torch.equal(tokens, plaintext_greedy(model, ids, 20))
    assert stats.drafted[0] == 4, "the repeated prompt gives a full first draft"
    assert stats.round_trips == len(server.requests) and sum(stats.accepted) + stats.round_trips == 20


@pytest.mark.parametrize("family", ["phi3", "gemma2"])  # seeds whose output varies and depends on the padding
def test_left_padded_prompt_and_eos_match_generate(family):
    model = FACTORIES[family]()
    ids = sample_inputs(model, batch=1, seq=8)["input_ids"].repeat(1, 2)
    mask = torch.ones_like(ids)
    ids[0, :3], mask[0, :3] = 0, 0  # left padding: the server derives position ids from the mask
    reference = plaintext_greedy(model, ids, 12, attention_mask=mask)
    device, server = setup(model)
    tokens = stip.generate(device, server, ids, 12, attention_mask=mask, speculate=stip.PromptLookup(4))
    assert torch.equal(tokens, reference)
    assert not torch.equal(reference, plaintext_greedy(model, ids, 12)), "padding must matter, or this proves nothing"
    eos = int(reference[0, ids.shape[1] + 5])
    stopped = stip.generate(device, server, ids, 12, attention_mask=mask, eos_token_id=eos,
                            speculate=OracleDrafter(reference))
    first = int((reference[0, ids.shape[1]:] == eos).nonzero()[0, 0])
    assert torch.equal(stopped, reference[:, :ids.shape[1] + first + 1]), "stops right after the first EOS"


def test_llava_drafts_after_the_image_prompt():
    model = tiny_llava()
    inputs = sample_inputs(model, batch=1, seq=5)
    reference = plaintext_greedy(model, inputs["input_ids"], 8, pixel_values=inputs["pixel_values"])
    device, server = setup(model)
    tokens = stip.generate(device, server, inputs["input_ids"], 8,
                           device_inputs={"pixel_values": inputs["pixel_values"]}, speculate=OracleDrafter(reference))
    assert torch.equal(tokens, reference)
    assert server.requests[0]["last_n"] == 1, "the image prompt goes alone; drafts follow"
    assert len(server.requests) == 3  # 1 + 4 + 3 tokens


def test_stats_without_speculation_count_one_round_trip_per_token():
    model = tiny_llama()
    ids = sample_inputs(model, batch=1, seq=5)["input_ids"]
    device, server = setup(model)
    stats = stip.GenerationStats()
    stip.generate(device, server, ids, 7, stats=stats)
    assert (stats.round_trips, stats.new_tokens, stats.round_trips_per_token) == (7, 7, 1.0)
    assert stats.accepted == [0] * 7


def test_speculation_refuses_sampling_batches_and_non_drafters():
    model = tiny_llama()
    device, server = setup(model)
    ids = sample_inputs(model, batch=2, seq=5)["input_ids"]
    with pytest.raises(ValueError, match="batch 1"):
        stip.generate(device, server, ids, 4, speculate=stip.PromptLookup())
    with pytest.raises(ValueError, match="greedy only"):
        stip.generate(device, server, ids[:1], 4, do_sample=True, top_k=5, speculate=stip.PromptLookup())
    with pytest.raises(TypeError, match="propose"):
        stip.generate(device, server, ids[:1], 4, speculate=8)
    with pytest.raises(ValueError, match="num_tokens must be an int >= 1"):
        stip.PromptLookup(num_tokens=0)


def test_server_validates_cache_length_and_last_n():
    model = tiny_mistral()
    developer = stip.ModelDeveloper(model, seed=0)
    server, device = stip.ModelServer(developer.cloud_model()), developer.data_owner()
    ids = sample_inputs(model, batch=1, seq=8)["input_ids"]
    session = server.open_session()
    with pytest.raises(stip.StipInputError, match=r"cache_length=3 .* none before the first step"):
        server.infer(**device.request(ids, session=session, cache_length=3))
    server.infer(**device.request(ids, session=session, last_n=2))
    step = device.request(ids[:, :3], session=session, last_n=3)
    out = server.infer(**step)
    assert out["logits"].shape == (1, 3, model.config.vocab_size)
    for bad in (7, 12, 2.5, True):  # may drop only the last request's tokens (all of them: a redo)
        with pytest.raises(stip.StipInputError, match=r"must be an int in \[8, 11\]"):
            server.infer(**device.request(ids[:, :1], session=session, cache_length=bad))
    with pytest.raises(stip.StipInputError, match="pass the session"):
        server.infer(**device.request(ids[:, :1], cache_length=9))
    for kwargs, match in (({"last_n": 4}, r"last_n=4 must be an int in \[1, 3\]"),
                          ({"last_n": 2, "last_only": True}, "pass one of them")):
        with pytest.raises(stip.StipInputError, match=match):
            server.infer(**device.request(ids[:, :3], session=session, **kwargs))
    # a sliding-window layer that stopped recording its past cannot give back what it dropped
    layer = next(layer for layer in server._sessions[session]["cache"].layers if layer.is_sliding)
    layer.record_past = False
    with pytest.raises(stip.StipInputError, match="cannot be rolled back exactly"):
        server.infer(**device.request(ids[:, :1], session=session, cache_length=10))


def test_rolled_back_session_continues_like_a_fresh_one():
    """Sending junk drafts then cropping them leaves the same cache as never sending them."""
    model = tiny_mistral()
    developer = stip.ModelDeveloper(model, seed=0)
    server, device = stip.ModelServer(developer.cloud_model()), developer.data_owner()
    ids = sample_inputs(model, batch=1, seq=9)["input_ids"]
    clean, junk = server.open_session(), server.open_session()
    server.infer(**device.request(ids[:, :7], session=clean))
    server.infer(**device.request(torch.cat([ids[:, :7], ids[:, :4]], -1), session=junk))  # 4 junk drafts
    a = server.infer(**device.request(ids[:, 7:], session=clean))["logits"]
    b = server.infer(**device.request(ids[:, 7:], session=junk, cache_length=7))["logits"]
    torch.testing.assert_close(a, b)


def test_accepted_length():
    chosen = torch.tensor([5, 6, 7, 8])
    assert accepted_length(torch.tensor([5, 6, 9]), chosen) == 2
    assert accepted_length(torch.tensor([5, 6, 7]), chosen) == 3
    assert accepted_length(torch.tensor([1]), chosen) == 0
    assert accepted_length(torch.tensor([], dtype=torch.long), chosen) == 0


def test_a_tie_the_top_k_cannot_resolve_is_redone_with_the_whole_row():
    """Greedy takes the lowest token id among tied maxima: with every returned score tied, the device
    cannot know, so it redoes that position alone with its whole row (was: a refusal; with return_topk=1
    the check was skipped)."""
    model = tiny_llama()
    device, server = setup(model)

    class TiedServer(CountingServer):
        def infer(self, x, **kwargs):
            out = super().infer(x, **kwargs)
            if "topk_values" not in out:
                return out
            return {**out, "topk_values": out["topk_values"][..., :1].expand_as(out["topk_values"])}

    ids = sample_inputs(model, batch=1, seq=5)["input_ids"]
    plain = stip.generate(device, server, ids, 4)
    for k in (1, 2):
        tied = TiedServer(server.server)
        assert torch.equal(stip.generate(device, tied, ids, 4, speculate=stip.PromptLookup(), return_topk=k), plain)
        assert len(tied.requests) == 8, "each position redone once with its whole row"
