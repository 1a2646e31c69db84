"""Layer streaming (Tab. 5 at full depth without holding the model): equivalence holds, and a broken rule shows."""
from __future__ import annotations

import pytest

import protocols.layer_stream as ls

TINY = {
    "gpt2": {"name": "tiny-gpt2", "model_type": "gpt2", "head": "causal_lm", "weights": "random", "dtype": "float32",
             "config": {"vocab_size": 97, "n_positions": 32, "n_embd": 32, "n_layer": 3, "n_head": 4}},
    "llama": {"name": "tiny-llama-gqa", "model_type": "llama", "head": "causal_lm", "weights": "random",
              "dtype": "float32", "config": {"vocab_size": 97, "hidden_size": 32, "intermediate_size": 48,
                                             "num_hidden_layers": 3, "num_attention_heads": 4,
                                             "num_key_value_heads": 2}},
}


@pytest.mark.parametrize("family", sorted(TINY))
def test_streamed_depth_is_equivalent(family):
    records = list(ls.stream_check(TINY[family], batch=2, seq_len=8, seed=3))
    hidden = [r for r in records if r["stage"] == "hidden"]
    logits = {r["metric"]: r["value"] for r in records if r["stage"] == "logits"}
    assert [r["layer"] for r in hidden] == [0, 1]  # every layer but the last carries a hidden state
    assert all(r["value"] < 1e-4 * max(r["scale"], 1.0) for r in hidden)
    assert logits["top1_agreement"] == 1.0 and logits["max_abs_error"] < 1e-4


def test_a_forgotten_norm_transform_is_caught(monkeypatch):
    real = ls.transform_named_tensors

    def skip_norms(family, named, keys):  # leave every norm gain and bias in plaintext order
        for name, value in real(family, named, keys):
            yield name, dict(named)[name] if "ln_" in name else value

    monkeypatch.setattr(ls, "transform_named_tensors", skip_norms)
    records = list(ls.stream_check(TINY["gpt2"], batch=2, seq_len=8, seed=3))
    assert max(r["value"] for r in records if r["metric"] == "max_abs_error") > 1e-2


def test_only_published_random_decoders_stream():
    with pytest.raises(ValueError, match="layer streaming supports"):
        ls.model_yaml("bert-base")
    with pytest.raises(ValueError, match="real weights"):
        ls.model_yaml("smollm2-135m")
    assert ls.depth(ls.model_yaml("llama2-70b")) == 80
