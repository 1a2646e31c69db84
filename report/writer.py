"""Writes the paper report: every artifact of the STIP paper, its printed values beside what this host measured.

`python -m report --results results` runs each artifact module of report/artifacts (their
`compare` and `figure`), adds a `not_measured` row for every declared artifact no module reported on
(and for a module that raised, with its error), states the paper's own arithmetic
(report/paper_readings.py), judges each paper claim from the rows (report/claims.py) and writes
<results>/REPORT.md (provenance, the claims table, one section per artifact, the failed and inconsistent claims),
<results>/report.csv (one row per Comparison) and <results>/claims.csv. A failing module never stops the report.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import traceback
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from types import ModuleType

import pandas as pd

from protocols.paths import REPO_ROOT
from report.artifacts import SCOPES, STATUSES, Comparison, modules
from report.artifacts._shared import measured_host, measured_in
from report.claims import VERDICTS, ClaimVerdict, judge_all, role
from report.paper_readings import Reading, paper_readings
from report.reported import Artifact, ReportedValue, load_artifacts, load_reported
from report.weights import of_text

log = logging.getLogger(__name__)
ROOT = REPO_ROOT
FIGURES = "figures"  # <results>/figures/: what the modules' figure() functions draw
# The order statuses are counted in (claims, not rows, carry the verdicts: report/claims.py).
SEVERITY = ("differs", "not_measured", "not_reproducible", "reproduced", "derived", "qualitative")
WHOLE = "(the artifact as a whole)"  # the quantity of a row that stands for a missing or failed module
CSV_COLUMNS = ["artifact", "quantity", "status", "role", "paper_relation", "paper", "measured", "unit", "ratio",
               "spread", "workload", "weights", "differences", "reason", "reported_id", "source"]
REPORT_STEP = "report --results"  # the profile step that writes this report: it cannot time itself, so it is left out
OTHER_LOAD_BUSY = 0.25  # cores others kept busy over a profile above which its timings are pessimistic (as conditions)


@dataclass
class ArtifactReport:
    """What the report says about one artifact: its rows, figures and the paper arithmetic behind it."""

    artifact: Artifact
    rows: list[Comparison] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)
    readings: list[Reading] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # module errors (figure() failures) a reader must see

    def counts(self) -> Counter:
        return Counter(c.status for c in self.rows)


def _missing_row(artifact: str, reason: str, source: str = "") -> Comparison:
    return Comparison(artifact=artifact, quantity=WHOLE, unit="none", status="not_measured",
                      reason=reason, source=source)


def _compare(mod: ModuleType, results: Path) -> list[Comparison]:
    """The module's rows; a module that raises or returns no rows gives one not_measured row saying so."""
    name = mod.__name__.rsplit(".", 1)[-1]
    try:
        with measured_in(results):  # rows name the host that measured results/, not this one
            rows = list(mod.compare(results))
    except Exception as err:  # noqa: BLE001 - a broken module must not hide every other artifact
        log.error("report/artifacts/%s.py compare() raised:\n%s", name, traceback.format_exc())
        return [_missing_row(mod.ARTIFACT, f"report/artifacts/{name}.py compare() raised "
                             f"{type(err).__name__}: {err}", f"report.artifacts.{name}")]
    bad = [r for r in rows if not isinstance(r, Comparison)]
    if bad:
        return [_missing_row(mod.ARTIFACT, f"report/artifacts/{name}.py compare() returned "
                             f"{type(bad[0]).__name__}, not Comparison", f"report.artifacts.{name}")]
    if not rows:
        return [_missing_row(mod.ARTIFACT, f"report/artifacts/{name}.py compare() returned no rows",
                             f"report.artifacts.{name}")]
    return rows


def _figures(mod: ModuleType, results: Path, out: Path) -> tuple[list[Path], list[str]]:
    """The module's figures (none without figure()); an error becomes a note, not a failure."""
    if not hasattr(mod, "figure"):
        return [], []
    name = mod.__name__.rsplit(".", 1)[-1]
    try:
        with measured_in(results):  # titles name the host that measured results/, not this one
            return [Path(p) for p in mod.figure(results, out)], []
    except Exception as err:  # noqa: BLE001 - a figure that fails leaves the rows standing
        log.error("report/artifacts/%s.py figure() raised:\n%s", name, traceback.format_exc())
        return [], [f"report/artifacts/{name}.py figure() raised {type(err).__name__}: {err}"]


