"""The accepted-length attack: the cloud's trace of speculative generation, and how it is classified."""
import numpy as np
import pytest
import torch

import stip
from stip.attacks import measure, speculation

from helpers.stip_models import sample_inputs, tiny_llama


class Tokenizer:
    """Characters as token ids (mod the model's vocab): enough to feed prompt texts to a tiny model."""

    def __init__(self, vocab):
        self.vocab = vocab

    def __call__(self, text, return_tensors=None):
        return {"input_ids": torch.tensor([[ord(c) % self.vocab for c in text]])}


def test_the_cloud_reads_drafted_and_accepted_lengths_off_the_requests():
    model = tiny_llama()
    developer = stip.ModelDeveloper(model, seed=0)
    device, server = developer.data_owner(), stip.ModelServer(developer.cloud_model())
    ids = sample_inputs(model, batch=1, seq=6)["input_ids"].repeat(1, 3)
    recorder, stats = speculation.RecordingServer(server), stip.GenerationStats()
    stip.generate(device, recorder, ids, 20, speculate=stip.PromptLookup(num_tokens=4), stats=stats)
    trace = speculation.cloud_trace(recorder.requests)
    assert trace.drafted == tuple(stats.drafted)
    assert trace.accepted == tuple(stats.accepted[:-1]), "every round's accepted length but the last is visible"
    assert sum(trace.accepted) > 0, "the repeated prompt must give accepted drafts, or this proves nothing"
    f = speculation.features(trace)
    assert f.shape == (len(speculation.FEATURES),) and 0 < f[0] <= 1
    with pytest.raises(ValueError, match="no requests recorded"):
        speculation.cloud_trace([])


def test_leave_one_out_classifier_and_chance():
    x = np.array([[0.2, 3.0], [0.25, 2.5], [0.3, 2.8], [0.9, 0.1], [0.95, 0.0], [0.85, 0.2]])
    labels = ["copy"] * 3 + ["open"] * 3
    assert speculation.loo_nearest_centroid(x, labels) == 1.0
    same = np.array([[0.0], [0.0], [1.0], [1.0]])  # each label once per feature value: nothing to learn
    assert speculation.loo_nearest_centroid(same, ["a", "b", "a", "b"]) == 0.0
    assert speculation.chance(["a", "a", "b"]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="two labels"):
        speculation.loo_nearest_centroid(x[:2], ["a", "a"])


def test_snippets_and_task_prompts():
    texts = ["# Title\n\nshort\n\n" + "plain words " * 10, "`code` " * 20, "x " * 60]
    snippets = speculation.public_snippets(texts, 2)
    assert snippets == [("plain words " * 10).strip(), ("x " * 60).strip()]
    pairs = speculation.task_prompts(snippets[:1])
    assert [label for label, _ in pairs] == ["copying", "open-ended"] and snippets[0] in pairs[0][1]
    with pytest.raises(ValueError, match="asked for 5"):
        speculation.public_snippets(texts, 5)


def test_measure_gives_accuracy_rows_beside_chance():
    model = tiny_llama()
    tok = Tokenizer(model.config.vocab_size)
    tasks = {"toy": [("copying", "abcabcabcabc"), ("open-ended", "qwertyuiop"), ("copying", "xyzxyzxyzxyz"),
                     ("open-ended", "lkjhgfdsam")]}
    rows = measure.measure_speculation("llama", model, tok, tasks, 8, stip.PromptLookup(num_tokens=4))
    (r,) = rows
    assert r["attack"] == "speculation_length" and r["unit"] == "fraction" and 0 <= r["value"] <= 1
    assert r["chance"] == 0.5 and r["n_queries"] == 4 and r["task"] == "toy"
