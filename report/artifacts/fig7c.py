"""Fig. 7(c): latency vs generated tokens, the fitted per-token slopes beside the paper's 12 / 30 / 510 ms.

Measured: results/fig7c_generation (configs/experiment/fig7c_generation.yaml + fig7c_full_cloud.yaml): real
SmolLM2-135M (LLaMA architecture; LLaMA-2 7B does not fit this host), 128-token prompt, 100 new tokens, STIP
over none / wired / wireless and their one-way readings, full cloud. A slope is the least-squares fit of the
cumulative latency over the decode tokens (prefill excluded). Its compute part is this host's (a 135M model on
a 2-core CPU against a 7B model on an A100), so the comparable number is the link part of a token, against the
paper's slope minus its 12 ms full-cloud compute. It is judged on the profile's link time per decode round trip
(rows `uplink`/`downlink` latency, source `modelled`: rtt/2 + bytes / bandwidth per message on the measured bytes,
what the emulated link waits), which does not depend on this host's load; beside it the socket-measured link time
minus the no-link run's (host overhead removed) and the slope difference (on a busy host compute noise swamps it).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from report import style
from report.artifacts import Comparison, paper_value
from report.artifacts._latency import generation_slopes, param
from report.artifacts._shared import experiment_rows, host_differences, spread
from transport.link import NetworkProfile

ARTIFACT = "fig7c"
EXPERIMENTS = ("fig7c_generation",)
COMMAND = "python -m bench -m experiment=fig7c_generation && python -m bench -m experiment=fig7c_full_cloud"
PAPER_SLOPE = {"full_cloud": "fig7c-slope-full-cloud", "wired": "fig7c-slope-stip-wired",
               "wireless": "fig7c-slope-stip-wireless"}
# Each STIP profile, the paper line it stands for and the reading of the paper's latency it encodes.
PROFILES = {"wired": ("wired", "round trip"), "wired_oneway": ("wired", "one way"),
            "wireless": ("wireless", "round trip"), "wireless_oneway": ("wireless", "one way")}
# A link part within +-25% of the paper's counts as reproduced: a linear band (0.75-1.25x), wider below than the
# report's APPROX_BAND (0.8-1.25x, report.artifacts) every other paper number is judged by; not aligned yet, since
# its bandwidth notes (bandwidth_note) print this band's bounds.
LINK_TOLERANCE = 0.25
MS = 1e3
LOGITS_NOTE = " plus the permuted logits (49,152 fp32) at the assumed bandwidth"


def slopes(results: Path) -> pd.DataFrame | None:
    """Per (run, repeat) fitted slopes of results/fig7c_generation (None when it has not been run)."""
    rows = experiment_rows(results, "fig7c_generation", runs=True)
    if rows is None or rows.empty:
        return None
    return generation_slopes(rows)


def round_trip_links(rows: pd.DataFrame) -> pd.DataFrame:
    """Per STIP run: the bytes of one decode round trip (uplink + downlink, socket, median over repeats) and the
    profile it ran under (bandwidth_bps, rtt_s)."""
    rows = rows.assign(return_mode=param(rows, "return_mode", "full"))
    sent = rows[(rows.protocol == "stip") & rows.phase.isin(("uplink", "downlink")) & (rows.metric == "bytes")
                & (rows.source == "socket")]
    per = sent.groupby(["run_id", "network", "return_mode", "bandwidth_bps", "rtt_s", "repeat"]).value.sum()
    return per.groupby(level=[0, 1, 2, 3, 4]).median().rename("round_trip_bytes").reset_index()


def matching_bandwidth(profile: NetworkProfile, n_bytes: float, target_s: float) -> float:
    """The bandwidth (bit/s) at which `profile`'s modelled time of one round trip carrying `n_bytes`
    (NetworkProfile.time: rtt + 8 n / bandwidth) equals `target_s`; inf when the RTT alone reaches it."""
    if profile.bandwidth_bps is None:
        raise ValueError(f"profile {profile.name!r} has no bandwidth to scale (network none)")
    room = target_s - profile.time(1, 0)
    if room <= 0:
        return float("inf")
    return profile.bandwidth_bps * profile.transfer_time(n_bytes) / room  # transfer time scales as 1 / bandwidth


def bandwidth_note(profile: NetworkProfile, n_bytes: float, paper_s: float,
                   tolerance: float = LINK_TOLERANCE) -> str:
    """The row's deciding assumption: the assumed bandwidth, and the bandwidths at which the profile's link time
    on the measured bytes would equal the paper's and come within `tolerance` of it."""
    def fmt(bps: float) -> str:
        scale, unit = next((v, u) for v, u in ((1e9, "Gbit/s"), (1e6, "Mbit/s"), (1.0, "kbit/s")) if bps >= v)
        return f"{bps / scale:.3g} {unit}" if unit != "kbit/s" else f"{bps / 1e3:.3g} kbit/s"

    exact = matching_bandwidth(profile, n_bytes, paper_s)
    low = matching_bandwidth(profile, n_bytes, (1 + tolerance) * paper_s)  # slowest link still within
    high = matching_bandwidth(profile, n_bytes, (1 - tolerance) * paper_s)  # faster than this: below the band
    if low == float("inf"):
        within = f"never within {tolerance:.0%} (the RTT alone, {profile.rtt_s * MS:g} ms, is past it)"
    else:
        within = f"within {tolerance:.0%} from {fmt(low)}" + (" up" if high == float("inf") else f" to {fmt(high)}")
    return (f"deciding assumption: bandwidth {profile.bandwidth_bps / 1e6:g} Mbit/s (assumed, the paper states none);"
            f" on the measured {n_bytes / 1e3:.1f} kB per round trip and RTT {profile.rtt_s * MS:g} ms "
            f"(NetworkProfile.time) the link part would equal the paper's {paper_s * MS:.0f} ms at "
            f"{'no bandwidth' if exact == float('inf') else fmt(exact)}, {within}")