def collect(results: Path, mods: list[ModuleType] | None = None, reported: list[ReportedValue] | None = None,
            figures: Path | None = None) -> list[ArtifactReport]:
    """One ArtifactReport per declared artifact (STIP's paper first, in its row order), rows from `mods`;
    figures drawn into `figures` (default <results>/figures)."""
    declared = load_artifacts()
    order = sorted(declared.values(), key=lambda a: (a.file.name != "stip_paper.yaml", a.file.name, a.row))
    reports = {a.id: ArtifactReport(a) for a in order}
    errors: list[str] = []
    found = modules(errors) if mods is None else mods
    for error in errors:  # a module that does not import: its artifact gets the "no module" row, this says why
        log.error("artifact module left out: %s", error)
    for mod in found:
        rows = _compare(mod, results)
        drawn, notes = _figures(mod, results, figures or results / FIGURES)
        for row in [*rows, *([] if mod.ARTIFACT in reports else [None])]:
            artifact = mod.ARTIFACT if row is None else row.artifact
            if artifact not in reports:  # shown, not dropped: the module names an id configs/reported lacks
                reports[artifact] = ArtifactReport(Artifact(artifact, 0, "(not declared in configs/reported)", True,
                                                            Path("undeclared")))
                reports[artifact].notes.append(f"{mod.__name__} reports on {artifact!r}, which configs/reported/"
                                               f"*.yaml does not declare; declared: {sorted(declared)}")
            if row is not None:
                reports[artifact].rows.append(row)
        reports[mod.ARTIFACT].figures += drawn
        reports[mod.ARTIFACT].notes += notes
    unimportable = f"; modules left out: {'; '.join(errors)}" if errors else ""
    for rep in reports.values():
        if not rep.rows:
            rep.rows.append(_missing_row(rep.artifact.id, f"no module in report/artifacts/ reports on "
                                         f"'{rep.artifact.id}' (contract: report/artifacts/__init__.py)"
                                         + unimportable))
    values = load_reported() if reported is None else reported
    artifact_of = {v.id: v.artifact for v in values}
    for reading in paper_readings(values):
        for artifact in dict.fromkeys(artifact_of[i] for i in reading.from_ids if i in artifact_of):
            if artifact in reports:
                reports[artifact].readings.append(reading)
    return list(reports.values())


# ---- provenance -----------------------------------------------------------------------------------------------

def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def _version(pkg: str) -> str:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "not installed"


def provenance(results: Path) -> dict:
    """Commit, tree state (results/ excluded: the bench writes it), date, the host that measured (from the results)
    and the one writing the report, versions, the profile's steps."""
    status = _git("status", "--porcelain", "--", ".", f":(exclude){_relative(results)}")
    profile_path = results / "profile.json"
    profile = json.loads(profile_path.read_text()) if profile_path.is_file() else None
    ram = _ram_gib()
    return {
        "commit": _git("rev-parse", "HEAD") or "unknown (not a git checkout)",
        "tree": "unknown" if status is None else ("clean" if not status else
                                                  f"dirty ({len(status.splitlines())} changed paths)"),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "host": f"{_cpu_model()}, {os.cpu_count()} cores, " + (f"{ram:.0f} GiB RAM" if ram else "RAM unknown"),
        "measured": measured_host(results),  # the rows' host; `host` is only the machine that wrote the report
        "versions": f"python {platform.python_version()}, torch {_version('torch')}, "
                    f"transformers {_version('transformers')}",
        "profile": profile,
    }


def _relative(results: Path) -> str:
    try:
        return str(results.resolve().relative_to(ROOT))
    except ValueError:
        return "results"


# ---- writing -------------------------------------------------------------------------------------------------

def _num(value: float | None) -> str:
    if value is None or pd.isna(value):
        return ""
    if float(value).is_integer() and abs(value) < 1e6:
        return f"{int(value)}"
    return f"{value:.3g}"


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[object]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(_cell(c) for c in row) + " |" for row in rows)]


def _paper_cell(c: Comparison, reported: dict[str, ReportedValue]) -> str:
    prefix = {"gt": "> ", "lt": "< ", "approx": "≈ "}.get(reported[c.reported_id].relation, "") \
        if c.reported_id in reported else ""
    return prefix + _num(c.paper) if c.paper is not None else ("(qualitative)" if c.reported_id else "")


def _counts(rep: ArtifactReport) -> str:
    counts = rep.counts()
    return ", ".join(f"{counts[s]} {s}" for s in SEVERITY if counts[s])


