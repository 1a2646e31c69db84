"""report/artifacts/fig7c_speculation.py: per-token latency with and without speculation beside the paper's."""
import pandas as pd
import pytest

from protocols.results_schema import typed
from report.artifacts import fig7c_speculation as art


def write_results(root, nets=(("wired", 0.010), ("wireless", 0.250)), experiment="speculation"):
    rows, runs = [], []
    for net, rtt in nets:
        for speculate, per_token, trips in (("none", rtt + 0.02, 1.0), ("prompt_lookup", 0.6 * rtt + 0.02, 0.6)):
            run = f"{net}-{speculate}"
            runs.append({"run_id": run, "rtt_s": rtt, "protocol.speculate": speculate})
            for rep in range(3):
                common = dict(run_id=run, experiment=experiment, protocol="stip", model="smollm2-135m",
                              network=net, repeat=rep, source="socket")
                rows += [dict(common, phase="per_token", metric="latency", value=per_token * (1 + 0.1 * rep)),
                         dict(common, phase="generate", metric="rounds_per_token", value=trips),
                         dict(common, phase="prefill", metric="latency", value=0.1)]
                rows += [dict(common, phase="token", metric="latency", value=per_token)] * 7
    folder = root / experiment
    folder.mkdir(parents=True)
    typed(pd.DataFrame(rows)).to_parquet(folder / "rows.parquet")
    pd.DataFrame(runs).to_parquet(folder / "runs.parquet")


def test_missing_experiment_names_the_command(tmp_path):
    rows = art.compare(tmp_path)
    assert {r.status for r in rows} == {"not_measured"} and len(rows) == 4
    assert all("experiment=speculation" in r.reason for r in rows)
    assert {r.paper for r in rows} == {30.0, 510.0}


def test_measured_medians_beside_the_paper_and_the_figure(tmp_path):
    write_results(tmp_path)
    rows = {r.quantity: r for r in art.compare(tmp_path)}
    plain = rows["STIP latency per generated token, wireless, without speculation"]
    spec = rows["STIP latency per generated token, wireless, with prompt-lookup speculation"]
    assert plain.measured == pytest.approx(270 * 1.1) and plain.paper == 510.0
    assert spec.measured == pytest.approx(170 * 1.1) and "0.6 round trips per token" in spec.reason
    assert rows["STIP round trips per generated token with speculation, wired"].measured == pytest.approx(0.6)
    factor = rows["STIP per-token latency with / without speculation, wireless"]
    assert factor.measured == pytest.approx(170 / 270)
    assert "3 suite prompts" in plain.workload and "8 new tokens" in plain.workload
    paths = art.figure(tmp_path, tmp_path / "fig")
    assert [p.suffix for p in paths] == [".png", ".pdf"] and all(p.stat().st_size > 0 for p in paths)


def test_make_bench_reduced_wireless_run_stands_in_for_the_full_sweep(tmp_path):
    write_results(tmp_path, nets=(("wireless", 0.250),), experiment="speculation_wireless")
    rows = art.compare(tmp_path)
    assert {r.status for r in rows if "wired," in r.quantity} == {"not_measured"}
    wireless = [r for r in rows if "wireless" in r.quantity]
    assert len(wireless) == 4 and all(r.measured is not None for r in wireless)
    assert "results/speculation_wireless/" in wireless[0].source
