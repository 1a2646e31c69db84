"""What STIP's permutations do not hide: token recovery from value multisets, known plaintext."""
import torch
from transformers import AutoModel, AutoTokenizer

import stip
from protocols.models import minilm_path
from stip.attacks import fingerprint_token_recovery, known_plaintext_permutation
from stip_models import sample_inputs, tiny_gpt2


def test_known_plaintext_pair_recovers_pi():
    model = tiny_gpt2()
    device = stip.ModelDeveloper(model, seed=0).data_owner()
    ids = sample_inputs(model, batch=1, seq=4)["input_ids"]
    plain = device.embed(ids)
    assert torch.equal(known_plaintext_permutation(plain, device.permute(plain)), device.keys["pi"])


def test_value_multiset_fingerprint_recovers_real_minilm_tokens():
    """Ciphertext-only on real weights: the cloud holds only what crossed the wire + public table."""
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    model = AutoModel.from_pretrained(minilm_path()).eval()
    device = stip.ModelDeveloper(model, seed=0).data_owner()
    ids = tokenizer(["The quick brown fox jumps over the lazy dog.", "My password is hunter2."],
                    padding=True, return_tensors="pt")["input_ids"]
    wire = device.encode(ids)
    guesses = fingerprint_token_recovery(wire, model.get_input_embeddings().weight.detach())
    rate = (guesses == ids).float().mean().item()
    assert rate == 1.0, f"recovered {rate:.0%} of tokens"