def _host_load(profile: dict) -> str:
    """The profile's host-load note: other processes' cores while it ran (bench.conditions.OtherLoad) where recorded;
    else, for older records, the load average at start (which also holds the harness's own previous job)."""
    cores = profile.get("cpu_count") or 1
    others = profile.get("other_load_cores")
    if others is not None:
        return (f"; other processes kept {others:.2f} of {cores} cores busy while it ran"
                + (" (host busy: timings are pessimistic)" if others > OTHER_LOAD_BUSY else " (host idle)"))
    load = profile.get("load_average_at_start") or [None]
    return "" if load[0] is None else (f"; load average at start {load[0]:.1f} on {cores} cores"
                                       + (" (host busy: timings are pessimistic)" if load[0] > 0.5 * cores else ""))


def _profile_lines(profile: dict | None) -> list[str]:
    if not profile:
        return ["- profile: none recorded (no profile.json: the report ran alone, not by `python -m bench.profile`)"]
    steps = [s for s in profile.get("steps", []) if REPORT_STEP not in s.get("command", "")]
    failed = [s for s in steps if s.get("status") != "ok"]
    busy = _host_load(profile)
    lines = [f"- profile: `{profile.get('profile')}`, {len(steps)} steps, "
             f"{sum(s.get('minutes') or 0 for s in steps):.1f} min in all, {len(failed)} failed{busy}", ""]
    lines += _table(["step", "minutes", "status"],
                    [[f"`{s['command']}`", f"{s['minutes']:.1f}", s["status"]] for s in steps])
    return lines


def _claims_lines(claims: list[ClaimVerdict], reports: list[ArtifactReport]) -> list[str]:
    """The claims table: each claim in the paper's words, its verdict and the measured reason; links to the rows."""
    counts = Counter(v.verdict for v in claims)
    rows = [r for rep in reports for r in rep.rows]
    extension = sum(role(r) == "extension" for r in rows)
    lines = ["## The paper's claims", "",
             f"{len(claims)} claims: " + ", ".join(f"{counts[v]} {v}" for v in VERDICTS if counts[v])
             + f". Each claim is judged from the rows that bear on it (report/claims.py); the {len(rows)} rows "
             f"keep their detail below ({extension} of them extensions that decide no claim).", "",
             "Verdicts: " + "; ".join(f"**{k}**: {v}" for k, v in VERDICTS.items()) + ".", ""]
    table = []
    for i, v in enumerate(claims, 1):
        arts = list(dict.fromkeys(r.artifact for r in v.rows))
        table.append([i, v.claim.section, f"\"{v.claim.quote}\"", f"**{v.verdict}**", v.reason,
                      ", ".join(f"[{a}](#{a})" for a in arts) or ("results/privacy/" if v.claim.privacy else "")])
    return lines + _table(["#", "section", "claim (the paper's words)", "verdict", "why (from the rows)", "rows"],
                          table)


