"""Generation under STIP: one round trip per token, KV cache on the server, same tokens as plaintext."""
import pytest
import torch

import stip

from helpers.stip_models import DECODERS, FACTORIES, sample_inputs, tiny_gpt2, tiny_llama, tiny_llava


class CountingServer:
    """Wraps a ModelServer and counts round trips and what came back."""

    def __init__(self, server):
        self.server, self.calls, self.returned = server, 0, []

    def open_session(self):
        return self.server.open_session()

    def close_session(self, session):
        self.server.close_session(session)

    def infer(self, x, **kwargs):
        self.calls += 1
        out = self.server.infer(x, **kwargs)
        self.returned.append({k: tuple(v.shape) for k, v in out.items()})
        self.last_seq = x.shape[1]
        return out


def plaintext_greedy(model, ids, n, **inputs):
    # an explicit all-ones mask: without it generate masks every prompt token equal to pad_token_id
    return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=0,
                          do_sample=False, eos_token_id=None, pad_token_id=0, **inputs)


@pytest.mark.parametrize("family", DECODERS)
def test_greedy_generation_matches_plaintext_generate(family):
    model = FACTORIES[family]()
    ids = sample_inputs(model, batch=2, seq=6)["input_ids"]  # + 10 new tokens: past the sliding windows (5)
    developer = stip.ModelDeveloper(model, seed=0)
    server = CountingServer(stip.ModelServer(developer.cloud_model()))
    tokens = stip.generate(developer.data_owner(), server, ids, max_new_tokens=10)
    assert torch.equal(tokens, plaintext_greedy(model, ids, 10))
    assert server.calls == 10, "one round trip per generated token"
    assert server.last_seq == 1, "with the KV cache the device sends only the new token"
    assert not server.server._sessions, "the session is closed and its cache freed"


def test_topk_return_is_lossless_for_greedy_and_smaller():
    model = tiny_llama()
    ids = sample_inputs(model, batch=1, seq=5)["input_ids"]
    developer = stip.ModelDeveloper(model, seed=0)
    full = CountingServer(stip.ModelServer(developer.cloud_model()))
    topk = CountingServer(stip.ModelServer(developer.cloud_model()))
    a = stip.generate(developer.data_owner(), full, ids, 8)
    b = stip.generate(developer.data_owner(), topk, ids, 8, return_topk=5)
    assert torch.equal(a, b)
    assert topk.returned[0] == {"topk_values": (1, 6), "topk_indices": (1, 6)}  # k+1: a tie at the boundary shows
    assert full.returned[0] == {"logits": (1, model.config.vocab_size)}


def test_topk_sampling_is_reproducible_and_lossy_combinations_are_refused():
    model = tiny_gpt2()
    ids = sample_inputs(model, batch=1, seq=4)["input_ids"]
    developer = stip.ModelDeveloper(model, seed=0)
    server, device = stip.ModelServer(developer.cloud_model()), developer.data_owner()
    runs = [stip.generate(device, server, ids, 6, do_sample=True, top_k=3, return_topk=3,
                          generator=torch.Generator().manual_seed(1)) for _ in range(2)]
    assert torch.equal(*runs)
    with pytest.raises(ValueError, match="return_topk=3 is lossless only"):
        stip.generate(device, server, ids, 2, do_sample=True, top_k=10, return_topk=3)


def test_permuted_argmax_repeats_for_repeated_tokens():
    """Output side leak: the same next token gives the same permuted argmax index (STIP.md)."""
    model = tiny_gpt2()
    developer = stip.ModelDeveloper(model, seed=0)
    server, device = stip.ModelServer(developer.cloud_model()), developer.data_owner()
    ids = sample_inputs(model, batch=1, seq=16)["input_ids"]
    permuted = server.infer(device.encode(ids))["logits"].argmax(-1)[0]
    plain = model(ids).logits.argmax(-1)[0]
    for i in range(len(plain)):
        for j in range(len(plain)):
            assert (plain[i] == plain[j]) == (permuted[i] == permuted[j])


def test_llava_greedy_generation_from_image_and_text_matches_plaintext():
    """The device runs the vision tower and projector; the cloud sees only permuted embeddings."""
    model = tiny_llava()
    inputs = sample_inputs(model, batch=2, seq=5)
    developer = stip.ModelDeveloper(model, seed=0)
    server = CountingServer(stip.ModelServer(developer.cloud_model()))
    tokens = stip.generate(developer.data_owner(), server, inputs["input_ids"], max_new_tokens=8,
                           device_inputs={"pixel_values": inputs["pixel_values"]})
    assert torch.equal(tokens, plaintext_greedy(model, inputs["input_ids"], 8, pixel_values=inputs["pixel_values"]))
    other_image = plaintext_greedy(model, inputs["input_ids"], 8, pixel_values=inputs["pixel_values"].flip(0))
    assert not torch.equal(tokens, other_image), "the image must change the answer, or this test proves nothing"
    assert server.calls == 8
