"""STIP on real trained weights (non-trivial LayerNorm/RMSNorm): MiniLM and SmolLM2-135M."""
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

import stip
from protocols.models import load_smollm2, minilm_path

SENTENCES = ["Secure inference keeps the prompt private.", "The capital of France is Paris.",
             "Permutations preserve the value multiset of every row."]


def test_minilm_sentence_embeddings_equivalent():
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    model = AutoModel.from_pretrained(minilm_path()).eval()
    assert model.embeddings.LayerNorm.weight.std() > 0.01, "real weights have trained LayerNorm"
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    developer = stip.ModelDeveloper(model, seed=0)
    server, device = stip.ModelServer(developer.cloud_model()), developer.data_owner()
    with torch.no_grad():
        reference = model(**batch)
    out = device.decode(server.infer(device.encode(batch["input_ids"]), attention_mask=batch["attention_mask"],
                                     token_type_ids=batch["token_type_ids"]))
    for name in ("last_hidden_state", "pooler_output"):
        rel = (out[name] - reference[name]).abs().max() / reference[name].abs().max()
        assert rel < 1e-4, f"{name}: {rel:.2e}"
        assert torch.equal(out[name].argmax(-1), reference[name].argmax(-1))


@pytest.fixture(scope="module")
def smollm2():
    return load_smollm2()


def test_smollm2_logits_equivalent_and_greedy_generation_identical(smollm2):
    model, tokenizer = smollm2
    assert model.config.tie_word_embeddings and model.config.num_key_value_heads < model.config.num_attention_heads
    ids = tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    developer = stip.ModelDeveloper(model, seed=0)
    server, device = stip.ModelServer(developer.cloud_model()), developer.data_owner()
    with torch.no_grad():
        reference = model(ids).logits
    logits = device.decode(server.infer(device.encode(ids)))["logits"]
    rel = (logits - reference).abs().max() / reference.abs().max()
    assert rel < 1e-4, f"relative error {rel:.2e}"
    assert torch.equal(logits.argmax(-1), reference.argmax(-1))

    tokens = stip.generate(device, server, ids, max_new_tokens=8)
    expected = model.generate(ids, max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert torch.equal(tokens, expected)
    assert "Paris" in tokenizer.decode(tokens[0, ids.shape[1]:])