def markdown(reports: list[ArtifactReport], prov: dict, reported: dict[str, ReportedValue], results: Path,
             claims: list[ClaimVerdict] | None = None) -> str:
    """REPORT.md: provenance, the claims table, the artifact index, one section per artifact, the failed claims."""
    claims = claims or []
    roles = claim_roles(claims)
    total = Counter(c.status for rep in reports for c in rep.rows)
    of_artifact: dict[str, list[ClaimVerdict]] = {}
    for v in claims:
        for a in dict.fromkeys(r.artifact for r in v.rows):
            of_artifact.setdefault(a, []).append(v)
    lines = ["# STIP paper: reported vs measured", "",
             f"- commit `{prov['commit']}`, tree {prov['tree']}, written {prov['date']}",
             f"- measured on (as the results record it): {prov['measured']}",
             f"- report written on: {prov['host']}; {prov['versions']}", *_profile_lines(prov["profile"]), "",
             *_claims_lines(claims, reports), "",
             "## Artifacts", "",
             f"{len(reports)} artifacts, {sum(total.values())} rows: "
             + ", ".join(f"{total[s]} {s}" for s in SEVERITY if total[s]) + ". A row's role: "
             + "; ".join(f"**{k}**: {v}" for k, v in SCOPES.items()) + "; **derived**: the paper's own arithmetic.", "",
             "Statuses: " + "; ".join(f"**{k}**: {v}" for k, v in STATUSES.items()) + ".", ""]
    lines += _table(["#", "artifact", "rows", "claims it bears on"],
                    [[rep.artifact.row if rep.artifact.file.name == "stip_paper.yaml" else "-",
                      f"[{rep.artifact.id}](#{rep.artifact.id}) {rep.artifact.title}", _counts(rep),
                      ", ".join(f"{claims.index(v) + 1} ({v.verdict})" for v in of_artifact.get(rep.artifact.id, []))
                      or ("extension: decides no claim" if all(role(c) == "extension" for c in rep.rows)
                          else "none")] for rep in reports])
    for rep in reports:
        lines += ["", f"## {rep.artifact.id}", "", f"{rep.artifact.title}.", ""]
        lines += _table(["quantity", "paper", "measured", "unit", "ratio", "status", "role", "workload", "weights",
                         "differences", "reason"],
                        [[c.quantity, _paper_cell(c, reported),
                          _num(c.measured) + (f" ({c.spread})" if c.spread else ""), c.unit,
                          _num(c.ratio), c.status, roles.get(id(c), role(c)), c.workload, _weights(c),
                          c.differences, c.reason]
                         for c in rep.rows])
        for path in rep.figures:
            rel = os.path.relpath(path, results)
            lines.append(f"\n![{rep.artifact.id}: {Path(rel).stem}]({rel})" if path.suffix == ".png"
                         else f"\n- [{Path(rel).name}]({rel})")
        if rep.readings:
            lines += ["", "Paper arithmetic:", *(f"- {r.statement}" for r in rep.readings)]
        lines += [f"\n> {note}" for note in rep.notes]
    lines += ["", "## Claims that fail, with the measurement", ""]
    lines += [f"- **{claims.index(v) + 1}. {v.claim.section}** \"{v.claim.quote}\": {v.reason}"
              for v in claims if v.verdict == "fails"] or ["- none"]
    lines += ["", "## Where the paper's own numbers disagree", ""]
    lines += [f"- **{claims.index(v) + 1}. {v.claim.section}** \"{v.claim.quote}\": {v.reason}"
              for v in claims if v.verdict == "paper inconsistent"] or ["- none"]
    return "\n".join(lines) + "\n"


def claim_roles(claims: list[ClaimVerdict]) -> dict[int, str]:
    """id(row) -> the role a claim judged it in (a claim may name quantities as host-bound, e.g. fig9's socket rows),
    so the tables show the role the verdict used."""
    return {id(c): role(c, v.claim) for v in claims for c in v.rows}


def _weights(c: Comparison) -> str:
    """The weights of the models a measured row names (report.weights, from configs/model and the loader); none for
    a row with no measurement (nothing ran)."""
    return "" if c.measured is None or c.status == "derived" else of_text(f"{c.workload} {c.quantity}")


def write(results: Path, mods: list[ModuleType] | None = None, out: Path | None = None) -> tuple[Path, Path]:
    """Read `results`, write REPORT.md, report.csv, report_figures.csv and figures/ into `out` (default: results)."""
    results = Path(results)
    out = results if out is None else Path(out)
    out.mkdir(parents=True, exist_ok=True)
    reported = load_reported()
    reports = collect(results, mods, reported, figures=out / FIGURES)
    by_id = {v.id: v for v in reported}
    claims = judge_all([c for rep in reports for c in rep.rows], results, reported)
    roles = claim_roles(claims)
    records = [{**c.record(), "paper_relation": by_id[c.reported_id].relation if c.reported_id in by_id else None,
                "role": roles.get(id(c), role(c)), "weights": _weights(c)} for rep in reports for c in rep.rows]
    csv_path, md_path = out / "report.csv", out / "REPORT.md"
    pd.DataFrame(records, columns=CSV_COLUMNS).to_csv(csv_path, index=False)
    pd.DataFrame([{"artifact": rep.artifact.id, "path": os.path.relpath(p, out)} for rep in reports
                  for p in rep.figures], columns=["artifact", "path"]).to_csv(out / "report_figures.csv", index=False)
    md_path.write_text(markdown(reports, provenance(results), by_id, out, claims))
    pd.DataFrame([{"claim": v.claim.id, "section": v.claim.section, "verdict": v.verdict, "reason": v.reason,
                   "quote": v.claim.quote} for v in claims]).to_csv(out / "claims.csv", index=False)
    return md_path, csv_path


def main(argv: list[str] | None = None) -> None:
    """CLI: python -m report --results results."""
    p = argparse.ArgumentParser(prog="python -m report", description=__doc__)
    p.add_argument("--results", default="results", help="the results folder to read (and to write into)")
    p.add_argument("--out", default=None, help="write REPORT.md, report.csv and figures/ here instead")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for path in write(Path(args.results), out=None if args.out is None else Path(args.out)):
        print(path)


if __name__ == "__main__":
    main()