def _median_ms(table: pd.DataFrame, **eq: object) -> tuple[float | None, pd.Series]:
    m = table
    for k, v in eq.items():
        m = m[m[k] == v]
    vals = m["slope_s"].dropna() * MS
    return (float(vals.median()) if len(vals) else None), vals


def _workload(table: pd.DataFrame) -> str:
    r = table.iloc[0]
    return f"{r.model}, {r.prompt}-token prompt, {r.tokens} new tokens, batch 1"


def compare(results: Path) -> list[Comparison]:
    """Full-cloud slope, STIP slope and link part per profile and return mode, and which reading fits the paper."""
    table = slopes(results)
    if table is None:
        return [Comparison(ARTIFACT, f"per-token slope, {line}", "ms/token", "not_measured",
                           paper=paper_value(rid, "ms/token"), reported_id=rid, reason=f"run `{COMMAND}`")
                for line, rid in PAPER_SLOPE.items()]
    work, diff = _workload(table), host_differences("LLaMA2-7b in the paper")
    rows = experiment_rows(results, "fig7c_generation", runs=True)
    links = round_trip_links(rows) if rows is not None else pd.DataFrame()
    compute_note = "the compute part of a slope is this host's (SmolLM2-135M on CPU vs LLaMA2-7b on an A100)"
    out: list[Comparison] = []
    paper_compute = paper_value(PAPER_SLOPE["full_cloud"], "ms/token")
    fc, fc_vals = _median_ms(table, protocol="full_cloud", network="none")
    out.append(Comparison(ARTIFACT, "per-token slope, full cloud (cloud compute only)", "ms/token",
                          "not_measured" if fc is None else "differs", measured=fc, paper=paper_compute,
                          reported_id=PAPER_SLOPE["full_cloud"], spread=spread(fc_vals), workload=work,
                          differences=diff, source="fig7c_generation token latency (socket), least squares",
                          reason=f"run `{COMMAND}`" if fc is None else compute_note))
    fits: dict[str, list[float]] = {}
    for mode in sorted(table.return_mode.dropna().unique()):
        base, _ = _median_ms(table, protocol="stip", network="none", return_mode=mode)
        for profile, (line, reading) in PROFILES.items():
            slope, vals = _median_ms(table, protocol="stip", network=profile, return_mode=mode)
            if slope is None:
                continue
            rid = PAPER_SLOPE[line]
            paper_slope = paper_value(rid, "ms/token")
            what = f"STIP {profile} ({line} latency read as {reading}), return {mode}"
            out.append(Comparison(ARTIFACT, f"per-token slope, {what}", "ms/token", "differs", measured=slope,
                                  paper=paper_slope, reported_id=rid, spread=spread(vals), workload=work,
                                  differences=diff, source="fig7c_generation token latency (socket), least squares",
                                  reason=compute_note + "; the link part (next row) is what compares"))
            sel = table[(table.protocol == "stip") & (table.network == profile) & (table.return_mode == mode)]
            off = table[(table.protocol == "stip") & (table.network == "none") & (table.return_mode == mode)]
            link_vals = sel.link_model_s.dropna() * MS
            if link_vals.empty:
                continue
            socket = float(sel.link_s.median() - (off.link_s.median() if len(off) else 0.0)) * MS
            link, paper_link = float(link_vals.median()), paper_slope - paper_compute
            ok = abs(link - paper_link) <= LINK_TOLERANCE * paper_link
            fits.setdefault(f"{reading}, return {mode}", []).append(abs(link - paper_link) / paper_link)
            why = ("" if ok else
                   f"{reading} reading: {'one round trip' if reading == 'round trip' else 'two one-way waits'} per "
                   f"token{LOGITS_NOTE if mode == 'full' else ''}"
                   f" gives {link:.0f} ms, the paper's {paper_link:.0f} ms is 2 x its "
                   f"{'10' if line == 'wired' else '250'} ms with no transfer time")
            cross = f"; measured at the socket minus no link: {socket:.0f} ms/token" + (
                "" if base is None else f"; slope difference to no link: {slope - base:.0f} ms/token")
            ran = links[links.run_id.isin(sel.run_id)] if len(links) else links
            assumption = "bandwidth assumed (configs/network)"
            if len(ran):
                r = ran.iloc[0]
                assumption = bandwidth_note(NetworkProfile(profile, float(r.bandwidth_bps), float(r.rtt_s)),
                                            float(ran.round_trip_bytes.median()), paper_link / MS)
            out.append(Comparison(ARTIFACT, f"link part of a token (the profile's uplink + downlink per round trip), "
                                            f"{what}", "ms/token", "reproduced" if ok else "differs",
                                  measured=link, paper=paper_link, reported_id=rid, workload=work,
                                  spread=spread(link_vals) + cross,
                                  differences="paper: its slope minus its 12 ms full-cloud slope; here the profile's "
                                              f"link time on the measured bytes; {assumption}",
                                  reason=why, source="fig7c_generation uplink + downlink latency (modelled), per "
                                                     "decode round trip"))
    if fits:
        best = min(fits, key=lambda k: max(fits[k]))
        out.append(Comparison(ARTIFACT, "which reading of the paper's 10 / 250 ms reproduces its slopes", "none",
                              "reproduced" if max(fits[best]) <= LINK_TOLERANCE else "differs",
                              workload=work, differences="the paper states one latency per connection, not whether "
                                                         "it is a round trip or one way",
                              reason="" if max(fits[best]) <= LINK_TOLERANCE else "no reading within 25%",
                              source="fig7c_generation link parts: " + "; ".join(
                                  f"{k}: worst gap {max(v):.0%}" for k, v in sorted(fits.items())) +
                              f"; best: {best}"))
    extra = _extra_100(table)
    rid = "fig7c-extra-latency-100-tokens"
    out.append(Comparison(ARTIFACT, "extra latency of STIP (wired, one way, top-k) over full cloud for 100 tokens",
                          "s", "not_measured" if extra is None else "differs", measured=extra,
                          paper=paper_value(rid, "s"), reported_id=rid, workload=work, differences=diff,
                          source="fig7c_generation: 100 x (STIP slope - full-cloud slope)",
                          reason=f"run `{COMMAND}`" if extra is None else
                          "100 x the slope difference: the link part matches the paper's reading, but STIP's and "
                          "full cloud's compute differ on this CPU (the cloud's KV-cached step vs STIP's device round "
                          "trip), so the difference is not the paper's 2 x 10 ms per token alone"))
    return out


