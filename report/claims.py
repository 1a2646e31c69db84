"""The paper's claims, one verdict each, judged from the report rows (and attack rows) that bear on it.

Claims and their words: configs/reported/claims/*.yaml. A row's scope (report.artifacts.SCOPES) says whether it can
decide: extension rows never do, host-bound rows (absolute speeds, one-host measurements) never make a claim fail,
derived rows check the paper's own arithmetic. The rules are `judge` and `judge_privacy`; every reason quotes rows.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from report.artifacts import APPROX_BAND, Comparison, close_to_paper
from report.reported import REPORTED_DIR, ReportedValue
from stip.attacks.scoring import METRICS

CLAIMS_DIR = REPORTED_DIR / "claims"
VERDICTS = {
    "holds": "the measurements agree with the claim",
    "holds on this host's scale": "the relation holds; an absolute differs for the named host reason",
    "fails": "a genuine disagreement, with the measurement",
    "paper inconsistent": "the paper's own numbers disagree (shown)",
    "not testable here": "what would be needed is named",
}
HOST_UNITS = frozenset({"s", "ms", "min", "h", "ms/token", "s/token", "token/s"})  # absolute speeds
PRIVACY_COMMAND = "python -m bench.privacy results_dir=results"
RECOVERED = 0.5  # an attack recovering at least half of what it targets contradicts "avoids" / "cannot be uncovered"


@dataclass(frozen=True)
class Claim:
    """One claim of the paper in its words, and what bears on it (configs/reported/claims/*.yaml)."""

    id: str
    section: str
    quote: str
    from_ids: tuple[str, ...] = ()
    privacy: dict[str, tuple[str, ...]] = field(default_factory=dict)
    readings: tuple[str, ...] = ()
    host_bound: tuple[str, ...] = ()
    agree: str | None = None
    needs: str | None = None


@dataclass
class ClaimVerdict:
    """A claim, its verdict, the reason built from the rows, and the rows it rests on."""

    claim: Claim
    verdict: str
    reason: str
    rows: list[Comparison] = field(default_factory=list)


def load_claims(path: Path | None = None) -> list[Claim]:
    """Every claim of every file in configs/reported/claims/ (or `path`), validated."""
    files = sorted((path or CLAIMS_DIR).glob("*.yaml")) if (path or CLAIMS_DIR).is_dir() else [path]
    out: list[Claim] = []
    for file in files:
        for raw in yaml.safe_load(file.read_text())["claims"]:
            unknown = set(raw) - {"id", "section", "quote", "from", "privacy", "readings", "host_bound", "agree",
                                  "needs"}
            if unknown or not all(raw.get(k) for k in ("id", "section", "quote")):
                raise ValueError(f"{file}: claim {raw.get('id')!r}: needs id, section, quote; unknown {unknown}")
            if not raw.get("from") and not raw.get("privacy"):
                raise ValueError(f"{file}: claim {raw['id']!r} names no rows (`from`) and no attacks (`privacy`)")
            stale = {m for ms in (raw.get("privacy") or {}).values() for m in ms} - set(METRICS)
            if stale:  # a renamed metric would leave the claim judged on fewer attacks, silently
                raise ValueError(f"{file}: claim {raw['id']!r} reads metrics {sorted(stale)} that no attack writes; "
                                 f"known (stip.attacks.scoring.METRICS): {sorted(METRICS)}")
            out.append(Claim(raw["id"], raw["section"], " ".join(raw["quote"].split()), tuple(raw.get("from") or ()),
                             {k: tuple(v) for k, v in (raw.get("privacy") or {}).items()},
                             tuple(raw.get("readings") or ()), tuple(raw.get("host_bound") or ()), raw.get("agree"),
                             raw.get("needs")))
    return out


def role(row: Comparison, claim: Claim | None = None) -> str:
    """'extension', 'host_bound', 'derived' or 'paper': the row's own scope, else host-bound for an absolute speed
    (a time or rate unit) or a quantity the claim names as one-host."""
    if row.scope == "extension":
        return "extension"
    if row.status == "derived":
        return "derived"
    if row.scope == "host_bound" or (claim and any(s in row.quantity for s in claim.host_bound)):
        return "host_bound"
    if row.scope == "paper":
        return "paper"
    return "host_bound" if row.unit in HOST_UNITS else "paper"


def _num(v: float | None) -> str:
    return "" if v is None or pd.isna(v) else f"{v:.3g}"


def _row(c: Comparison) -> str:
    paper = f" vs paper {_num(c.paper)}" if c.paper is not None else ""
    unit = "" if c.unit in ("1", "none") else f" {c.unit}"
    return f"{c.quantity}: {_num(c.measured)}{unit}{paper}"


def _told(c: Comparison) -> str:
    """A row with its measurement and, where it has one, its reason."""
    return _row(c) + (f" ({c.reason})" if c.reason else "")


def _list(rows: list[Comparison], show=_told, most: int = 4) -> str:
    """At most `most` rows told, and how many more the artifact tables hold."""
    more = f"; and {len(rows) - most} more rows (see the artifacts)" if len(rows) > most else ""
    return "; ".join(show(c) for c in rows[:most]) + more


def _agrees(c: Comparison, relation: str) -> bool:
    """Whether a derived row's recomputed value agrees with the paper's printed one under its relation."""
    if c.paper is None or c.measured is None:
        return True
    if relation == "gt":
        return c.measured > c.paper
    if relation == "lt":
        return c.measured < c.paper
    return close_to_paper(c.measured, c.paper)  # "eq"/"approx": the report's one band (APPROX_BAND)


def judge(claim: Claim, rows: list[Comparison], relations: dict[str, str]) -> ClaimVerdict:
    """The claim's verdict from its rows (those whose reported_id it names); see the module docstring."""
    mine = [c for c in rows if c.reported_id in claim.from_ids and role(c, claim) != "extension"]

    def verdict(v: str, why: str) -> ClaimVerdict:
        return ClaimVerdict(claim, v, why, mine)

    if claim.needs:
        return verdict("not testable here", f"needs {claim.needs}")
    derived = [c for c in mine if role(c) == "derived"]
    wrong = [c for c in derived if not _agrees(c, relations.get(c.reported_id or "", "eq"))]
    if wrong:
        return verdict("paper inconsistent", "; ".join(f"{c.quantity}: {_num(c.measured)} from the paper's own "
                                                       f"numbers, printed {_num(c.paper)}" for c in wrong))
    if claim.agree:
        vals = [c.measured for c in derived if c.measured]
        if len(vals) >= 2 and max(vals) / min(vals) > APPROX_BAND[1]:
            return verdict("paper inconsistent", f"the paper's numbers imply different {claim.agree}: "
                           + "; ".join(f"{c.quantity}: {_num(c.measured)}" for c in derived))
    tested = [c for c in mine if c.status in ("reproduced", "differs")]
    deciding = [c for c in tested if role(c, claim) == "paper"]
    host = [c for c in mine if role(c, claim) == "host_bound"]
    host_off = [c for c in host if c.status != "reproduced"]
    untested = [c for c in mine if c.status in ("not_measured", "not_reproducible") and c not in host]
    gaps = f"; not tested here: {_list(untested, lambda c: f'{c.quantity} ({c.reason})')}" if untested else ""
    on_host = f"; bound to this host: {_list(host_off)}" if host_off else ""
    for reading in claim.readings:
        rows_r = [c for c in tested if reading in c.quantity and role(c, claim) == "paper"]
        if rows_r and all(c.status == "reproduced" for c in rows_r) and any(
                c.status == "differs" for c in deciding):
            others = [c for c in deciding if c.status == "differs"]
            return verdict("holds", f"under the reading '{reading}' (the paper does not say which): "
                           + _list(rows_r) + "; under the others: " + _list(others, _row) + gaps)
    failed = [c for c in deciding if c.status == "differs"]
    if failed:
        return verdict("fails", _list(failed) + gaps)
    if deciding:
        return verdict("holds on this host's scale" if host_off else "holds", _list(deciding) + on_host + gaps)
    if derived and not host_off:
        return verdict("holds", "by the paper's own numbers and published shapes: " + _list(derived, _row) + gaps)
    if host and any(c.status == "reproduced" for c in host) or (derived and host_off):
        return verdict("holds on this host's scale", _list([c for c in host + derived
                                                            if c.status in ("reproduced", "derived")])
                       + on_host + gaps)
    if host_off:
        return verdict("not testable here", "only absolute speeds measured, each bound to this host; needs the "
                       "paper's testbed" + on_host + gaps)
    return verdict("not testable here", gaps.removeprefix("; not tested here: ") or "no row bears on it")


def privacy_rows(results: Path) -> pd.DataFrame | None:
    """results/privacy/rows.csv, or None when it is missing or lacks the columns the claims read."""
    path = Path(results) / "privacy" / "rows.csv"
    if not path.is_file():
        return None
    rows = pd.read_csv(path)
    if not {"attack", "model", "metric", "value"} <= set(rows.columns):
        return None
    return rows


def _undefended(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows with no defence applied (column `defence` empty, and no defence in `parameters`), where they say."""
    keep = pd.Series(True, index=rows.index)
    if "defence" in rows.columns:
        keep &= rows.defence.isna() | (rows.defence.astype(str).str.strip() == "")
    if "parameters" in rows.columns:
        keep &= ~rows.parameters.fillna("{}").map(lambda p: bool(json.loads(p).get("defence")) if p.startswith("{")
                                                  else False)
    return rows[keep]


def judge_privacy(claim: Claim, results: Path) -> ClaimVerdict:
    """A security claim against the attack suite: fails when an attack it names, with no defence, recovers at least
    RECOVERED of its target on some model; holds when every named attack ran and none does."""
    rows = privacy_rows(results)
    if rows is None:
        return ClaimVerdict(claim, "not testable here", f"results/privacy/rows.csv is missing or lacks the columns "
                            f"attack, model, metric, value: run `{PRIVACY_COMMAND}`")
    rows = _undefended(rows)
    found, missing = [], []
    for attack, metrics in claim.privacy.items():
        m = rows[(rows.attack == attack) & rows.metric.isin(metrics)]
        if m.empty:
            missing.append(f"{attack} ({', '.join(metrics)})")
            continue
        best = m.groupby("model").value.max()
        assumption = str(m.assumption.iloc[0]) if "assumption" in m.columns else ""
        found.append((attack, best, assumption))
    broken = [(a, b, s) for a, b, s in found if b.max() >= RECOVERED]
    text = "; ".join(f"{a}: up to {b.max():.0%} recovered ({', '.join(f'{k} {v:.0%}' for k, v in b.items())})"
                     + (f", assuming {s}" if s else "") for a, b, s in broken or found)
    gap = f"; no rows for {', '.join(missing)}: run `{PRIVACY_COMMAND}`" if missing else ""
    if broken:
        return ClaimVerdict(claim, "fails", text + gap)
    if not found:
        return ClaimVerdict(claim, "not testable here", gap.lstrip("; "))
    if missing:
        return ClaimVerdict(claim, "not testable here", f"the attacks that ran recover less than {RECOVERED:.0%} "
                            f"({text}){gap}")
    return ClaimVerdict(claim, "holds", f"no attack recovers {RECOVERED:.0%} or more: {text}")


def judge_all(rows: Iterable[Comparison], results: Path, reported: list[ReportedValue],
              claims: list[Claim] | None = None) -> list[ClaimVerdict]:
    """Every claim's verdict, in file order."""
    rows = list(rows)
    relations = {v.id: v.relation for v in reported}
    return [judge_privacy(c, results) if c.privacy else judge(c, rows, relations)
            for c in (load_claims() if claims is None else claims)]
