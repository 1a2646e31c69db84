"""The latency artifact modules (fig7a, fig7c, generation_3s, fig7d, fig9) on a synthetic results folder whose
numbers are chosen so each verdict is known: slopes, link parts, the one-way reading, the breakdown, the split."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from protocols.results_schema import typed
from report.artifacts import fig7a, fig7c, fig7d, fig9, generation_3s

from helpers.comparisons import one_row

SMOL = 134515008
# STIP per-token latency (s) per profile: 40 ms compute, + 1 RTT (10 / 250 ms) or + 2 one-way waits (20 / 500 ms).
TOKEN_S = {"none": 0.040, "wired": 0.050, "wired_oneway": 0.060, "wireless": 0.290, "wireless_oneway": 0.540}


def _row(run_id, experiment, protocol, network, phase, metric, value, repeat=0, source="socket", seq_len=128,
         model="smollm2-135m", n_params=SMOL, batch_size=1):
    return {"run_id": run_id, "experiment": experiment, "protocol": protocol, "approx": None, "security": None,
            "model": model, "n_params": n_params, "network": network, "batch_size": batch_size, "seq_len": seq_len,
            "phase": phase, "metric": metric, "source": source, "value": value, "unit": "s", "seed": 0,
            "repeat": repeat}


def _write(root: Path, experiment: str, rows: list[dict], runs: list[dict]) -> None:
    (root / experiment).mkdir(parents=True)
    typed(pd.DataFrame(rows)).to_parquet(root / experiment / "rows.parquet")
    pd.DataFrame(runs).to_parquet(root / experiment / "runs.parquet")


def _generation(run_id, protocol, network, per_token, n=32):
    rows = []
    for rep in (0, 1):
        if protocol == "stip":  # the link time of a decode round trip: what the token pays above no link, each way
            one_way = (per_token - TOKEN_S["none"]) / 2 + 0.0001
            rows += [_row(run_id, "fig7c_generation", protocol, network, d, "latency", one_way + extra, rep,
                          source=source) for d in ("uplink", "downlink")
                     for source, extra in (("modelled", 0.0), ("socket", 0.015))]  # socket: + host overhead
        rows.append(_row(run_id, "fig7c_generation", protocol, network, "prefill", "latency", 0.5, rep))
        rows += [_row(run_id, "fig7c_generation", protocol, network, "token", "latency", per_token, rep,
                      seq_len=128 + i)
                 for i in range(1, n)]
        rows.append(_row(run_id, "fig7c_generation", protocol, network, "generate", "latency",
                         0.5 + per_token * (n - 1), rep))
    return rows


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("results")
    rows, runs = [], []
    for network, t in TOKEN_S.items():
        rows += _generation(f"s-{network}", "stip", network, t)
        runs.append({"run_id": f"s-{network}", "protocol.return_mode": "topk"})
    rows += _generation("fc", "full_cloud", "none", 0.035)
    runs.append({"run_id": "fc", "protocol.return_mode": None})
    _write(root, "fig7c_generation", rows, runs)

    rows, runs = [], []
    phases = {"stip": {"device_embed": 0.0002, "device_permute": 0.0001, "uplink": 0.015, "cloud_compute": 0.100,
                       "downlink": 0.005, "device_recover": 0.0001},
              "full_cloud": {"uplink": 0.0051, "cloud_compute": 0.101, "downlink": 0.005}}
    for protocol, ph in phases.items():
        for rep in range(3):
            rows += [_row(protocol, "fig7d_breakdown", protocol, "wired", p, "latency", v, rep,
                          source="host" if p.startswith("device_") else "socket") for p, v in ph.items()]
            rows += [_row(protocol, "fig7d_breakdown", protocol, "wired", d, "bytes", b, rep)
                     for d, b in (("uplink", 300_000 if protocol == "stip" else 2_000), ("downlink", 200))]
            rows.append(_row(protocol, "fig7d_breakdown", protocol, "wired", "total", "latency", sum(ph.values()), rep))
        runs.append({"run_id": protocol, "protocol.return_mode": "topk"})
    _write(root, "fig7d_breakdown", rows, runs)

    rows, runs = [], []
    for k in (0, 4, 8):
        for rep in range(2):
            rows.append(_row(f"k{k}", "fig9_model_split", "model_split", "wired", "total", "latency", 0.2 + 0.001 * k,
                             rep))
            rows.append(_row(f"k{k}", "fig9_model_split", "model_split", "wired", "total", "latency", 0.2 + 0.01 * k,
                             rep, source="modelled"))
        runs.append({"run_id": f"k{k}", "protocol.device_layers": k, "protocol.device_slowdown": 10.0})
    _write(root, "fig9_model_split", rows, runs)

    rows = []
    for protocol, scale in (("stip", 0.95), ("full_cloud", 1.0)):
        for b, tp in ((1, 500.0), (10, 900.0), (100, 950.0)):
            rows += [_row(f"{protocol}{b}", "fig7a_throughput", protocol, "none", "total", "throughput", tp * scale,
                          rep, seq_len=100, model="gpt2-124m", n_params=124439808, batch_size=b) for rep in range(2)]
    _write(root, "fig7a_throughput", rows,
           [{"run_id": f"{p}{b}"} for p in ("stip", "full_cloud") for b in (1, 10, 100)])
    return root


def test_fig7c_slopes_and_the_one_way_reading_reproduces_the_paper(results):
    rows = fig7c.compare(results)
    assert one_row(rows, "slope, full cloud").measured == pytest.approx(35.0)
    assert one_row(rows, "per-token slope, STIP wired_oneway").measured == pytest.approx(60.0)
    rtt = one_row(rows, "link part of a token (the profile's uplink + downlink per round trip), STIP wired (")
    one_way = one_row(rows, "round trip), STIP wired_oneway")
    assert (rtt.measured, rtt.paper, rtt.status) == (pytest.approx(10.2), 18.0, "differs")
    assert (one_way.measured, one_way.status) == (pytest.approx(20.2), "reproduced")
    assert "slope difference to no link: 20 ms/token" in one_way.spread
    assert "measured at the socket minus no link: 20 ms/token" in one_way.spread  # the host overhead cancels
    assert one_row(rows, "round trip), STIP wireless_oneway").status == "reproduced"
    verdict = one_row(rows, "which reading")
    assert verdict.status == "reproduced" and "best: one way, return topk" in verdict.source
    assert one_row(rows, "extra latency").measured == pytest.approx(100 * (0.060 - 0.035))


def test_generation_3s_projects_the_link_part_on_the_paper_compute(results):
    rows = generation_3s.compare(results)
    projected = one_row(rows,
                        "projected on the paper's compute: 100 x (12 ms + the profile's link part), STIP wired_oneway")
    assert projected.measured == pytest.approx(100 * (0.012 + 0.0202)) and projected.status == "reproduced"
    wired = one_row(rows, "projected on the paper's compute: 100 x (12 ms + the profile's link part), STIP wired,")
    assert wired.measured == pytest.approx(100 * (0.012 + 0.0102)) and wired.status == "reproduced"  # "in 3 s": a bound
    assert projected.scope == wired.scope == "paper"  # a projection on the paper's compute decides the claim
    full = one_row(rows, "full cloud")
    assert full.measured == pytest.approx(0.5 + 0.035 * 31) and full.status == "reproduced"  # "over 1 s": > 1 s only
    assert "over 1 s as the paper says" in full.reason


def test_fig7d_device_extra_cloud_ratio_and_communication(results):
    rows = fig7d.compare(results)
    assert one_row(rows, "additional on-device latency").measured == pytest.approx(0.4)
    assert one_row(rows, "additional on-device latency").status == "reproduced"  # 0.4 ms <= 1.7 ms
    ratio = one_row(rows, "STIP / full cloud")
    assert ratio.measured == pytest.approx(100 / 101) and ratio.paper == pytest.approx(11 / 12)
    comm = one_row(rows, "communication")
    assert comm.measured == pytest.approx(20.0 - 10.1) and comm.status == "reproduced"


def test_fig9_trend_on_modelled_and_measured_rows(results):
    rows = fig9.compare(results)
    assert one_row(rows, "per on-device layer (modelled)").measured == pytest.approx(10.0)
    assert one_row(rows, "fastest split (modelled)").measured == 0.0
    assert "device compute x 10" in one_row(rows, "per on-device layer (modelled)").workload


def test_fig7a_ratio_saturation_and_reported_baselines(results):
    rows = fig7a.compare(results)
    assert one_row(rows, "STIP / full cloud, gpt2-124m").measured == pytest.approx(0.95)
    gain = one_row(rows, "gain from batch 10 to 100")
    assert gain.measured == pytest.approx(950 / 900) and gain.status == "reproduced"
    assert one_row(rows, "Iron and THE-X").status == "not_reproducible"
    assert one_row(rows, "over CipherGPT").measured == pytest.approx(0.95 * 950 / 6.7e-4)


@pytest.mark.parametrize("module", [fig7a, fig7c, fig7d, fig9])
def test_every_figure_is_drawn(results, tmp_path, module):
    paths = module.figure(results, tmp_path)
    assert paths and all(p.stat().st_size > 10_000 for p in paths)


@pytest.mark.parametrize("module", [fig7a, fig7c, fig7d, fig9, generation_3s])
def test_a_missing_experiment_names_its_command(tmp_path, module):
    rows = module.compare(tmp_path)
    assert rows and all(r.status == "not_measured" and "python -m bench" in r.reason for r in rows)


def test_generation_3s_full_cloud_over_1s_is_only_a_lower_bound(tmp_path):
    """The paper says "over 1s delay": 6.7 s on this host agrees (no unstated "<= 3x" band); 0.9 s does not."""
    for per_token, status in ((0.2, "reproduced"), (0.013, "differs")):
        root = tmp_path / str(per_token)
        _write(root, "fig7c_generation", _generation("fc", "full_cloud", "none", per_token),
               [{"run_id": "fc", "protocol.return_mode": None}])
        full = one_row(generation_3s.compare(root), "full cloud")
        assert full.measured == pytest.approx(0.5 + per_token * 31) and full.status == status


def _fig7a_phases(root: Path, stip_parts: dict[str, float]) -> None:
    """fig7a rows at batch 100: full cloud 1 s of cloud compute, STIP's parts as given; throughput from the sum."""
    base = {"cloud_compute": 1.0, "uplink": 0.0, "downlink": 0.0}
    rows = []
    for protocol, parts in (("full_cloud", base), ("stip", stip_parts)):
        for rep in range(3):
            rows.append(_row(protocol, "fig7a_throughput", protocol, "none", "total", "throughput",
                             1e4 / sum(parts.values()), rep, seq_len=100, model="gpt2-124m", batch_size=100))
            rows += [_row(protocol, "fig7a_throughput", protocol, "none", phase, "latency", v, rep, seq_len=100,
                          model="gpt2-124m", batch_size=100, source="host" if phase.startswith("device") else "socket")
                     for phase, v in parts.items()]
    _write(root, "fig7a_throughput", rows, [{"run_id": p} for p in ("stip", "full_cloud")])


def test_fig7a_gap_is_placed_in_the_phase_the_rows_put_it(tmp_path):
    """The reason for STIP / full cloud < 0.8 names the part that holds the gap, computed from the phase rows:
    cloud compute (the same work in both arms: host noise, never a failed claim) or STIP's own link/device work."""
    _fig7a_phases(tmp_path / "cloud", {"cloud_compute": 1.4, "uplink": 0.01, "downlink": 0.0, "device_embed": 0.01})
    row = one_row(fig7a.compare(tmp_path / "cloud"), "throughput STIP / full cloud, gpt2-124m")
    assert row.status == "differs" and row.scope == "host_bound"
    assert "in cloud compute" in row.reason and "3 repeats" in row.reason
    _fig7a_phases(tmp_path / "link", {"cloud_compute": 1.0, "uplink": 0.4, "downlink": 0.05, "device_embed": 0.01})
    row = one_row(fig7a.compare(tmp_path / "link"), "throughput STIP / full cloud, gpt2-124m")
    assert row.status == "differs" and row.scope == "paper" and "in link" in row.reason
