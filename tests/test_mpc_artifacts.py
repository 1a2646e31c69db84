"""The MPC artifact modules (fig2, mpc_reported) on synthetic results: not_measured rows name the command, the
measured rows set CipherGPT's and PUMA's reported numbers beside the runs, with a reason for every gap."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from report.artifacts import fig2, modules, mpc_reported

GB = 1e9


def _run(run_id: str, experiment: str, protocol: str, model: str, n_params: int, seq_len: int, task: str,
         phases: dict[str, tuple[float, float, float]], weight_open: float = 0.0, repeats: int = 3) -> list[dict]:
    """Rows of one run: per phase (engine seconds, rounds, bytes); 'total' is the request end to end."""
    end = "generate" if task == "generate" else "total"
    base = {"run_id": run_id, "experiment": experiment, "protocol": protocol, "model": model, "n_params": n_params,
            "network": "puma_lan", "batch_size": 1, "seq_len": seq_len, "seed": 0,
            "approx": "puma" if protocol == "mpc" else None,
            "security": "2pc-dealer-is-server" if protocol == "mpc" else None}
    out = []
    for rep in range(repeats):
        for phase, (sec, rounds, n_bytes) in phases.items():
            name = end if phase == "total" else phase
            src = "engine" if protocol == "mpc" else "socket"
            out += [{**base, "phase": name, "metric": "latency", "source": "modelled", "value": sec * 1.1 + rep,
                     "unit": "s", "repeat": rep},
                    {**base, "phase": name, "metric": "bytes", "source": src, "value": n_bytes, "unit": "B",
                     "repeat": rep},
                    {**base, "phase": name, "metric": "rounds", "source": src, "value": rounds, "unit": "count",
                     "repeat": rep}]
            if phase == "total" and protocol == "mpc":
                out += [{**base, "phase": "compute", "metric": "latency", "source": "engine", "value": sec + rep,
                         "unit": "s", "repeat": rep},
                        {**base, "phase": "weight_open", "metric": "bytes", "source": "engine", "value": weight_open,
                         "unit": "B", "repeat": rep}]
    return out


def _write(results: Path, experiment: str, rows: list[dict], tasks: dict[str, str]) -> None:
    folder = results / experiment
    folder.mkdir(parents=True)
    df = pd.DataFrame(rows)
    df.to_parquet(folder / "rows.parquet")
    pd.DataFrame({"run_id": list(tasks), "task": list(tasks.values())}).to_csv(folder / "runs.csv", index=False)


MPC_PHASES = {"linear": (10.0, 8, 3 * GB), "activation": (5.0, 15, 4 * GB), "total": (60.0, 2000, 13.76 * GB)}


@pytest.fixture
def results(tmp_path: Path) -> Path:
    _write(tmp_path, "mpc_bert_base",
           _run("b1", "mpc_bert_base", "mpc", "bert-base", 109_482_240, 128, "forward", MPC_PHASES, 1.73 * GB),
           {"b1": "forward"})
    _write(tmp_path, "mpc_gpt2",
           _run("g1", "mpc_gpt2", "mpc", "gpt2-124m", 124_439_808, 128, "forward", MPC_PHASES, 2.0 * GB)
           + _run("s1", "mpc_gpt2", "stip", "gpt2-124m", 124_439_808, 128, "forward", {"total": (0.05, 1, 4e5)})
           + _run("f1", "mpc_gpt2", "full_cloud", "gpt2-124m", 124_439_808, 128, "forward", {"total": (0.04, 1, 4e5)}),
           {"g1": "forward", "s1": "forward", "f1": "forward"})
    return tmp_path


def test_missing_experiments_give_not_measured_rows_with_the_command(tmp_path: Path) -> None:
    for mod in (fig2, mpc_reported):
        rows = mod.compare(tmp_path)
        assert rows and all(r.status == "not_measured" and "python -m bench" in r.reason for r in rows)
    assert {m.__name__.rsplit(".", 1)[1] for m in modules()} >= {"fig2", "mpc_reported"}


def test_fig2_sets_ciphergpt_beside_the_2pc_run_and_stip(results: Path) -> None:
    rows = fig2.compare(results)
    by_q = {r.quantity: r for r in rows}
    lat = next(r for r in rows if r.quantity.startswith("2PC latency, forward, 128"))
    assert lat.paper == 25 and lat.status == "differs" and "server itself draws" in lat.reason
    assert lat.measured == pytest.approx((60 * 1.1 + 1) / 60)  # median of the modelled repeats, in minutes
    traffic = next(r for r in rows if r.quantity.startswith("2PC traffic, forward, 128"))
    assert traffic.measured == pytest.approx(13.76e9 / 2**30) and traffic.spread == "identical in every repeat"
    ratio = by_q["CipherGPT reported time / STIP measured time (128 tokens)"]
    assert ratio.status == "reproduced" and ratio.measured == pytest.approx(25 * 60 / (0.05 * 1.1 + 1))
    close = by_q["STIP / full-cloud modelled latency (128 tokens)"]
    assert close.measured == pytest.approx((0.05 * 1.1 + 1) / (0.04 * 1.1 + 1))
    assert any(r.status == "not_measured" and "mpc_gpt2_generate" in r.reason for r in rows)


def test_mpc_table_has_measured_and_labelled_reported_rows(results: Path, tmp_path: Path) -> None:
    t = mpc_reported.table(results)
    assert {"PUMA (3PC ABY3, SPU), reported", "MPCFormer (2PC CrypTen, Quad+2Quad), rerun by PUMA"} <= set(t.row)
    missing = t[t.row.str.contains("not measured")]
    assert len(missing) == 6  # the grid's 8 forward cells but the two CrypTen runs the fixture holds
    cheetah = missing[(missing.model == "bert-base") & missing.row.str.startswith("spu cheetah / nimbus")].row.item()
    assert "python -m bench -m experiment=mpc_spu_paper model=bert-base run.seq_len=128 " \
           "protocol.mpc_protocol=cheetah protocol.approx=nimbus" in cheetah
    bert = t[(t.model == "bert-base") & t.row.str.contains(r"\(measured")].iloc[0]
    assert bert.bytes_GB == pytest.approx(13.76) and bert.weight_open_GB == pytest.approx(1.73)
    assert bert.modelled_wan_s > bert.modelled_lan_s > bert.compute_s
    rows = mpc_reported.compare(results)
    puma = next(r for r in rows if r.reported_id == "puma-bert-base-128-traffic")
    assert puma.paper == pytest.approx(10.77) and puma.ratio == pytest.approx(13.76 / 10.77)
    assert "1.73 GB re-open the shared weights" in puma.reason and "3.00 GB" in puma.reason
    paths = mpc_reported.figure(results, tmp_path / "figures")
    assert [p.name for p in paths] == ["mpc_reported.csv", "mpc_reported.md"]
    assert "PUMA (3PC ABY3, SPU), reported" in paths[1].read_text()


def test_fig2_figure_is_drawn_from_the_rows(results: Path, tmp_path: Path) -> None:
    paths = fig2.figure(results, tmp_path / "figures")
    assert [p.name for p in paths] == ["fig2.png", "fig2.pdf"] and all(p.stat().st_size > 1000 for p in paths)
    assert fig2.figure(tmp_path / "empty", tmp_path / "none") == []


def test_spu_rows_are_modelled_over_their_parties_and_labelled_by_embedding(results: Path) -> None:
    """ABY3's bytes spread over 3 links (as the engine's own `modelled` rows); a device-embedding run says so; a
    reduced-depth run gets no ratio against a full model's reported number."""
    spu = []
    for run_id, security, n_params in (("a1", "3pc-honest-majority", 109_482_240), ("c1", "2pc", 14_000_000)):
        rows = _run(run_id, "mpc_spu_paper", "mpc", "bert-base", n_params, 128, "forward",
                    {"total": (100.0, 5000, 7.5 * GB)}, repeats=1)
        spu += [{**r, "security": security, "engine": "spu"} for r in rows]
    folder = results / "mpc_spu_paper"
    folder.mkdir()
    pd.DataFrame(spu).to_parquet(folder / "rows.parquet")
    pd.DataFrame({"run_id": ["a1", "c1"], "task": "forward", "protocol.engine": "spu",
                  "protocol.mpc_protocol": ["aby3", "cheetah"], "protocol.embedding": ["mpc", "device"]}
                 ).to_csv(folder / "runs.csv", index=False)
    t = mpc_reported.table(results).set_index("row")
    aby3 = t.loc["spu aby3 / puma (measured)"]
    assert aby3.modelled_puma_lan_s == pytest.approx(100.0 + 5000 * 1e-3 + 7.5 * GB * 8 / 3 / 5e9, rel=1e-3)
    cheetah = t.loc["spu cheetah / puma, device embeds (measured, REDUCED depth)"]
    assert cheetah.modelled_puma_lan_s == pytest.approx(100.0 + 5000 * 1e-3 + 7.5 * GB * 8 / 2 / 5e9, rel=1e-3)
    missing = t[t.index.str.contains("not measured") & (t.model == "bert-base")].index
    assert not any(r.startswith("spu aby3 / puma") for r in missing)  # measured at full depth
    assert any(r.startswith("spu cheetah / puma") for r in missing)  # measured at reduced depth only
    # the reduced-depth run is in the table but never set against a full model's reported number
    compared = [c for c in mpc_reported.compare(results) if "spu" in c.quantity]
    assert compared and all("cheetah" not in c.workload for c in compared)
    refused = [c for c in compared if "cheetah" in c.quantity]  # said in a row, not dropped
    assert refused and all(c.status == "not_measured" and c.measured is None and "not compared" in c.reason
                           and "14,000,000 parameters" in c.reason for c in refused)
