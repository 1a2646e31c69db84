"""Every input reaches the party that may have it: embedded on the device, in the clear, or refused."""
import pytest
import torch

import stip
from protocols.cloud_and_traffic import Stopwatch
from protocols.stip_over_socket import StipCloudHandler, StipProtocol

from helpers.stip_models import sample_inputs, tiny_bert, tiny_gpt2, tiny_llama, tiny_vit


def _parties(model):
    developer = stip.ModelDeveloper(model, seed=0)
    return developer.data_owner(), stip.ModelServer(developer.cloud_model())


def _rel(a, b):
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


def test_gpt2_token_types_are_embedded_on_the_device_and_never_sent():
    model = tiny_gpt2()
    device, server = _parties(model)
    ids = sample_inputs(model, batch=2, seq=8)["input_ids"]
    types = torch.randint(0, model.config.vocab_size, ids.shape, generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        without = model(input_ids=ids, attention_mask=mask).logits
    assert _rel(without, plain) > 1e-2, "token types must matter for this test"
    with pytest.raises(stip.StipInputError, match="gpt2 embeds it on the device"):
        server.infer(device.encode(ids), token_type_ids=types)  # wte is zeroed on the cloud
    request = device.request(ids, attention_mask=mask, token_type_ids=types)
    assert {k for k, v in request.items() if isinstance(v, torch.Tensor)} == {"inputs_embeds", "attention_mask"}, \
        "GPT-2 token types never leave the device"
    assert _rel(device.decode(server.infer(**request))["logits"], plain) < 1e-4


def test_bert_token_types_travel_in_the_clear():
    model = tiny_bert()
    device, server = _parties(model)
    inputs = sample_inputs(model)
    request = device.request(inputs["input_ids"], token_type_ids=inputs["token_type_ids"])
    assert torch.equal(request["token_type_ids"], inputs["token_type_ids"])
    with torch.no_grad():
        assert _rel(device.decode(server.infer(**request))["logits"], model(**inputs).logits) < 1e-4


def test_inputs_a_family_cannot_take_are_refused_on_both_sides():
    device, server = _parties(tiny_llama())
    ids = torch.randint(0, 50, (1, 4))
    with pytest.raises(stip.StipInputError, match="llama models take no token_type_ids; drop it"):
        device.request(ids, token_type_ids=torch.zeros_like(ids))
    with pytest.raises(stip.StipInputError, match="llama models take no token_type_ids on the cloud; drop"):
        server.infer(device.encode(ids), token_type_ids=torch.zeros_like(ids))
    with pytest.raises(stip.StipInputError, match="llama models take no position_ids; drop it"):
        device.request(ids, position_ids=torch.arange(4)[None])
    vit_device, _ = _parties(tiny_vit())
    with pytest.raises(stip.StipInputError, match="vit models take no token_type_ids"):
        vit_device.request(torch.randn(1, 3, 32, 32), token_type_ids=torch.zeros(1, 17, dtype=torch.long))


def test_server_validates_masks_and_token_types():
    model = tiny_bert()
    device, server = _parties(model)
    inputs = sample_inputs(model, batch=2, seq=6)
    x = device.encode(inputs["input_ids"])
    expected = r"attention_mask has shape \(2, 5\), expected \[batch, seq\] = \[2, 6\]"
    with pytest.raises(stip.StipInputError, match=expected):
        server.infer(x, attention_mask=torch.ones(2, 5, dtype=torch.long))
    with pytest.raises(stip.StipInputError, match="attention_mask must be an integer or bool tensor"):
        server.infer(x, attention_mask=torch.ones(2, 6))
    with pytest.raises(stip.StipInputError, match=r"token_type_ids has shape \(6,\)"):
        server.infer(x, token_type_ids=inputs["token_type_ids"][0])
    with pytest.raises(stip.StipInputError, match=r"attention_mask has shape \(2, 7\)"):
        device.request(inputs["input_ids"], attention_mask=torch.ones(2, 7, dtype=torch.long))


def test_session_mask_covers_new_tokens_only():
    model = tiny_llama()
    device, server = _parties(model)
    ids = torch.randint(2, 50, (2, 5))
    session = server.open_session()
    server.infer(**device.request(ids, attention_mask=torch.ones_like(ids), session=session))
    with pytest.raises(stip.StipInputError, match="of the new tokens only"):
        server.infer(device.encode(ids[:, :1]), attention_mask=torch.ones(2, 6, dtype=torch.long),
                     session=session)
    with pytest.raises(stip.StipInputError, match="session .* has batch 2, this request has 1"):
        server.infer(device.encode(ids[:1, :1]), session=session)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_precision_vit_casts_float32_pixels_like_plaintext(dtype):
    model = tiny_vit().to(dtype)
    device, server = _parties(model)
    pixels = sample_inputs(model)["pixel_values"]
    assert pixels.dtype == torch.float32
    with torch.no_grad():
        plain = model(pixel_values=pixels).logits  # ViTModel.forward casts to the patch projection's dtype
    assert device.encode(pixels).dtype == dtype
    out = device.decode(server.infer(**device.request(pixels)))["logits"]
    assert out.dtype == plain.dtype == dtype
    assert _rel(out, plain) < (2e-2 if dtype == torch.bfloat16 else 5e-3)
    assert torch.equal(out.argmax(-1), plain.argmax(-1))


def test_harness_sends_exactly_the_library_request():
    model = tiny_gpt2()
    device, server = _parties(model)
    protocol = StipProtocol({})
    protocol.device = device
    ids = sample_inputs(model, batch=2, seq=6)["input_ids"]
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
              "token_type_ids": torch.ones_like(ids)}
    sw = Stopwatch()
    tensors, meta = protocol.device_send(inputs, sw)
    assert set(tensors) == {"inputs_embeds", "attention_mask"}, "GPT-2 token types stay on the device"
    assert set(sw.times) == {"device_embed", "device_permute"} and all(v > 0 for v in sw.times.values())
    handler = StipCloudHandler.__new__(StipCloudHandler)
    handler.server = server
    reply, _ = handler.infer(tensors, **meta)
    with torch.no_grad():
        plain = model(**inputs).logits
    assert _rel(protocol.device_receive(reply, sw)["logits"], plain) < 1e-4
    with pytest.raises(stip.StipInputError, match="gpt2 embeds it on the device"):
        handler.infer({**tensors, "token_type_ids": inputs["token_type_ids"]})  # all that comes reaches it
