"""The reported values load, cover every paper artifact, quote the paper exactly, and their readings hold."""
from __future__ import annotations

import ast
import math
import os
import re
from pathlib import Path

import pytest

from report.paper_readings import table_mib, tokens_for_traffic, vit_embedding_params
from report.reported import (
    REPORTED_DIR,
    UNITS,
    Range,
    ReportedValueError,
    load_artifacts,
    load_reported,
    reported_by_artifact,
    reported_by_id,
)

ROOT = Path(__file__).resolve().parents[1]
# The 18 rows of design/PAPER_ARTIFACTS.md (17 quantitative artifacts + Tab. 1/Tab. 3), in order.
PAPER_ARTIFACTS = ["fig2", "traffic", "fig6b", "fig6a", "tab2", "tab4", "tab5", "fig7a", "fig7b", "fig7c",
                   "fig7d", "fig8", "fig9", "generation_3s", "millions", "kpa_bfa", "indexing", "tab1_tab3"]
# The shared papers folder (not in the repository): quotes are checked against it where present.
PAPERS = Path(os.environ.get("STIP_PAPERS_DIR", ROOT.parent / "shared" / "papers"))


@pytest.fixture(scope="module")
def values():
    return load_reported()


@pytest.fixture(scope="module")
def by_id(values):
    return reported_by_id(values)


def test_every_entry_loads_with_typed_fields(values):
    assert len(values) >= 90
    for v in values:
        assert v.unit in UNITS and v.quote.strip() and v.source.strip()
        assert v.value is None or isinstance(v.value, (float, tuple, Range))
        assert isinstance(v.setting, dict)
    ids = [v.id for v in values]
    assert len(ids) == len(set(ids))


def test_every_paper_artifact_has_an_entry(values):
    artifacts = load_artifacts(REPORTED_DIR / "stip_paper.yaml")
    assert list(artifacts) == PAPER_ARTIFACTS
    assert [a.row for a in artifacts.values()] == list(range(1, 19))
    grouped = reported_by_artifact(values)
    assert set(PAPER_ARTIFACTS) <= set(grouped)
    for artifact in PAPER_ARTIFACTS:
        if artifacts[artifact].quantitative and artifact not in ("tab4", "indexing"):
            assert any(v.value is not None for v in grouped[artifact]), artifact


def test_tab5_has_one_entry_per_model_of_the_table(by_id):
    absdiff = [k for k in by_id if k.startswith("tab5-absdiff-")]
    assert len(absdiff) == 16  # 4 GPT-2 + 3 LLaMA2 + 3 ViT + 4 BERT + LLaVA + Mixtral
    configs = {p.stem for p in (ROOT / "configs" / "model").glob("*.yaml")}
    for key in absdiff:
        config = by_id[key].setting["config"]
        assert config is None or config in configs, (key, config)


def test_quotes_are_in_the_paper_texts(values):
    if not PAPERS.is_dir():
        pytest.skip(f"paper texts not at {PAPERS} (set STIP_PAPERS_DIR)")
    norm = lambda s: re.sub(r"\s+", " ", s)  # noqa: E731
    texts = {f: norm((PAPERS / f).read_text(encoding="utf-8")) for f in {v.text_file for v in values if v.text_file}}
    missing = [v.id for v in values if v.text_file and norm(v.quote) not in texts[v.text_file]]
    assert not missing
    notes = PAPERS.parent / "design" / "BASELINES.md"
    if notes.is_file():
        baselines = norm(notes.read_text(encoding="utf-8"))
        assert not [v.id for v in values if v.provenance == "design_notes" and norm(v.quote) not in baselines]


# ---- the paper's arithmetic, recomputed from the stored values ----------------------------------

def test_throughput_ratio_is_ten_times_what_the_paper_prints(by_id):
    ratio = by_id["fig7a-stip-gpt2-124m-throughput"].number() / by_id["fig7a-ciphergpt-throughput"].number()
    assert ratio == pytest.approx(6.77e7, rel=1e-3)  # 45,366 / 6.7e-4
    printed = by_id["fig7b-throughput-improvement"].number()
    assert ratio / printed == pytest.approx(10.1, abs=0.05)  # "6.7 million times" is 10x too small


def test_ciphergpt_throughput_is_its_latency_inverted(by_id):
    per_token_s = 60 * by_id["fig2-ciphergpt-latency"].number()
    assert 1 / per_token_s == pytest.approx(by_id["fig7a-ciphergpt-throughput"].number(), rel=0.01)


def test_parameter_scale_fold_holds(by_id):
    fold = by_id["fig7b-stip-max-params"].number() / by_id["fig7b-baseline-max-params"].number()
    assert round(fold) == by_id["fig7b-param-scale-fold"].number() == 208


def test_ciphergpt_traffic_two_ways(by_id):
    gib = by_id["traffic-ciphergpt"].number() / 1024
    assert gib == pytest.approx(92.92, abs=0.01)
    assert by_id["fig2-ciphergpt-traffic"].number() < gib  # "90 GiB" rounds 92.9 down


def test_generation_slopes_fit_one_way_latency(by_id):
    compute = by_id["fig7c-slope-full-cloud"].number()
    for net, line in (("wired", "stip-wired"), ("wireless", "stip-wireless")):
        latency = by_id[f"fig7c-latency-{net}"].number()
        slope = by_id[f"fig7c-slope-{line}"].number()
        assert abs(compute + 2 * latency - slope) <= 2  # one-way: 32 vs 30, 512 vs 510
        assert abs(compute + latency - slope) >= 8  # as RTT: 22 vs 30, 262 vs 510


