"""Tab. 4: the transformed cloud model, fed plaintext embeddings, produces meaningless text (on real weights).

`python -m bench.tab4_generation` (results/tab4_generation/generation.json) runs SmolLM2-135M-Instruct's real
weights, since the paper's GPT2-1.5b weights are not available offline: the plaintext model's greedy text, STIP's
(device + cloud), and the cloud model's own greedy text when a thief feeds it plaintext embeddings and reads its
logits as token ids; plus that cloud model's top-1 agreement with the plaintext model over real sentences.
"""
from __future__ import annotations

import json
from pathlib import Path

from report.artifacts import Comparison
from report.artifacts._shared import host_differences, not_measured

ARTIFACT = "tab4"
EXPERIMENTS = ("tab4_generation",)
COMMAND = "python -m bench.tab4_generation results_dir=results"


def load(results: Path) -> dict | None:
    """The generation record, or None when it has not been run."""
    path = Path(results) / "tab4_generation" / "generation.json"
    return json.loads(path.read_text()) if path.is_file() else None


def compare(results: Path) -> list[Comparison]:
    """The cloud model's top-1 agreement with plaintext (paper: meaningless), STIP's equality, the texts."""
    rec = load(results)
    if rec is None:
        return [not_measured(ARTIFACT, "top-1 agreement of the transformed model on plaintext embeddings", "percent",
                             COMMAND, "tab4-on-cloud-generation")]
    workload = f"{rec['model']}, prompt {rec['prompt']!r}, {rec['decoding']} {rec['max_new_tokens']} tokens"
    diff = host_differences("SmolLM2-135M real weights instead of GPT2-1.5b (not available offline); greedy decoding "
                            "(the paper's sampling is not stated)")
    meaningless = rec["cloud_top1_agreement"] < 0.01
    return [
        Comparison(ARTIFACT, "top-1 agreement of the transformed cloud model (plaintext embeddings in, logits read "
                             "as token ids) with the plaintext model", "percent",
                   "reproduced" if meaningless else "differs", measured=100.0 * rec["cloud_top1_agreement"],
                   reported_id="tab4-on-cloud-generation",
                   spread=f"{rec['cloud_top1_positions']} positions of real sentences; chance "
                          f"{100 * rec['chance']:.1e}%",
                   workload=workload, differences=diff,
                   reason=f"meaningless, as the paper says: the cloud model writes {rec['cloud_on_plaintext']!r} where "
                          f"the plaintext model writes {rec['plaintext']!r}" if meaningless else
                          "the transformed model still agrees with the plaintext model on plaintext inputs",
                   source="tab4_generation: generation.json"),
        Comparison(ARTIFACT, "STIP generation (device + cloud) equals plaintext greedy generation", "percent",
                   "reproduced" if rec["stip_equals_plaintext"] else "differs",
                   measured=100.0 if rec["stip_equals_plaintext"] else 0.0,
                   reported_id="tab4-real-generation", workload=workload, differences=diff,
                   reason=f"STIP: {rec['stip']!r}" if rec["stip_equals_plaintext"] else
                          f"STIP wrote {rec['stip']!r}, plaintext {rec['plaintext']!r}",
                   source="tab4_generation: generation.json"),
    ]
