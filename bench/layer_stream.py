"""Tab. 5 by layer streaming for the models this host cannot hold (protocols.layer_stream says what it checks).

`python -m bench.layer_stream [results_dir=results] [models=[llama2-7b,gpt2-1.5b]] [batch=1] [seq_len=256]`
writes <results_dir>/<experiment_name>/stream.parquet and stream.csv (one row per layer and per logits metric,
with the run's positions, seed and host seconds) and provenance.json (commit, host). Each model is written as it
finishes, so a long sweep keeps what it measured.
"""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from omegaconf import OmegaConf

from bench.app import _absolute
from bench.results import atomic_write_csv, atomic_write_json, atomic_write_parquet, provenance
from protocols.layer_stream import model_yaml, stream_check

log = logging.getLogger(__name__)


@dataclass
class StreamCfg:
    experiment_name: str = "tab5_stream"
    results_dir: str = "outputs/results"
    models: list[str] = field(default_factory=lambda: ["gpt2-1.5b", "llama2-7b", "llama2-13b", "llama2-70b",
                                                       "mixtral-8x7b"])
    batch: int = 1
    seq_len: int = 256
    seed: int = 0
    n_layers: int | None = None  # None: the published depth (anything else is a development run)
    threads: int = 2


def main(argv: list[str]) -> Path:
    """Stream every configured model, writing the table after each; returns the output folder."""
    cfg: StreamCfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(StreamCfg), OmegaConf.from_cli(argv)))
    if cfg.batch < 1 or cfg.seq_len < 1:
        raise ValueError(f"batch={cfg.batch}, seq_len={cfg.seq_len}: both must be >= 1")
    specs = [model_yaml(m) for m in cfg.models]  # refuse an unknown or unstreamable model before any work
    torch.set_num_threads(cfg.threads)
    out = _absolute(cfg.results_dir) / cfg.experiment_name
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "provenance.json", {**provenance(), "config": OmegaConf.to_container(
        OmegaConf.structured(cfg))})
    records: list[dict] = []
    for spec in specs:
        start = time.perf_counter()
        for rec in stream_check(spec, cfg.batch, cfg.seq_len, cfg.seed, cfg.n_layers):
            records.append({**rec, "batch": cfg.batch, "seq_len": cfg.seq_len, "positions": cfg.batch * cfg.seq_len,
                            "seed": cfg.seed, "n_layers": cfg.n_layers or rec["layer"] + 1})
        log.info("%s streamed in %.0f s", spec["name"], time.perf_counter() - start)
        df = pd.DataFrame.from_records(records)
        atomic_write_parquet(out / "stream.parquet", df)
        atomic_write_csv(out / "stream.csv", df)
        logits = df[(df.model == spec["name"]) & (df.stage == "logits")].set_index("metric")["value"]
        print(f"{spec['name']}: {int(df[df.model == spec['name']].layer.max()) + 1} layers streamed, "
              f"{cfg.batch * cfg.seq_len} positions: top-1 {logits['top1_agreement']:.1%}, "
              f"sum|diff| {logits['sum_abs_error']:.3g}, max|diff| {logits['max_abs_error']:.2g} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
    return out


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    main(sys.argv[1:])
