"""The claims table (report/claims.py): each verdict rule on toy rows, the quotes against the paper text, provenance
of weights, and the committed REPORT.md equal to what `python -m report` rebuilds from the committed results."""
import os
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from report import writer
from report.artifacts import APPROX_BAND, Comparison, close_to_paper
from report.claims import Claim, judge, judge_all, judge_privacy, load_claims, role
from report.reported import load_reported
from report.weights import of_text

ROOT = Path(__file__).resolve().parents[1]
PAPER = Path("/work/shared/papers/001_d372ad25b7d1bcfb.txt")


def _claim(**kw) -> Claim:
    return Claim(id="c", section="Sec. 1", quote="q", from_ids=("x",), **kw)


def _row(status: str, unit: str = "x", quantity: str = "q", scope: str = "", measured: float = 1.0,
         paper: float | None = 1.0) -> Comparison:
    return Comparison("fig2", quantity, unit, status, measured=measured, paper=paper, reported_id="x",
                      reason="" if status == "reproduced" else "because", scope=scope)


def test_a_relation_row_that_differs_fails_and_one_that_holds_holds():
    assert judge(_claim(), [_row("differs", measured=3)], {}).verdict == "fails"
    assert judge(_claim(), [_row("reproduced")], {}).verdict == "holds"


def test_a_host_bound_absolute_speed_never_fails():
    rows = [_row("reproduced"), _row("differs", unit="ms", measured=300, paper=12)]
    v = judge(_claim(), rows, {})
    assert v.verdict == "holds on this host's scale" and "300 ms vs paper 12" in v.reason
    assert judge(_claim(), rows[1:], {}).verdict == "not testable here"  # only an absolute: needs the testbed
    over = _row("reproduced", unit="s", measured=6.6, paper=1.0)  # "over 1 s", met by this host's slower compute
    over.reason = "this host's compute"
    v = judge(_claim(), [over], {})
    assert v.verdict == "holds on this host's scale" and "this host's compute" in v.reason


def test_extension_rows_decide_nothing():
    rows = [_row("reproduced"), _row("differs", scope="extension", measured=9)]
    assert judge(_claim(), rows, {}).verdict == "holds"
    assert role(rows[1]) == "extension"


def test_the_paper_arithmetic_that_disagrees_makes_the_paper_inconsistent():
    derived = _row("derived", measured=6.8e7, paper=6.7e6)
    assert judge(_claim(), [derived, _row("reproduced")], {"x": "eq"}).verdict == "paper inconsistent"
    assert judge(_claim(), [derived], {"x": "gt"}).verdict == "holds"  # "over 6.7e6": 6.8e7 agrees
    two = [_row("derived", measured=1980, paper=None), _row("derived", measured=39, paper=None)]
    assert judge(_claim(agree="tokens"), two, {}).verdict == "paper inconsistent"


def test_one_band_judges_closeness_to_the_paper_for_claims_and_artifacts():
    """report.artifacts.APPROX_BAND: 0.8-1.25x of the paper's value holds, just outside does not, a 0 paper never."""
    assert APPROX_BAND == (0.8, 1.25)
    assert close_to_paper(0.8, 1) and close_to_paper(12.5, 10) and not close_to_paper(0.79, 1)
    assert not close_to_paper(1.26, 1) and not close_to_paper(0, 0)
    assert judge(_claim(), [_row("derived", measured=1.25, paper=1.0)], {"x": "eq"}).verdict != "paper inconsistent"
    assert judge(_claim(), [_row("derived", measured=1.26, paper=1.0)], {"x": "eq"}).verdict == "paper inconsistent"


def test_a_reading_that_holds_decides_and_names_the_others():
    rows = [_row("reproduced", quantity="a, per-vector"), _row("differs", quantity="a, sample-wise", measured=7)]
    v = judge(_claim(readings=("per-vector", "sample-wise")), rows, {})
    assert v.verdict == "holds" and "per-vector" in v.reason and "sample-wise" in v.reason
    assert judge(_claim(readings=("sample-wise",)), rows, {}).verdict == "fails"


def test_not_reproducible_host_bound_rows_leave_a_consistent_claim_standing():
    rows = [_row("derived", measured=208.3, paper=208), _row("not_reproducible", unit="params", scope="host_bound",
                                                             measured=7e8, paper=7e10)]
    assert judge(_claim(), rows, {"x": "eq"}).verdict == "holds on this host's scale"
    assert judge(_claim(), [_row("not_measured", paper=None)], {}).verdict == "not testable here"
    assert judge(_claim(needs="CipherGPT's code"), [_row("reproduced")], {}).verdict == "not testable here"


def _privacy(tmp_path: Path, rows: list[dict]) -> Path:
    (tmp_path / "privacy").mkdir()
    pd.DataFrame(rows).to_csv(tmp_path / "privacy" / "rows.csv", index=False)
    return tmp_path


