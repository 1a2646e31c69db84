"""Sec. 5.2: "STIP can generate 100 tokens in the autoregressive mode in 3s latency with a wired connection",
"full-cloud inference has over 1s delay".

Measured: results/fig7c_generation (100 new tokens after a 128-token prompt, real SmolLM2-135M): the whole
request's latency (prefill included) of STIP on the wired profiles and of full cloud. The compute is this host's;
the projection row puts the measured per-token link part on the paper's 12 ms compute (Fig. 7(c)).
"""
from __future__ import annotations

from pathlib import Path

from report.artifacts import APPROX_BAND, Comparison, paper_value
from report.artifacts._shared import host_differences, spread
from report.artifacts.fig7c import COMMAND, PAPER_SLOPE, _workload, slopes

ARTIFACT = "generation_3s"
EXPERIMENTS = ("fig7c_generation",)
STIP_ID, FULL_ID = "generation-stip-wired-100-tokens", "generation-full-cloud-delay"
IN_TIME = APPROX_BAND[1]  # "in 3s": within 3 s, with the 1.25x every approximate paper number gets in this report


def compare(results: Path) -> list[Comparison]:
    """STIP wired and full cloud: 100 tokens measured here, and projected onto the paper's compute."""
    table = slopes(results)
    if table is None:
        return [Comparison(ARTIFACT, "latency of 100 generated tokens, STIP wired", "s", "not_measured",
                           paper=paper_value(STIP_ID, "s"), reported_id=STIP_ID, reason=f"run `{COMMAND}`"),
                Comparison(ARTIFACT, "latency of 100 generated tokens, full cloud", "s", "not_measured",
                           paper=paper_value(FULL_ID, "s"), reported_id=FULL_ID, reason=f"run `{COMMAND}`")]
    work, diff = _workload(table), host_differences("LLaMA2-7b in the paper")
    out = []
    paper_compute = paper_value(PAPER_SLOPE["full_cloud"], "s/token")
    for network in ("wired", "wired_oneway"):
        for mode in sorted(table.return_mode.dropna().unique()):
            m = table[(table.protocol == "stip") & (table.network == network) & (table.return_mode == mode)]
            if m.empty:
                continue
            what = f"STIP {network}, return {mode}"
            n = int(m.tokens.iloc[0])
            out.append(Comparison(
                ARTIFACT, f"latency of {n} generated tokens (prefill included), {what}", "s", "differs",
                measured=float(m.generate_s.median()), paper=paper_value(STIP_ID, "s"), reported_id=STIP_ID,
                spread=spread(m.generate_s), workload=work, differences=diff, source="fig7c_generation phase "
                "generate latency (socket)", reason=f"{n} tokens; this host's per-token compute "
                f"({float((m.slope_s - m.link_s).median()) * 1e3:.0f} ms without the link) is not "
                "the paper's 12 ms (next row projects the link part onto it)"))
            link = _link_ms(table, network, mode)
            projected = 100 * (paper_compute + link / 1e3)
            ok = projected <= IN_TIME * paper_value(STIP_ID, "s")  # "in 3 s": a bound, read with the report's 25%
            out.append(Comparison(
                ARTIFACT,
                f"100 tokens projected on the paper's compute: 100 x (12 ms + the profile's link part), {what}",
                "s", "reproduced" if ok else "differs", measured=projected, paper=paper_value(STIP_ID, "s"),
                reported_id=STIP_ID, workload=work, scope="paper",
                differences="compute taken from the paper (12 ms/token), link "
                "part measured here through the emulated link (bandwidth assumed)",
                source="fig7c_generation: STIP uplink + downlink latency per decode round trip (modelled)",
                reason="" if ok else f"over {IN_TIME:g} x 3 s: the link part on this profile, {link:.1f} ms per "
                f"token, is more than the paper's 3 s leave beside 12 ms of compute ({3e3 / 100 - 12:.0f} ms)"))
    fc = table[(table.protocol == "full_cloud") & (table.network == "none")]
    if fc.empty:
        out.append(Comparison(ARTIFACT, "latency of 100 generated tokens, full cloud", "s", "not_measured",
                              paper=paper_value(FULL_ID, "s"), reported_id=FULL_ID,
                              reason="run `python -m bench -m experiment=fig7c_full_cloud`"))
    else:
        value = float(fc.generate_s.median())
        bound = paper_value(FULL_ID, "s")
        ok = value > bound  # the paper's words: "over 1s delay", a lower bound and nothing more
        out.append(Comparison(
            ARTIFACT, f"latency of {int(fc.tokens.iloc[0])} generated tokens (prefill included), full cloud", "s",
            "reproduced" if ok else "differs", measured=value, paper=bound, reported_id=FULL_ID,
            spread=spread(fc.generate_s), workload=work, differences=diff,
            source="fig7c_generation phase generate latency (socket)",
            reason=(f"over 1 s as the paper says; {value:.1f} s is this host's compute (SmolLM2-135M on a CPU), not "
                    "the paper's 7B model on A100s" if ok else
                    "this host generates faster than the paper's full cloud (a 135M model against 7B)")))
    return out


def _link_ms(table, network: str, mode: str) -> float:
    """The profile's link time per decode round trip on `network` (uplink + downlink, modelled on the measured bytes,
    ms/token), median over repeats."""
    m = table[(table.protocol == "stip") & (table.network == network) & (table.return_mode == mode)].link_model_s
    return float(m.median() * 1e3) if m.notna().any() else float("nan")
