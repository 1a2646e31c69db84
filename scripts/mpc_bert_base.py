"""Measure the two-party CrypTen forward of BERT-base (random weights) at 128 tokens; write results/mpc/.

Usage: HF_HUB_OFFLINE=1 .venv/bin/python scripts/mpc_bert_base.py --approx puma --seq-len 128
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from transformers import BertConfig, BertModel

from baselines.mpc.session import run_mpc_forward

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--approx", default="puma")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--provider", default="TFP")
    ap.add_argument("--embedding", default="mpc")
    ap.add_argument("--timeout-s", type=float, default=3600)
    ap.add_argument("--out", default=str(ROOT / "results" / "mpc"))
    args = ap.parse_args()
    torch.manual_seed(0)
    model = BertModel(BertConfig()).eval()  # BERT-base shape, random weights (no hub)
    ids = torch.randint(0, model.config.vocab_size, (1, args.seq_len), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask).last_hidden_state.double()
    t0 = time.time()
    res = run_mpc_forward(model, ids, mask, approx=args.approx, provider=args.provider,
                          embedding=args.embedding, timeout_s=args.timeout_s)
    wall = time.time() - t0
    phases = res.runs[0].phases
    out = {
        "model": "bert-base (BertConfig() defaults, random weights, seed 0)", "seq_len": args.seq_len,
        "batch_size": 1, "approx": res.approx, "provider": res.provider, "embedding": res.embedding,
        "wall_s_including_startup_and_sharing": wall, "setup": res.setup, "phases": phases,
        "max_abs_error": (res.output - ref).abs().max().item(),
        "mean_abs_error": (res.output - ref).abs().mean().item(),
        "cosine_similarity_mean": torch.nn.functional.cosine_similarity(res.output, ref, dim=-1).mean().item(),
        "host": platform.node(), "cpus": torch.get_num_threads(), "torch": torch.__version__,
        "note": "bytes = on the wire (half the sum of CrypTen's per-party counts); bytes_party* = CrypTen per party",
    }
    dest = Path(args.out)
    dest.mkdir(parents=True, exist_ok=True)
    name = f"bert_base_{args.seq_len}_{res.approx}_{args.provider}_{args.embedding}.json"
    (dest / name).write_text(json.dumps(out, indent=2))
    tot = phases["total"]
    print(f"{name}: latency {tot['latency']:.1f} s, rounds {tot['rounds']:.0f}, wire {tot['bytes'] / 1e9:.3f} GB, "
          f"party0 {tot['bytes_party0'] / 1e9:.3f} GB, party1 {tot['bytes_party1'] / 1e9:.3f} GB, "
          f"max_abs_error {out['max_abs_error']:.4f}")


if __name__ == "__main__":
    main()
