"""Every stip.attacks attack on the real models (MiniLM, SmolLM2) and the config-built ones, as tidy rows.

Shared by tests/test_stip_attacks_real.py and the script benchmarks/attack_measurements.py, which prints the
full-size table (docs/security.md). The output-side corpus is
built offline from the long descriptions in the installed packages' METADATA files: packages
at even positions (sorted by name) are the users' traffic, the others the attacker's public text.
"""
from __future__ import annotations

import sysconfig
from pathlib import Path

import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer, ViTConfig, ViTForImageClassification

from protocols.models import minilm_path, smollm2_path
from stip.attacks import measure
from stip.attacks.frontier import noise_frontier

from helpers import stip_models

FAMILY_BUILDERS = ["tiny_gpt2", "tiny_bert", "tiny_llama", "tiny_mixtral", "tiny_mistral", "tiny_qwen2",
                   "tiny_qwen3", "tiny_gemma2", "tiny_gemma3", "tiny_phi3", "tiny_roberta", "tiny_distilbert"]
SENTENCES = ["The quick brown fox jumps over the lazy dog.", "My password is hunter2 and my PIN is 4711.",
             "Patient John Smith, born 12 March 1961, was diagnosed with type 2 diabetes.",
             "Transfer 5,000 euros from account DE89 3704 0044 0532 0130 00 to Alice tomorrow."]


def package_corpus() -> tuple[list[str], list[str]]:
    """(users' texts, public texts): METADATA long descriptions of the installed packages, alternating."""
    files = sorted(Path(sysconfig.get_paths()["purelib"]).glob("*.dist-info/METADATA"))
    bodies = []
    for f in files:
        text = f.read_text(errors="ignore")
        body = text.split("\n\n", 1)[1] if "\n\n" in text else ""
        if len(body) > 500:
            bodies.append(body)
    return bodies[0::2], bodies[1::2]


def chunks(tokenizer, texts: list[str], max_tokens: int, size: int = 128) -> list[torch.Tensor]:
    """[1, size] token chunks from the texts, up to max_tokens in all."""
    out, total = [], 0
    for text in texts:
        ids = tokenizer(text, return_tensors="pt")["input_ids"][0]
        for start in range(0, ids.numel() - size + 1, size):
            out.append(ids[start:start + size][None])
            total += size
            if total >= max_tokens:
                return out
    return out


def tiny_rows() -> list[dict]:
    rows = []
    for name in FAMILY_BUILDERS:
        model = getattr(stip_models, name)()
        vocab = model.get_input_embeddings().weight.shape[0]
        ids = torch.randint(2, vocab, (4, 16), generator=torch.Generator().manual_seed(0))
        rows += measure.measure_multiset(name, model, ids, drifts=(0.0, 0.05, 0.2))
        rows += measure.measure_weights(name, model, ids, drifts=(0.0, 0.2))
    vit = stip_models.tiny_vit()
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    rows += measure.measure_vit_patches("tiny_vit", vit, images)
    torch.manual_seed(0)  # ViT-Base/16 shapes (768 features per 3*16*16 = 768 pixels), one layer, random weights
    base16 = ViTForImageClassification(ViTConfig(num_hidden_layers=1)).eval()
    with torch.no_grad():
        base16.vit.embeddings.cls_token.normal_(std=0.02)
        base16.vit.embeddings.position_embeddings.normal_(std=0.02)
    rows += measure.measure_vit_patches("vit-base16-1layer", base16, torch.randn(1, 3, 224, 224))
    mixtral = stip_models.tiny_mixtral()
    ids = torch.randint(2, 89, (1, 16), generator=torch.Generator().manual_seed(0))
    rows += measure.measure_moe("tiny_mixtral", mixtral, ids)
    return rows


def minilm_rows() -> list[dict]:
    tok = AutoTokenizer.from_pretrained(minilm_path())
    model = AutoModel.from_pretrained(minilm_path()).eval()
    ids = tok(SENTENCES, padding=True, return_tensors="pt")["input_ids"]
    rows = measure.measure_multiset("minilm-l6", model, ids, drifts=(0.0, 0.01, 0.05, 0.1))
    rows += measure.measure_kpa("minilm-l6", model, ids, ns=(1, 2, 4, 16))
    rows += measure.measure_kpa("minilm-l6", model, ids, ns=(1, 2, 4, 16), sigma_rel=1.0)
    rows += measure.measure_weights("minilm-l6", model, ids, drifts=(0.0, 0.05))
    rows += measure.measure_theft("minilm-l6", model, ids)
    rows += measure.measure_projection("minilm-l6", model, ids, ns=(64, 384, 768))
    rows += noise_frontier("minilm-l6", model, ids, (0.0, 0.1, 0.3, 0.5, 1.0, 2.0, 4.0))
    return rows


def smollm2_rows() -> list[dict]:
    tok = AutoTokenizer.from_pretrained(smollm2_path())
    model = AutoModelForCausalLM.from_pretrained(smollm2_path(), dtype=torch.float32).eval()
    name = "smollm2-135m"
    ids = torch.nn.utils.rnn.pad_sequence([tok(s, return_tensors="pt")["input_ids"][0] for s in SENTENCES],
                                          batch_first=True, padding_value=tok.eos_token_id)
    short = ids[2:3, :10]
    gen = torch.Generator().manual_seed(0)
    vocab = model.get_input_embeddings().weight.shape[0]
    distractors = torch.randperm(vocab, generator=gen)[:128]
    candidates = torch.unique(torch.cat([short[0], distractors]))[:128 + short.shape[1]]
    rows = measure.measure_multiset(name, model, ids, drifts=(0.0, 0.01, 0.05, 0.1))
    rows += measure.measure_multiset(name, model, ids, drifts=(3,), drift_kind="finetune")
    rows += measure.measure_hidden(name, model, short, layers=(1, 8, 16, 24, 29), candidates=candidates)
    rows += measure.measure_hidden(name, model, short, layers=(1, 16), drifts=(0.01, 0.05),
                                   candidates=candidates)
    rows += measure.measure_hidden(name, model, short, layers=(1, 16), drifts=(3,), drift_kind="finetune",
                                   candidates=candidates)
    rows += measure.measure_weights(name, model, ids, drifts=(0.0, 0.05))
    rows += measure.measure_weights(name, model, ids, drifts=(3,), drift_kind="finetune")
    rows += measure.measure_kpa(name, model, ids, ns=(1, 2, 4, 16))
    rows += measure.measure_kpa(name, model, ids, ns=(1, 2, 4, 16), sigma_rel=1.0)
    rows += measure.measure_theft(name, model, ids)
    rows += measure.measure_projection(name, model, ids, ns=(64, 576, 1024))
    rows += measure.measure_split(name, model, short, layers=(1, 8), candidates=candidates)
    users, public = package_corpus()
    rows += measure.measure_frequency(name, model, chunks(tok, users, 8192), chunks(tok, public, 8192),
                                      corpus="installed packages' METADATA descriptions (alternate packages)")
    rows += noise_frontier(name, model, ids, (0.0, 0.1, 0.3, 0.5, 1.0, 2.0, 4.0))
    return rows


PARTS = {"tiny": tiny_rows, "minilm": minilm_rows, "smollm2": smollm2_rows}
