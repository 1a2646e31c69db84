"""Print every stip.attacks attack measured on the real models (MiniLM, SmolLM2) and the config-built ones.

    PYTHONPATH=$PWD:$PWD/tests HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/attack_measurements.py \
        [tiny|minilm|smollm2|all]

Prints tidy rows (stip/attacks/rows.py) as a table; writes nothing. The rows come from
tests/helpers/attack_measurements.py (also used by tests/test_stip_attacks_real.py); docs/security.md quotes them.
"""
from __future__ import annotations

import logging
import sys

import pandas as pd
import torch

from helpers.attack_measurements import PARTS


def main(parts: list[str]) -> list[dict]:
    """Measure the named parts and print them as one table; unknown parts are refused with the choices."""
    unknown = [part for part in parts if part not in PARTS]
    if unknown:
        raise SystemExit(f"unknown part(s) {unknown}; choose from {sorted(PARTS)} or all")
    torch.set_num_threads(2)
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # one line per row as it comes
    rows = []
    for part in parts:
        rows += PARTS[part]()
    table = pd.DataFrame(rows).drop(columns=["assumption"]).dropna(axis=1, how="all")
    with pd.option_context("display.width", 250, "display.max_columns", 40, "display.max_rows", 2000,
                           "display.float_format", "{:.4g}".format):
        print(table.astype(object).fillna("").to_string(index=False))
    return rows


if __name__ == "__main__":
    chosen = sys.argv[1:] or ["all"]
    main(list(PARTS) if chosen == ["all"] else chosen)
