"""Tab. 2: how many keys STIP's permutations allow, per model, and what RoPE and grouped-query attention leave.

Arithmetic on the published shapes (configs/model/*.yaml through report/paper_readings.model_key_space), no
experiment: log10 of the data key pi (d!, the paper's 1/d! guessing probability), of one layer's Q/K key as
stip/keys.py draws it (whole KV groups move; under RoPE the order inside a head is fixed), of the same key had
any permutation of the attention width been allowed (the paper's reading), and of every key together. Tab. 2's
own counts were lost in the text's extraction; its surviving cells (BFA/KPA check marks, "1" parameter key for
a sequence permutation) are set beside these.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from report import style
from report.artifacts import Comparison
from report.paper_readings import MODEL_CONFIG_DIR as MODEL_DIR
from report.paper_readings import PAPER_MODELS, KeySpace, log10_factorial, model_key_space

ARTIFACT = "tab2"
EXPERIMENTS: tuple[str, ...] = ()
UNIT = "log10(count)"
GQA = ("llama2-70b", "mixtral-8x7b")  # the paper's models with grouped-query attention


def key_spaces() -> dict[str, KeySpace]:
    """Key spaces of every paper model with a config here."""
    return {name: model_key_space(name) for name in PAPER_MODELS}


def _mha_qk(name: str) -> float:
    """log10 of one layer's Q/K key had every query head its own KV head (no GQA); RoPE: only whole heads move."""
    cfg = yaml.safe_load((MODEL_DIR / f"{name}.yaml").read_text())["config"]
    return log10_factorial(int(cfg["num_attention_heads"]))


def _rows(name: str, keys: KeySpace) -> list[Comparison]:
    out = [Comparison(
        ARTIFACT, f"log10 key space of the data key pi, {name} (d = {keys.hidden}: d!)", UNIT, "derived",
        measured=round(keys.pi, 1), reported_id="tab2-key-space", source="derived (report/paper_readings.py)",
        workload=f"configs/model/{name}.yaml, {keys.n_layers} layers",
        reason=f"Tab. 2's counts were lost in extraction; d! = 10^{keys.pi:,.0f} is the paper's 1/d! (Sec. 5.3) "
               f"read on this shape; all keys together: 10^{keys.total:,.0f}")]
    note = ("whole heads move and RoPE fixes the order inside a head" if keys.qk < keys.vo else
            "whole heads move (Q and K share one order inside a head)")
    out.append(Comparison(
        ARTIFACT, f"log10 key space of one layer's Q/K permutation, {name}, as drawn vs any permutation", UNIT,
        "derived", measured=round(keys.qk, 1), source="derived (report/paper_readings.py)",
        workload=f"configs/model/{name}.yaml (published shape)",
        reason=f"{note}: 10^{keys.qk:,.1f} instead of 10^{keys.qk_unstructured:,.0f} "
               f"({keys.qk_reduction:,.0f} orders of magnitude less)" + (
                   "; under grouped-query attention only KV groups and the heads inside a group move"
                   if name in GQA else "")))
    return out


def compare(results: Path) -> list[Comparison]:
    """Per model: the data key's and one layer's Q/K key's log10 size; the sequence-permutation cell."""
    out: list[Comparison] = []
    for name, keys in key_spaces().items():
        out += _rows(name, keys)
    for name in GQA:
        keys = model_key_space(name)
        mha = _mha_qk(name)
        out.append(Comparison(
            ARTIFACT, f"log10 Q/K key space per layer, {name}: grouped-query attention vs one KV head per query",
            UNIT, "derived", measured=round(keys.qk, 1), source="derived (report/paper_readings.py)",
            workload=f"{name}: RoPE, grouped-query attention",
            reason=f"GQA ties query heads to 8 KV groups: n_kv! (group!)^n_kv = 10^{keys.qk:.1f} keys, "
                   f"against 10^{mha:.1f} (n_heads!) without grouping and 10^{keys.qk_unstructured:,.0f} unstructured"))
    out.append(Comparison(
        ARTIFACT, "parameter keys of a sequence-level permutation", "count", "derived", measured=1.0, paper=1.0,
        reported_id="tab2-seq-perm-params", source="derived",
        reason="a permutation of positions leaves the weights as they are (one parameter set); with masking and "
               "positions it is not equivalent, which is why STIP permutes features (the paper's point)"))
    return out


def figure(results: Path, out: Path) -> list[Path]:
    """log10 key-space size per model, three series side by side (d! and the unstructured Q/K reading coincide
    wherever the attention width is d, so each has its own x offset): the data key pi (d!, the paper's 1/d!), one
    layer's Q/K key as drawn, and any permutation of the attention width."""
    spaces = key_spaces()
    names = list(spaces)
    fig, ax = style.figure(width=8.5, height=4.0)
    series = (("pi", "data key pi: d! (the paper's 1/d! reading, Sec. 5.3)", "o", -0.22, "STIP"),
              ("qk_unstructured", "Q/K per layer, any permutation of the width", "s", 0.0, "random projection"),
              ("qk", "Q/K per layer as drawn (whole heads; RoPE fixes the order inside)", "^", 0.22, "mpc"))
    for field, label, marker, dx, system in series:
        vals = [max(getattr(spaces[n], field), 1e-1) for n in names]
        style.measured(ax, [i + dx for i in range(len(names))], vals, label=label, system=system, marker=marker,
                       line=False)
    ax.set_yscale("log")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
    style.axes(ax, "model (published shape)", None, "log10 of the number of keys", "decimal digits, log scale")
    style.title(ax, "Tab. 2: key space per model (arithmetic on the shapes)", "no run", host="derived")
    style.legend(ax, outside="below", ncol=1, fontsize=7)
    return style.save(fig, out, "tab2_key_space")