def _extra_100(table: pd.DataFrame) -> float | None:
    stip, _ = _median_ms(table, protocol="stip", network="wired_oneway", return_mode="topk")
    fc, _ = _median_ms(table, protocol="full_cloud", network="none")
    return None if stip is None or fc is None else 100 * (stip - fc) / MS


def figure(results: Path, out: Path) -> list[Path]:
    """Latency since the first token vs tokens (protocols.plotting.generation, log-log: a constant cost per token is a
    line of slope 1) beside the paper's slopes drawn as s x n; and the link part per profile beside the paper's."""
    table = slopes(results)
    rows = experiment_rows(results, "fig7c_generation", runs=True)
    if table is None or rows is None:
        return []
    fig, (ax, bx) = style.figure(ncols=2, width=5.6, height=4.2)
    rows = rows.assign(return_mode=param(rows, "return_mode", "full"))
    topk = (rows.return_mode == "topk").any()  # one STIP return mode (top-k: no logits transfer, as the paper's)
    keep = (rows.protocol == "full_cloud") & (rows.network == "none") | \
        (rows.protocol == "stip") & ((rows.return_mode == "topk") | (not topk))
    style.generation(ax, rows[keep].assign(**{"protocol.return_mode": ""}))
    xs = [1, 3, 10, 30, 100]
    for line, rid in PAPER_SLOPE.items():
        s = paper_value(rid, "s/token")
        style.paper(ax, xs, [s * n for n in xs], label=f"paper: {line.replace('_', ' ')}, {s * MS:g} ms/token",
                    system=line, marker="o" if line != "wireless" else "s", line=True)
    style.title(ax, "Fig. 7(c) latency vs generated tokens", _workload(table))
    style.legend(ax, outside="below", fontsize=6)
    paper_compute = paper_value(PAPER_SLOPE["full_cloud"], "ms/token")
    names = [p for p in PROFILES if p in set(table.network)]
    for i, mode in enumerate(sorted(table.return_mode.dropna().unique())):
        links = [float((table[(table.protocol == "stip") & (table.network == p) & (table.return_mode == mode)]
                        .link_model_s * MS).median()) for p in names]
        style.measured(bx, [j + 0.15 * i for j in range(len(names))], links, label=f"measured, STIP return {mode}",
                       colour=style.color("STIP" if mode == "topk" else "uplink"), line=False, marker="os"[i % 2])
    style.paper(bx, range(len(names)), [paper_value(PAPER_SLOPE[PROFILES[p][0]], "ms/token") - paper_compute
                                        for p in names], label="paper: slope - 12 ms compute", system="STIP")
    bx.set_xticks(range(len(names)), [p.replace("_", "\n") for p in names])
    bx.set_yscale("log")
    style.axes(bx, "network profile", None, "link part of the per-token slope", "ms/token, log scale")
    style.title(bx, "link part of a token: the profile's uplink + downlink", "RTT profiles vs one-way profiles")
    style.assumed(bx, "bandwidth 100 Mbit/s wired, 20 Mbit/s wireless", loc="upper left")
    style.legend(bx, outside="below", fontsize=6)
    return style.save(fig, out, "fig7c")
