"""Issue 21, "same work on both sides": a cloud whose reply carries the last position(s) runs the head there only.

Each test watches the LM head's input: on the old code (head on every position, sliced afterwards) it saw the
whole sequence, so these tests fail there.
"""
from __future__ import annotations

import pytest
import torch

import stip
from baselines.full_cloud import FullCloudHandler
from tests.helpers.stip_models import DECODERS, FACTORIES, tiny_bert

SEQ = 7


def _head_positions(model: torch.nn.Module) -> tuple[list[int], object]:
    """Positions each call of the output embedding (LM head) saw, recorded by a forward hook."""
    seen: list[int] = []
    head = model.get_output_embeddings()
    handle = head.register_forward_hook(lambda _m, args, _out: seen.append(int(args[0].shape[-2])))
    return seen, handle


@pytest.mark.parametrize("family", DECODERS)
def test_stip_server_runs_the_head_on_the_kept_positions_only(family):
    model = FACTORIES[family]()
    developer = stip.ModelDeveloper(model, seed=0)
    server, device = stip.ModelServer(developer.cloud_model()), developer.data_owner()
    assert server.takes_logits_to_keep, f"{family}'s causal LM takes logits_to_keep in transformers 5"
    ids = torch.randint(0, model.config.vocab_size, (2, SEQ), generator=torch.Generator().manual_seed(0))
    request = device.request(ids)
    seen, handle = _head_positions(server.model)
    try:
        full = server.infer(**request)["logits"]
        assert seen == [SEQ]
        last = server.infer(**{**request, "last_only": True})["logits"]
        topk = server.infer(**{**request, "top_k": 3})
        last_n = server.infer(**{**request, "last_n": 2})["logits"]
        assert seen == [SEQ, 1, 1, 2], "last_only / top_k keep 1 position, last_n=2 keeps 2"
    finally:
        handle.remove()
    assert last.shape == full[:, -1].shape and last_n.shape == full[:, -2:].shape
    torch.testing.assert_close(last, full[:, -1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(last_n, full[:, -2:], rtol=1e-5, atol=1e-5)
    assert torch.equal(topk["topk_indices"], full[:, -1].topk(3, dim=-1).indices)
    plain = model(ids).logits[:, -1]
    assert torch.equal(device.decode(topk)["topk_indices"], plain.topk(3, dim=-1).indices)


def test_stip_server_without_logits_to_keep_slices_as_before():
    """A base encoder has no logits_to_keep: it runs everywhere and the last position is sliced (as before)."""
    developer = stip.ModelDeveloper(tiny_bert(head=False), seed=0)
    server, device = stip.ModelServer(developer.cloud_model()), developer.data_owner()
    assert not server.takes_logits_to_keep
    request = device.request(torch.randint(0, 100, (1, SEQ)))
    full = server.infer(**request)["last_hidden_state"]
    assert torch.equal(server.infer(**{**request, "last_only": True})["last_hidden_state"], full[:, -1])


@pytest.mark.parametrize("return_mode", ["topk", "tokens"])
def test_full_cloud_runs_the_head_on_the_last_position_only(tmp_path, return_mode):
    model = FACTORIES["gpt2"]()
    model.save_pretrained(tmp_path)
    handler = FullCloudHandler(str(tmp_path), "causal_lm")
    ids = torch.randint(0, model.config.vocab_size, (2, SEQ), generator=torch.Generator().manual_seed(1))
    seen, handle = _head_positions(handler.model)
    try:
        reply, _ = handler.infer({"input_ids": ids}, return_mode=return_mode, top_k=4)
        assert seen == [1]
        handler.infer({"input_ids": ids})
        assert seen == [1, SEQ], "return_mode=full still runs the head everywhere"
    finally:
        handle.remove()
    last = model(ids).logits[:, -1]
    if return_mode == "tokens":
        assert torch.equal(reply["tokens"], last.argmax(-1, keepdim=True))
    else:
        assert torch.equal(reply["topk_indices"], last.topk(4, dim=-1).indices)
        torch.testing.assert_close(reply["topk_values"], last.topk(4, dim=-1).values)


def test_full_cloud_generation_runs_the_head_on_the_last_position_only(tmp_path):
    """Full cloud's greedy generation returns tokens: its prefill runs the head on the last position only."""
    model = FACTORIES["llama"]()
    model.save_pretrained(tmp_path)
    handler = FullCloudHandler(str(tmp_path), "causal_lm")
    ids = torch.randint(0, model.config.vocab_size, (1, SEQ), generator=torch.Generator().manual_seed(2))
    seen, handle = _head_positions(handler.model)
    try:
        reply, _ = handler.generate({"input_ids": ids}, max_new_tokens=3)
    finally:
        handle.remove()
    assert seen == [1, 1, 1]
    expected = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False,
                              eos_token_id=None, pad_token_id=0)[:, SEQ:]
    assert torch.equal(reply["tokens"], expected)
