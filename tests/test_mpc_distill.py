"""MPCFormer distillation (baselines/mpc/distill.py): the student's forward is the MPC simulation's, a tiny run
lowers its loss, and the saved student reloads through model.path=DIR and is judged against its teacher."""
from __future__ import annotations

import copy
import itertools

import pytest
import torch
from hydra import compose, initialize_config_dir
from transformers import BertConfig, BertModel

from baselines.mpc.approximations import get_approximation
from baselines.mpc.distill import DistillConfig, batches, corpus_sentences, distil, output_loss, save_student
from baselines.mpc.forward import simulate
from baselines.mpc.protocol import MpcProtocol
from baselines.mpc.student import _keep_mask, mpcformer_student, range_penalty
from bench.app import CONFIG_DIR
from protocols.contract import RunRequest
from protocols.models import build_spec, load_tokenizer
from protocols.sentences import SENTENCES
from transport.link import NetworkProfile

VOCAB = 120


def _tiny_teacher(seed: int = 0) -> BertModel:
    torch.manual_seed(seed)
    return BertModel(BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=64, max_position_embeddings=32)).eval()


def _random_batches(batch: int = 8, seq: int = 10, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    while True:
        ids = torch.randint(1, VOCAB, (batch, seq), generator=g)
        mask = torch.ones_like(ids)
        mask[: batch // 2, seq - 3:] = 0  # some padding, as real sentences have
        yield {"input_ids": ids * mask, "attention_mask": mask}


def _output_loss(student, teacher, batch) -> float:
    """Stage 2's objective on a batch no training step saw."""
    with torch.no_grad():
        return float(output_loss(student(**batch), teacher(**batch), batch["attention_mask"]))


def test_student_forward_is_the_mpc_simulation_of_mpcformer():
    teacher = _tiny_teacher()
    batch = next(_random_batches())
    student = mpcformer_student(copy.deepcopy(teacher))
    with torch.no_grad():
        out = student(**batch).last_hidden_state.double()
    sim = simulate(teacher, batch["input_ids"], batch["attention_mask"], get_approximation("mpcformer"))
    exact = teacher(**batch).last_hidden_state.double()
    keep = batch["attention_mask"].bool()
    assert (out - sim)[keep].abs().max() < 1e-4  # the same Quad / 2Quad (float32 vs float64 + NR steps)
    assert (exact - sim)[keep].abs().max() > 1e-2  # and they do differ from the exact model
    assert float(range_penalty(student)) == 0.0  # small random weights: 2Quad's reciprocal is in range


def test_keep_mask_reads_boolean_and_additive_masks():
    scores = torch.zeros(1, 1, 2, 3)
    boolean = torch.tensor([True, True, False]).view(1, 1, 1, 3)
    additive = torch.where(boolean, 0.0, torch.finfo(torch.float32).min)
    for m in (boolean, additive):
        assert _keep_mask(m, scores)[0, 0, 1].tolist() == [1.0, 1.0, 0.0]
    assert bool((_keep_mask(None, scores) == 1).all())


def test_corpus_is_prose_and_excludes_the_evaluation_sentences():
    sentences = corpus_sentences()
    assert len(sentences) > 500
    assert not set(sentences) & set(SENTENCES)
    assert all(6 <= len(s.split()) <= 40 and s[0].isupper() for s in sentences)


def test_tiny_distillation_lowers_the_loss_and_the_student_reloads_against_its_teacher(tmp_path):
    teacher = _tiny_teacher()
    teacher_dir = tmp_path / "teacher"
    teacher.save_pretrained(teacher_dir)
    held_out = next(_random_batches(seed=99))
    undistilled = _output_loss(mpcformer_student(copy.deepcopy(teacher)), teacher, held_out)
    cfg = DistillConfig(steps_layerwise=30, steps_output=15, batch_size=8, seq_len=10, lr=3e-3)
    student, result = distil(teacher, _random_batches(), cfg)
    layerwise = result.losses["layerwise"]
    assert len(layerwise) == 30 and len(result.losses["output"]) == 15
    assert sum(layerwise[-5:]) / 5 < 0.5 * sum(layerwise[:5]) / 5, layerwise
    distilled = _output_loss(mpcformer_student(copy.deepcopy(student)), teacher, held_out)
    assert distilled < 0.5 * undistilled, (distilled, undistilled)
    out = save_student(student, tmp_path / "tiny-mpcformer-distilled", str(teacher_dir), cfg, result)

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        model_cfg = compose("config", overrides=["model=local", f"model.path={out}"]).model
    spec = build_spec(model_cfg)
    assert spec.name == "tiny-mpcformer-distilled"
    reloaded = spec.build()
    for (name, a), b in zip(student.state_dict().items(), reloaded.state_dict().values()):
        assert torch.equal(a, b), name
    assert type(reloaded.encoder.layer[0].intermediate.intermediate_act_fn).__name__ != "QuadGelu"
    reference = spec.reference(reloaded)  # the teacher, not the student
    assert torch.equal(reference.embeddings.word_embeddings.weight, teacher.embeddings.word_embeddings.weight)

    proto = MpcProtocol({"_target_": "", "name": "mpc", "approx": "mpcformer", "mode": "simulate"})
    request = RunRequest(batch_size=4, seq_len=10, repeats=1, warmup=0, seed=0)
    rows = {r.metric: r.value for r in proto.run(spec, NetworkProfile("none", None, 0.0), request)}
    ids = spec.make_inputs(4, 10, 0)
    with torch.no_grad():
        teacher_out = teacher(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"]).last_hidden_state
    sim = simulate(reloaded, ids["input_ids"], ids["attention_mask"], get_approximation("mpcformer"))
    expected = torch.nn.functional.cosine_similarity(sim.mean(1), teacher_out.double().mean(1), dim=-1).mean()
    assert rows["cosine_similarity"] == pytest.approx(float(expected), abs=1e-6)


def test_distil_config_refuses_bad_values_by_name():
    with pytest.raises(ValueError, match="batch_size=1"):
        DistillConfig(batch_size=1)
    with pytest.raises(ValueError, match="lr=0"):
        DistillConfig(lr=0)


def test_batches_are_padded_to_seq_len():
    tok = load_tokenizer("minilm")
    b = next(itertools.islice(batches(tok, corpus_sentences(), 4, 12, 0), 1))
    assert b["input_ids"].shape == (4, 12) and b["attention_mask"].shape == (4, 12)