def test_security_claims_read_the_attack_rows(tmp_path):
    claim = Claim("m", "Sec. 5.3", "avoids", privacy={"multiset": ("token_recovery",)})
    assert judge_privacy(claim, tmp_path).verdict == "not testable here"  # no rows: the command is named
    assert "bench.privacy" in judge_privacy(claim, tmp_path).reason
    results = _privacy(tmp_path, [
        {"attack": "multiset", "model": "gpt2", "metric": "token_recovery", "value": 0.9, "defence": None},
        {"attack": "multiset", "model": "gpt2", "metric": "token_recovery", "value": 0.0, "defence": "noise"}])
    v = judge_privacy(claim, results)
    assert v.verdict == "fails" and "90%" in v.reason


def test_security_claim_holds_when_no_undefended_attack_recovers_much(tmp_path):
    claim = Claim("m", "Sec. 5.3", "avoids", privacy={"multiset": ("token_recovery",)})
    results = _privacy(tmp_path, [{"attack": "multiset", "model": "gpt2", "metric": "token_recovery", "value": 0.1}])
    assert judge_privacy(claim, results).verdict == "holds"


def test_weights_come_from_the_model_configs():
    assert "dequantised 4-bit" in of_text("smollm2-135m (d = 576)")
    assert of_text("GPT-2 124M, forward") == "gpt2-124m: random (published config)"
    assert "minilm-l6-mpcformer-distilled" in of_text("minilm-l6-mpcformer-distilled") and "minilm-l6:" not in \
        of_text("minilm-l6-mpcformer-distilled")


@pytest.mark.skipif(not PAPER.is_file(), reason="the shared papers folder is not here")
def test_a_claim_reading_a_metric_no_attack_writes_is_refused(tmp_path):
    """A renamed attack metric once left a security claim judged on fewer attacks with no warning."""
    (tmp_path / "c.yaml").write_text("claims:\n  - {id: x, section: s, quote: q, "
                                     "privacy: {weight_alignment: [token_recovery_with_recovered_pi]}}\n")
    with pytest.raises(ValueError, match="token_recovery_with_recovered_pi"):
        load_claims(tmp_path)


def test_every_claim_is_quoted_verbatim():
    text = " ".join(PAPER.read_text().split())
    claims = load_claims()
    assert len(claims) >= 25
    assert [c.id for c in claims if c.quote not in text] == []


# Not slow: 13 s user CPU for the whole `python -m report` (configs/reported and the parquet files read once each).
@pytest.mark.skipif(not (ROOT / "results" / "REPORT.md").is_file(), reason="no committed results/REPORT.md here")
def test_committed_report_is_what_the_committed_results_rebuild(tmp_path, monkeypatch):
    """No stale rows: `python -m report` over the committed results/ writes the committed REPORT.md, save the
    commit/date and 'report written on' lines (the machine that rebuilds it), and the same report.csv and
    claims.csv. Runs on any host: the rows name the host the results record (_shared.measured_host), not this one."""
    monkeypatch.setattr(os, "cpu_count", lambda: 97)  # a rebuilding host unlike any that measured: rows must not move
    writer.write(ROOT / "results", out=tmp_path)

    def body(path: Path) -> list[str]:
        return [line for line in path.read_text().splitlines()
                if not re.match(r"- (commit `|report written on: )", line)]

    assert body(tmp_path / "REPORT.md") == body(ROOT / "results" / "REPORT.md")
    for table in ("report.csv", "claims.csv"):
        assert pd.read_csv(tmp_path / table).equals(pd.read_csv(ROOT / "results" / table)), table
    shutil.rmtree(tmp_path)


def test_committed_claims_follow_from_the_committed_rows():
    """Fast staleness check (the full rebuild above is slow): the committed claims.csv is what report/claims.py
    judges from the committed report.csv rows and attack rows."""
    table = pd.read_csv(ROOT / "results" / "report.csv", keep_default_na=False, na_values={
        "measured": [""], "paper": [""]})
    rows = [Comparison(artifact=r.artifact, quantity=r.quantity, unit=r.unit, status=r.status,
                       measured=None if pd.isna(r.measured) else float(r.measured),
                       paper=None if pd.isna(r.paper) else float(r.paper), reported_id=r.reported_id or None,
                       reason=r.reason, scope="" if r.role == "derived" else r.role) for r in table.itertuples()]
    claims = judge_all(rows, ROOT / "results", load_reported())
    committed = pd.read_csv(ROOT / "results" / "claims.csv")
    assert [(v.claim.id, v.verdict) for v in claims] == list(zip(committed.claim, committed.verdict))
    assert [v.reason for v in claims] == committed.reason.tolist()
