"""Numbers other papers print (STIP's own and the systems it compares with), loaded and validated.

The report sets each measured value beside one of these; a value here must say where it is printed
and quote the words, so a reader can check it. Data: configs/reported/*.yaml. Imports neither the
harness nor the protocols: the values are data, not code paths.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import yaml

from protocols.paths import config_group

REPORTED_DIR = config_group("reported")

# Units a reported value may carry. "1": dimensionless (distance correlation, abs. differences);
# "x": a ratio ("208-fold", "2.7x"); "none": a qualitative claim (value null).
UNITS = frozenset({
    "ms", "s", "min", "ms/token", "token/s", "MiB", "GiB", "GB", "params", "layers", "count",
    "percent", "1", "x", "none",
})
RELATIONS = frozenset({"eq", "approx", "gt", "lt"})  # "over 25 minutes" is gt 25 min
PROVENANCES = frozenset({"paper_text", "design_notes"})  # design_notes: not checkable in papers/ text
REQUIRED = ("id", "artifact", "paper", "system", "section", "quantity", "unit", "source", "quote", "provenance")
OPTIONAL = ("figure", "value", "relation", "setting", "notes")
TOP_LEVEL = frozenset({"texts", "artifacts", "entries"})


class ReportedValueError(ValueError):
    """A reported-values file that does not validate; the message names the file, entry and field."""


@dataclass(frozen=True)
class Range:
    """A value the paper gives as a range ("ranging from 3.9 MiB to 4.9 MiB")."""

    low: float
    high: float


Value = float | tuple[float, ...] | Range | None


@dataclass(frozen=True)
class Artifact:
    """One artifact of the paper (a figure, table or claim) that the report gives a row."""

    id: str
    row: int
    title: str
    quantitative: bool
    file: Path


@dataclass(frozen=True)
class ReportedValue:
    """One number (or qualitative claim, value None) as a paper prints it, with its provenance."""

    id: str
    artifact: str
    paper: str
    system: str
    section: str
    figure: str | None
    quantity: str
    value: Value
    relation: str
    unit: str
    setting: Mapping[str, Any]
    source: str
    quote: str
    provenance: str
    notes: str | None
    text_file: str | None  # the paper text (file name in the shared papers folder) the quote is from
    file: Path = field(compare=False)

    @property
    def is_qualitative(self) -> bool:
        return self.value is None

    def number(self) -> float:
        """The value as one float; refuses ranges, lists and qualitative claims by id."""
        if not isinstance(self.value, float):
            raise ReportedValueError(f"{self.file.name}: entry '{self.id}' has value {self.value!r}, not one number")
        return self.value


def _fail(path: Path, entry_id: str, field_name: str, problem: str) -> ReportedValueError:
    return ReportedValueError(f"{path}: entry '{entry_id}': field '{field_name}': {problem}")


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _value(raw: Any, path: Path, entry_id: str) -> Value:
    """number | list of numbers | {low, high} | null; anything else names the way out."""
    hint = ("write a number (YAML needs 1.0e+9, not 1e9, for a float), a list of numbers, "
            "{low: .., high: ..}, or null for a qualitative claim")
    if raw is None:
        return None
    if _is_number(raw):
        return float(raw)
    if isinstance(raw, list) and raw and all(_is_number(x) for x in raw):
        return tuple(float(x) for x in raw)
    if isinstance(raw, dict) and set(raw) == {"low", "high"} and all(_is_number(x) for x in raw.values()):
        if raw["low"] > raw["high"]:
            raise _fail(path, entry_id, "value", f"range low {raw['low']} > high {raw['high']}; swap them")
        return Range(float(raw["low"]), float(raw["high"]))
    raise _fail(path, entry_id, "value", f"{raw!r} is not a number or range; {hint}")


def _text(raw: Mapping[str, Any], name: str, path: Path, entry_id: str, optional: bool = False) -> str | None:
    value = raw.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, (str, int, float)) or isinstance(value, bool) or not str(value).strip():
        raise _fail(path, entry_id, name, f"missing or empty ({value!r}); every entry needs it")
    return str(value)


def _entry(raw: Any, path: Path, artifacts: Mapping[str, Artifact], texts: Mapping[str, str]) -> ReportedValue:
    if not isinstance(raw, dict):
        raise _fail(path, "?", "entries", f"an entry must be a mapping, got {raw!r}")
    entry_id = str(raw.get("id") or "?")
    unknown = set(raw) - set(REQUIRED) - set(OPTIONAL)
    if unknown:
        raise _fail(path, entry_id, sorted(unknown)[0], f"unknown field; allowed: {REQUIRED + OPTIONAL}")
    fields = {name: _text(raw, name, path, entry_id) for name in REQUIRED}
    if fields["unit"] not in UNITS:
        raise _fail(path, entry_id, "unit", f"unknown unit {fields['unit']!r}; use one of {sorted(UNITS)}")
    if fields["provenance"] not in PROVENANCES:
        raise _fail(path, entry_id, "provenance", f"{fields['provenance']!r}; use one of {sorted(PROVENANCES)}")
    if fields["artifact"] not in artifacts:
        raise _fail(path, entry_id, "artifact", f"{fields['artifact']!r} is not declared under `artifacts:` "
                    f"(declared: {sorted(artifacts)})")
    text_file = texts.get(fields["paper"])
    if fields["provenance"] == "paper_text" and not text_file:
        raise _fail(path, entry_id, "paper", f"{fields['paper']!r} has no text file under `texts:` "
                    "(name it there, or mark the entry provenance: design_notes)")
    relation = raw.get("relation", "eq")
    if relation not in RELATIONS:
        raise _fail(path, entry_id, "relation", f"{relation!r}; use one of {sorted(RELATIONS)}")
    value = _value(raw.get("value"), path, entry_id)
    if fields["unit"] == "none" and value is not None:
        raise _fail(path, entry_id, "unit", "unit 'none' is for qualitative claims (value null) only")
    setting = raw.get("setting") or {}
    if not isinstance(setting, dict):
        raise _fail(path, entry_id, "setting", f"must be a mapping (model, batch, tokens, ...), got {setting!r}")
    figure = _text(raw, "figure", path, entry_id, optional=True)
    notes = _text(raw, "notes", path, entry_id, optional=True)
    return ReportedValue(value=value, relation=relation, setting=dict(setting), figure=figure, notes=notes,
                         text_file=text_file if fields["provenance"] == "paper_text" else None, file=path, **fields)


def _artifacts(doc: Mapping[str, Any], path: Path) -> dict[str, Artifact]:
    out: dict[str, Artifact] = {}
    for raw in doc.get("artifacts") or []:
        if (not isinstance(raw, dict) or not raw.get("id") or not raw.get("title")
                or not isinstance(raw.get("row"), int)):
            raise ReportedValueError(f"{path}: artifact {raw!r}: needs id, row (an integer) and title")
        if raw["id"] in out:
            raise ReportedValueError(f"{path}: artifact '{raw['id']}' is declared twice; ids must be unique")
        out[raw["id"]] = Artifact(str(raw["id"]), raw["row"], str(raw["title"]), bool(raw.get("quantitative", True)),
                                  path)
    if not out:
        raise ReportedValueError(f"{path}: no `artifacts:` declared; list the artifacts the entries belong to")
    return out


def _files(path: str | Path | None) -> list[Path]:
    path = Path(path) if path is not None else REPORTED_DIR
    files = sorted(path.glob("*.yaml")) if path.is_dir() else [path]
    if not files or not all(f.is_file() for f in files):
        raise FileNotFoundError(f"no reported-values file at {path}; expected configs/reported/*.yaml")
    return files


def _read(path: Path) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ReportedValueError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("entries"), list):
        raise ReportedValueError(f"{path}: expected a mapping with `artifacts:` and an `entries:` list")
    unknown = set(doc) - TOP_LEVEL
    if unknown:
        raise ReportedValueError(f"{path}: unknown top-level key(s) {sorted(unknown)}; allowed: {sorted(TOP_LEVEL)}")
    texts = doc.get("texts") or {}
    if not isinstance(texts, dict) or not all(isinstance(v, str) and v for v in texts.values()):
        raise ReportedValueError(f"{path}: `texts:` must map each paper name to its text file name, got {texts!r}")
    return doc


def _stamp(files: list[Path]) -> tuple[tuple[Path, int, int], ...]:
    """(file, mtime_ns, size) of each file: the key of the parse caches below, so an edited file is read again."""
    return tuple((f, f.stat().st_mtime_ns, f.stat().st_size) for f in files)


def load_artifacts(path: str | Path | None = None) -> dict[str, Artifact]:
    """The declared artifacts of one file or of every file in configs/reported/ (default)."""
    return dict(_load_artifacts(_stamp(_files(path))))


@lru_cache(maxsize=16)
def _load_artifacts(stamp: tuple[tuple[Path, int, int], ...]) -> dict[str, Artifact]:
    """load_artifacts, parsed once per file version (the report asks for it once per artifact)."""
    out: dict[str, Artifact] = {}
    for file, _, _ in stamp:
        for key, artifact in _artifacts(_read(file), file).items():
            if key in out:
                raise ReportedValueError(f"{file}: artifact '{key}' is also declared in {out[key].file}")
            out[key] = artifact
    return out


def load_reported(path: str | Path | None = None) -> list[ReportedValue]:
    """Every validated entry of one file, or of every file in configs/reported/ (default), in file order."""
    return list(_load_reported(_stamp(_files(path))))


@lru_cache(maxsize=16)
def _load_reported(stamp: tuple[tuple[Path, int, int], ...]) -> tuple[ReportedValue, ...]:
    """load_reported, parsed once per file version: the report looks values up ~140 times, and parsing the YAML
    each time took most of a rebuild (cProfile of `python -m report`)."""
    values: list[ReportedValue] = []
    seen: dict[str, Path] = {}
    for file, _, _ in stamp:
        doc = _read(file)
        artifacts = _artifacts(doc, file)
        for raw in doc["entries"]:
            entry = _entry(raw, file, artifacts, doc.get("texts") or {})
            if entry.id in seen:
                raise _fail(file, entry.id, "id", f"duplicate id (first in {seen[entry.id]}); ids must be unique")
            seen[entry.id] = file
            values.append(entry)
    return tuple(values)


def reported_by_artifact(values: list[ReportedValue] | None = None) -> dict[str, list[ReportedValue]]:
    """Entries grouped by artifact id, in file order (loads the default files when none are given)."""
    grouped: dict[str, list[ReportedValue]] = defaultdict(list)
    for value in load_reported() if values is None else values:
        grouped[value.artifact].append(value)
    return dict(grouped)


def reported_by_id(values: list[ReportedValue] | None = None) -> dict[str, ReportedValue]:
    """Entries keyed by id (loads the default files when none are given)."""
    return {v.id: v for v in (load_reported() if values is None else values)}
