"""A tiny results folder written as `make bench` writes one: run folders (report.json + rows.parquet) aggregated by
bench.aggregate. Two models on purpose, with latencies far apart, so pooling them would show in every median."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench.aggregate import aggregate
from bench.results import RunReport, atomic_write_parquet, typed

# (model, protocol) -> modelled total latency (s) per repeat; the models differ by 1000x.
LATENCIES = {("bert-tiny", "stip"): [0.010, 0.012, 0.011], ("bert-tiny", "full_cloud"): [0.008, 0.009, 0.010],
             ("gpt2-124m", "stip"): [10.0, 12.0, 11.0], ("gpt2-124m", "full_cloud"): [8.0, 9.0, 10.0]}
NETWORK = {"name": "lan", "bandwidth_bps": 1e9, "rtt_s": 0.001}


def _rows(run_id: str, experiment: str, model: str, protocol: str, latencies: list[float]) -> pd.DataFrame:
    base = {"run_id": run_id, "experiment": experiment, "protocol": protocol, "model": model, "n_params": 1000,
            "network": NETWORK["name"], "bandwidth_bps": NETWORK["bandwidth_bps"], "rtt_s": NETWORK["rtt_s"],
            "batch_size": 1, "seq_len": 8, "seed": 0}
    records = []
    for repeat, total in enumerate(latencies):
        records += [
            {**base, "repeat": repeat, "phase": "total", "metric": "latency", "source": "modelled", "value": total,
             "unit": "s"},
            {**base, "repeat": repeat, "phase": "total", "metric": "latency", "source": "socket", "value": total,
             "unit": "s"},
            {**base, "repeat": repeat, "phase": "cloud_compute", "metric": "latency", "source": "socket",
             "value": total * 0.8, "unit": "s"},
            {**base, "repeat": repeat, "phase": "total", "metric": "bytes", "source": "socket", "value": 4096.0,
             "unit": "B"},
            {**base, "repeat": repeat, "phase": "total", "metric": "rounds", "source": "socket", "value": 1.0,
             "unit": "count"},
        ]
    records += [{**base, "repeat": 0, "phase": "output", "metric": metric, "source": "host", "value": value,
                 "unit": "ratio" if metric == "top1_agreement" else "abs"}
                for metric, value in (("top1_agreement", 1.0), ("max_abs_error", 1e-6), ("diverged_fraction", 0.0))]
    return typed(pd.DataFrame.from_records(records))


def write_tiny_results(folder: Path, experiment: str = "tiny") -> Path:
    """Write run folders under folder/runs and aggregate them into folder/results; returns the results folder."""
    runs_root, results = folder / "runs", folder / "results"
    for i, ((model, protocol), latencies) in enumerate(LATENCIES.items()):
        run_id = f"run{i}"
        run_dir = runs_root / experiment / run_id
        run_dir.mkdir(parents=True)
        rows = _rows(run_id, experiment, model, protocol, latencies)
        atomic_write_parquet(run_dir / "rows.parquet", rows)
        config = {"model": {"name": model}, "protocol": {"name": protocol}, "network": NETWORK,
                  "run": {"task": "forward"}}
        RunReport(run_id=run_id, experiment=experiment, config=config, status="ok", n_rows=len(rows)
                  ).save_json(run_dir)
    aggregate(runs_root, results)
    return results
