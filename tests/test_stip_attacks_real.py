"""The attacks on real weights (MiniLM, SmolLM2): slow; the full table is benchmarks/attack_measurements.py."""
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from protocols.models import smollm2_path
from stip.attacks import measure

from helpers.attack_measurements import SENTENCES, minilm_rows

pytestmark = pytest.mark.slow


def _values(rows, attack, metric):
    return [r["value"] for r in rows if r["attack"] == attack and r["metric"] == metric]


def test_minilm_falls_to_multiset_matching_weight_alignment_and_known_plaintext():
    rows = minilm_rows()
    assert _values(rows, "multiset", "token_recovery")[0] == 1.0
    assert all(v == 1.0 for v in _values(rows, "weight_alignment", "key_recovered"))
    assert _values(rows, "known_plaintext", "pi_recovered")[0] == 1.0
    assert _values(rows, "projection_multiset", "token_recovery")[0] < 0.1


def test_smollm2_tokens_and_keys_fall_without_any_key():
    tok = AutoTokenizer.from_pretrained(smollm2_path())
    model = AutoModelForCausalLM.from_pretrained(smollm2_path(), dtype=torch.float32).eval()
    ids = tok(SENTENCES[1], return_tensors="pt")["input_ids"]
    rows = measure.measure_multiset("smollm2", model, ids) + measure.measure_theft("smollm2", model, ids)
    rows += measure.measure_weights("smollm2", model, ids)
    assert _values(rows, "multiset", "token_recovery") == [1.0]
    assert _values(rows, "functional_theft", "top1_agreement") == [1.0]
    assert _values(rows, "weight_alignment", "token_recovery") == [1.0]  # with the recovered pi