def test_generation_totals_follow_the_slopes(by_id):
    wired, cloud = by_id["fig7c-slope-stip-wired"].number(), by_id["fig7c-slope-full-cloud"].number()
    assert 100 * wired / 1e3 == by_id["generation-stip-wired-100-tokens"].number()  # 3 s
    assert 100 * cloud / 1e3 > by_id["generation-full-cloud-delay"].number()  # 1.2 s, "over 1s"
    assert 100 * (wired - cloud) / 1e3 == pytest.approx(by_id["fig7c-extra-latency-100-tokens"].number(), abs=0.25)


def test_traffic_matches_no_single_token_count(by_id):
    up = tokens_for_traffic(by_id["traffic-stip-uplink"].number(), 768)
    down = tokens_for_traffic(by_id["traffic-stip-downlink"].number(), 50257)
    assert up == pytest.approx(1980, abs=1) and down == pytest.approx(39.1, abs=0.1)
    assert up > 1024  # more than GPT-2's positions in fp32
    assert tokens_for_traffic(by_id["traffic-stip-uplink"].number(), 768, 2) == pytest.approx(3959, abs=1)


def test_903_mib_fits_neither_fp32_nor_fp16(by_id):
    reported = by_id["fig8-embedding-llama2-70b"].number()
    assert table_mib(32000, 8192, 4) == 1000 and table_mib(32000, 8192, 2) == 500
    assert reported not in (1000, 500)


def test_vit_embeddings_from_shapes(by_id):
    paper = by_id["fig8-embedding-vit"].value
    assert isinstance(paper, Range) and (paper.low, paper.high) == (3.9, 4.9)
    mib = [vit_embedding_params(h, 224, p) * 4 / 2**20 for h, p in ((768, 16), (1024, 16), (1280, 14))]
    assert mib == pytest.approx([2.833, 3.777, 4.136], abs=1e-3)
    assert mib[0] < paper.low  # vit-base's embedding is below the paper's range in fp32


def test_dcor_readings_ordered(by_id):
    assert by_id["fig6b-stip-dcor-d128"].number() > by_id["fig6b-stip-dcor-d8192"].number()
    assert by_id["fig6b-random-projection-dcor"].relation == "gt"


# ---- the loader refuses malformed files with a clear error ----------------------------------------

GOOD = """
texts: {STIP: paper.txt}
artifacts:
  - {id: fig2, row: 1, title: t}
entries:
  - id: a
    artifact: fig2
    paper: STIP
    system: STIP
    section: "3.1"
    quantity: q
    value: 1.5
    unit: ms
    source: s
    quote: words
    provenance: paper_text
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return path


def test_a_good_file_loads(tmp_path):
    (entry,) = load_reported(_write(tmp_path, GOOD))
    assert entry.value == 1.5 and entry.relation == "eq" and entry.text_file == "paper.txt"


@pytest.mark.parametrize("change,field,words", [
    (("unit: ms", "unit: msec"), "unit", "unknown unit 'msec'"),
    (("quote: words", "quote: ''"), "quote", "missing or empty"),
    (("value: 1.5", "value: 1e9"), "value", "not a number or range"),
    (("value: 1.5", "value: fast"), "value", "not a number or range"),
    (("value: 1.5", "value: {low: 5, high: 1}"), "value", "low 5 > high 1"),
    (("artifact: fig2", "artifact: fig99"), "artifact", "not declared"),
    (("provenance: paper_text", "provenance: memory"), "provenance", "memory"),
    (("    provenance: paper_text\n", "    provenance: paper_text\n    colour: red\n"), "colour", "unknown field"),
])
def test_malformed_entries_name_file_entry_and_field(tmp_path, change, field, words):
    path = _write(tmp_path, GOOD.replace(*change))
    with pytest.raises(ReportedValueError) as err:
        load_reported(path)
    message = str(err.value)
    assert str(path) in message and "entry 'a'" in message and f"field '{field}'" in message and words in message


def test_duplicate_ids_are_refused(tmp_path):
    entry = GOOD.split("entries:\n")[1]
    with pytest.raises(ReportedValueError, match=r"bad.yaml: entry 'a': field 'id': duplicate id"):
        load_reported(_write(tmp_path, GOOD + entry))


def test_quote_without_text_file_is_refused(tmp_path):
    with pytest.raises(ReportedValueError, match="field 'paper'.*no text file"):
        load_reported(_write(tmp_path, GOOD.replace("texts: {STIP: paper.txt}", "texts: {}")))


def test_number_refuses_ranges(by_id):
    with pytest.raises(ReportedValueError, match="fig8-embedding-vit"):
        by_id["fig8-embedding-vit"].number()


def test_loader_imports_neither_bench_nor_protocols():
    for module in ("reported.py", "paper_readings.py"):
        tree = ast.parse((ROOT / "report" / module).read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        # protocols.paths only says where configs/ is; nothing that measures may reach the reported numbers
        assert not {n for n in names if n.split(".")[0] in ("bench", "protocols") and n != "protocols.paths"}, module


def test_reported_values_are_finite(values):
    for v in values:
        numbers = () if v.value is None else (
            (v.value.low, v.value.high) if isinstance(v.value, Range) else
            v.value if isinstance(v.value, tuple) else (v.value,))
        assert all(math.isfinite(x) for x in numbers), v.id
