"""Left-padded batches generate the same greedy tokens as `model.generate` with the same mask."""
import pytest
import torch

import stip

from helpers.stip_models import tiny_gpt2, tiny_llama, tiny_mixtral

PAD = 3


def left_padded_prompts(vocab_size, lengths=(7, 4)):
    """Two prompts of different lengths, left-padded with PAD, and their attention mask."""
    gen = torch.Generator().manual_seed(0)
    width = max(lengths)
    ids = torch.full((len(lengths), width), PAD)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, width - n:] = torch.randint(4, vocab_size, (n,), generator=gen)
        mask[row, width - n:] = 1
    return ids, mask


def sharpened(model):
    """Scale the matrices up: at init greedy tokens barely depend on the input or its positions."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(8)
    return model


def plaintext_generate(model, ids, n, **kwargs):
    return model.generate(ids, max_new_tokens=n, min_new_tokens=0, do_sample=False, eos_token_id=None,
                          pad_token_id=PAD, **kwargs)


@pytest.mark.parametrize("factory", [tiny_gpt2, tiny_llama, tiny_mixtral], ids=["gpt2", "llama", "mixtral"])
def test_left_padded_greedy_generation_matches_plaintext_generate(factory):
    model = sharpened(factory())
    ids, mask = left_padded_prompts(model.config.vocab_size)
    developer = stip.ModelDeveloper(model, seed=0)
    server = stip.ModelServer(developer.cloud_model())
    tokens = stip.generate(developer.data_owner(), server, ids, max_new_tokens=8, attention_mask=mask)
    expected = plaintext_generate(model, ids, 8, attention_mask=mask)
    assert torch.equal(tokens, expected)
    assert not torch.equal(expected, plaintext_generate(model, ids, 8, attention_mask=torch.ones_like(mask)))
    # the short prompt alone gives the same tokens: padding changed nothing
    assert torch.equal(tokens[1, 3:], plaintext_generate(model, ids[1:, 3:], 8)[0])
    if factory is tiny_gpt2:  # absolute positions: generate counts them from the mask (RoPE: shift-invariant)
        naive = torch.arange(7).expand(2, 7)
        shifted = plaintext_generate(model, ids, 8, attention_mask=mask, position_ids=naive)
        assert not torch.equal(expected, shifted), "test needs positions to matter"


def test_generate_refuses_a_mask_of_another_shape():
    model = tiny_llama()
    developer = stip.ModelDeveloper(model, seed=0)
    ids, mask = left_padded_prompts(model.config.vocab_size)
    with pytest.raises(ValueError, match=r"attention_mask has shape \(2, 6\), expected \(2, 7\)"):
        stip.generate(developer.data_owner(), stip.ModelServer(developer.cloud_model()), ids, 2,
                      attention_mask=mask[:, 1:])
