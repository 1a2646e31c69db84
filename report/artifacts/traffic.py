"""Sec. 7.5: device-cloud traffic of one GPT2-124m pass, what the shapes give per token count and the socket measured.

The paper prints 5.8 MiB up (permuted input embedding) and 7.5 MiB down (output) and no token count. From
GPT-2 124M's shapes the uplink is 768 fp32 values (+ an int64 mask entry) per token and the downlink 50,257 fp32
logits per token, so no single token count gives both: 7.5 MiB is 39 rows of logits, 5.8 MiB would be 1,980
tokens of embeddings (GPT-2 takes at most 1,024). traffic_gpt2 measures the socket bytes (payload + framing) at
39, 128 and 1,024 tokens; traffic_shapes gives the shape-derived bytes of the other models at 128 tokens.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from report import style
from report.artifacts import Comparison, paper_value
from report.artifacts._shared import experiment_rows, host_differences, not_measured
from report.paper_readings import MIB, tokens_for_traffic

ARTIFACT = "traffic"
EXPERIMENTS = ("traffic_gpt2", "traffic_shapes")
COMMAND = "python -m bench -m experiment=traffic_gpt2"
HIDDEN, VOCAB = 768, 50257  # GPT-2 124M
UP_TOKENS = tokens_for_traffic(5.8, HIDDEN)  # 1,980
DOWN_ROWS = tokens_for_traffic(7.5, VOCAB)  # 39.1


def shape_mib(tokens: int) -> tuple[float, float]:
    """(uplink, downlink) MiB of one GPT-2 124M STIP pass from shapes: fp32 embeddings + int64 mask; fp32 logits."""
    return tokens * (HIDDEN * 4 + 8) / MIB, tokens * VOCAB * 4 / MIB


def socket_table(results: Path) -> pd.DataFrame:
    """Per token count: socket and shape-derived uplink/downlink MiB of the measured GPT-2 124M passes."""
    rows = experiment_rows(results, "traffic_gpt2")
    if rows is None:
        return pd.DataFrame()
    rows = rows[(rows.metric == "bytes") & rows.phase.isin(["uplink", "downlink"]) & (rows.protocol == "stip")]
    table = rows.pivot_table(index="seq_len", columns=["phase", "source"], values="value", aggfunc="median") / MIB
    table.columns = [f"{p}_{s}" for p, s in table.columns]
    return table.reset_index()


def compare(results: Path) -> list[Comparison]:
    """Uplink and downlink at 39 and 1,024 tokens (socket) beside 5.8 / 7.5 MiB, and the token counts they imply."""
    up_paper, down_paper = paper_value("traffic-stip-uplink", "MiB"), paper_value("traffic-stip-downlink", "MiB")
    out = [
        Comparison(ARTIFACT, "GPT-2 124M tokens that 5.8 MiB of fp32 embeddings (768 values each) hold", "count",
                   "derived", measured=round(UP_TOKENS), reported_id="traffic-stip-uplink", source="derived",
                   reason=f"{UP_TOKENS:,.0f} tokens: more than GPT-2's 1,024 positions, so no GPT-2 pass sends 5.8 MiB "
                          "of fp32 embeddings (fp16 would be 3,959)"),
        Comparison(ARTIFACT, "GPT-2 124M rows of fp32 logits (50,257 each) that 7.5 MiB hold", "count", "derived",
                   measured=round(DOWN_ROWS, 1), reported_id="traffic-stip-downlink", source="derived",
                   reason=f"{DOWN_ROWS:.1f} rows; at 39 tokens the uplink is {shape_mib(39)[0]:.2f} MiB, not 5.8: "
                          "no single token count gives both printed numbers"),
    ]
    table = socket_table(results)
    if table.empty:
        return out + [not_measured(ARTIFACT, "uplink of one GPT-2 124M pass (socket)", "MiB", COMMAND,
                                   "traffic-stip-uplink"),
                      not_measured(ARTIFACT, "downlink of one GPT-2 124M pass (socket)", "MiB", COMMAND,
                                   "traffic-stip-downlink")]
    for _, r in table.iterrows():
        t = int(r.seq_len)
        if t not in (39, 1024):
            continue
        why = {39: "the token count of the paper's downlink", 1024: "GPT-2's longest input"}[t]
        for side, paper_mib, rid in (("uplink", up_paper, "traffic-stip-uplink"),
                                     ("downlink", down_paper, "traffic-stip-downlink")):
            got = float(r[f"{side}_socket"])
            ok = abs(got / paper_mib - 1) < 0.05
            out.append(Comparison(
                ARTIFACT, f"{side} of one GPT-2 124M STIP pass at {t} tokens ({why}), socket", "MiB",
                "reproduced" if ok else "differs", measured=got, paper=paper_mib, reported_id=rid,
                workload=f"gpt2-124m full depth, batch 1, {t} tokens, network none; shapes give "
                         f"{float(r[f'{side}_shapes']):.3f} MiB",
                differences=host_differences("the paper states no token count"),
                reason="" if ok else (
                    f"at {t} tokens the shapes give {float(r[f'{side}_shapes']):.2f} MiB; the paper's "
                    f"{paper_mib:g} MiB fits {UP_TOKENS if side == 'uplink' else DOWN_ROWS:,.0f} tokens, and no one "
                    "token count fits both its numbers"),
                source="traffic_gpt2: uplink/downlink bytes (socket)"))
    return out


def figure(results: Path, out: Path) -> list[Path]:
    """MiB per pass vs token count: shape lines, socket points (filled), the paper's two numbers (hollow levels)."""
    table = socket_table(results)
    tokens = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
    fig, ax = style.figure(width=6.0, height=4.0)
    ups, downs = zip(*(shape_mib(t) for t in tokens))
    ax.plot(tokens, ups, color=style.color("uplink"), linewidth=1,
            label="uplink from shapes (768 fp32 + mask per token)")
    ax.plot(tokens, downs, color=style.color("downlink"), linewidth=1,
            label="downlink from shapes (50,257 fp32 logits per token)")
    if not table.empty:
        style.measured(ax, table.seq_len, table.uplink_socket, label="uplink, socket", system="uplink", line=False)
        style.measured(ax, table.seq_len, table.downlink_socket, label="downlink, socket", system="downlink",
                       line=False)
    style.paper(ax, [UP_TOKENS], [5.8], label="paper: 5.8 MiB up (at the 1,980 tokens it implies)", system="uplink")
    style.paper(ax, [DOWN_ROWS], [7.5], label="paper: 7.5 MiB down (at the 39 tokens it implies)", system="downlink")
    ax.axvline(1024, color="0.6", linestyle=":", linewidth=1)
    ax.text(1024, 0.3, " GPT-2 takes at most 1,024", fontsize=7, color="0.4", rotation=90,
            transform=ax.get_xaxis_transform())
    ax.set_xscale("log")
    ax.set_yscale("log")
    style.axes(ax, "tokens in the pass", "count", "traffic of one pass", "MiB")
    style.title(ax, "Sec. 7.5: STIP traffic of one GPT-2 124M pass", "batch 1, full depth, fp32, network none")
    style.legend(ax, outside="below", ncol=2, fontsize=6)  # under the axes: the paper's 7.5 MiB stays visible
    return style.save(fig, out, "traffic_gpt2")
