"""One module per paper artifact: what this harness measured, set beside what the paper printed.

A module `report/artifacts/<name>.py` declares
- `ARTIFACT: str`: the artifact id it reports on (configs/reported/stip_paper.yaml `artifacts`; several
  modules may report on one artifact, e.g. fig7c and fig7c_speculation);
- `EXPERIMENTS: tuple[str, ...]`: the results/<experiment>/ folders it reads (rows.parquet, runs.csv, ...);
- `compare(results: Path) -> list[Comparison]`: one Comparison per quantity the paper prints (or implies),
  each with a status and, for every gap, its reason; a missing experiment gives `not_measured` rows that
  say which command produces it, never an exception;
- optionally `figure(results: Path, out: Path) -> list[Path]`: the paper's figure redrawn from the
  measured rows, the paper's values as hollow markers (report.style).
`report.writer` (`python -m report`) discovers the modules, writes results/REPORT.md and results/report.csv from them.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import asdict, dataclass
from types import ModuleType

from report.reported import ReportedValue, reported_by_id

# Verdicts, one per comparison row.
STATUSES = {
    "reproduced": "measured within the paper's stated value or relation (after the stated host differences)",
    "differs": "measured, and it differs from the paper's value or relation (reason says why; the row's role says "
               "whether that can decide a claim: a host-bound difference never does)",
    "not_reproducible": "cannot be measured on this host (reason says what is missing); a derived reading may stand",
    "not_measured": "the experiment has not been run into results/ (reason gives the command)",
    "derived": "the paper's own arithmetic recomputed from its printed numbers (no measurement)",
    "qualitative": "a claim with no number to measure (the reason says what the harness checks instead)",
}

APPROX_BAND = (0.8, 1.25)
"""How close a number must be to the paper's to count as the same (`reproduced`, a claim `holds`, the paper's own
arithmetic agreeing with its print): within a factor 1.25 either way (0.8-1.25x), fixed before the data because the
paper prints its numbers as approximate. One band for every artifact module and for report/claims.py."""


def close_to_paper(measured: float, paper: float) -> bool:
    """Whether `measured` lies within APPROX_BAND of `paper` (never for a paper value of 0: no ratio to judge)."""
    return paper != 0 and APPROX_BAND[0] <= measured / paper <= APPROX_BAND[1]


# What a row is to the paper's claims (report/claims.py); the default is "paper".
SCOPES = {
    "paper": "compares a paper value or relation: a difference here is a genuine disagreement",
    "host_bound": "an absolute speed or a measurement this host bends (both halves on one CPU, one shared core): a "
                  "difference is the host's, never a failed claim",
    "extension": "a check the paper does not make (noise defence, another system's table, batch saturation): "
                 "reported apart, never decides a paper claim",
}

# Unit conversions to a base unit per dimension: time s, data B, rate token/s.
_SCALE = {
    "s": ("time", 1.0), "ms": ("time", 1e-3), "min": ("time", 60.0), "h": ("time", 3600.0),
    "B": ("data", 1.0), "KiB": ("data", 2.0**10), "MiB": ("data", 2.0**20), "GiB": ("data", 2.0**30),
    "KB": ("data", 1e3), "MB": ("data", 1e6), "GB": ("data", 1e9),
    "ms/token": ("time/token", 1e-3), "s/token": ("time/token", 1.0),
}


def convert(value: float, unit: str, to: str) -> float:
    """`value` in `unit` expressed in `to` (same dimension), naming both units when they do not convert."""
    if unit == to:
        return float(value)
    a, b = _SCALE.get(unit), _SCALE.get(to)
    if a is None or b is None or a[0] != b[0]:
        raise ValueError(f"cannot convert {unit!r} to {to!r}; convertible units: {sorted(_SCALE)}")
    return float(value) * a[1] / b[1]


@dataclass
class Comparison:
    """One row of the report: a paper quantity, its measured counterpart and the verdict."""

    artifact: str  # artifact id (stip_paper.yaml `artifacts`)
    quantity: str  # what is compared, in words a reader understands without the paper
    unit: str  # the unit of both `measured` and `paper`
    status: str  # a key of STATUSES
    measured: float | None = None  # None when not measured (status says why)
    paper: float | None = None  # the paper's value in `unit` (from `reported_id` by `paper_value`)
    reported_id: str | None = None  # the entry in configs/reported/*.yaml it comes from
    spread: str = ""  # e.g. "median of 5, range 0.41-0.47"
    workload: str = ""  # what was run here: model, tokens, batch, network profile
    differences: str = ""  # workload and host differences from the paper's setting
    reason: str = ""  # one sentence for every gap (required unless reproduced)
    source: str = ""  # the rows it comes from: experiment, phase/metric/source, or "derived"
    scope: str = ""  # a key of SCOPES, or "" (report.claims.role: host-bound for a time or rate unit, else paper)

    def __post_init__(self) -> None:
        if self.scope and self.scope not in SCOPES:
            raise ValueError(f"scope {self.scope!r} for {self.artifact}/{self.quantity!r}; known: {sorted(SCOPES)}")
        if self.status not in STATUSES:
            raise ValueError(f"status {self.status!r} for {self.artifact}/{self.quantity!r}; known: {sorted(STATUSES)}")
        if self.status != "reproduced" and not self.reason:
            raise ValueError(f"{self.artifact}/{self.quantity!r} has status {self.status!r} and no reason")

    @property
    def ratio(self) -> float | None:
        """measured / paper, where both are numbers and the paper's is not zero."""
        if self.measured is None or not self.paper:
            return None
        return self.measured / self.paper

    def record(self) -> dict:
        return {**asdict(self), "ratio": self.ratio}


def paper_value(reported_id: str, unit: str) -> float:
    """The reported entry's single number in `unit` (KeyError naming the id when it is not in configs/reported)."""
    entries = reported_by_id()
    if reported_id not in entries:
        raise KeyError(f"reported entry {reported_id!r} is not in configs/reported/*.yaml")
    entry: ReportedValue = entries[reported_id]
    return convert(entry.number(), entry.unit, unit)


def modules(errors: list[str] | None = None) -> list[ModuleType]:
    """Every artifact module of this package, sorted by name.

    With `errors` given, a module that fails to import or lacks the contract is left out and its error
    appended there (the report goes on without it); without, the first such module raises.
    """
    found = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        try:
            mod = importlib.import_module(f"{__name__}.{info.name}")
            for attr in ("ARTIFACT", "EXPERIMENTS", "compare"):
                if not hasattr(mod, attr):
                    raise AttributeError(f"report/artifacts/{info.name}.py lacks {attr} "
                                         "(see report/artifacts/__init__.py)")
        except Exception as err:
            if errors is None:
                raise
            errors.append(f"report/artifacts/{info.name}.py: {type(err).__name__}: {err}")
            continue
        found.append(mod)
    return found
