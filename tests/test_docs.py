"""The docs stay true to the tree: every module is mapped in docs/ARCHITECTURE.md, every `python -m bench` command
in README.md and docs/*.md composes with Hydra against configs/ (not run), every `python -m <module>` imports,
and the README stays a front door (<= 12 KB).

Command lines holding a placeholder are skipped, and counted: `<...>`, `...` / `…`, a shell variable (`$i`), a
value that is one capital letter or DIR/FILE (`model=M`, `model.path=DIR`), or a path under /abs/ (a folder of
your own on Hydra's search path).
"""
from __future__ import annotations

import importlib.util
import itertools
import re
import shlex
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from bench.app import CONFIG_DIR
from bench.schema import schema_problems
from bench.validate import sweep_without_multirun

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("stip", "transport", "protocols", "baselines", "bench", "report")
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PLACEHOLDER = re.compile(r"<[^>]*>|\.\.\.|…|\$\w+|=(?:[A-Z]|DIR|FILE)(?:\s|$)|/abs/")
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.M | re.S)
INLINE = re.compile(r"`([^`]+)`")
BENCH = re.compile(r"(?:python3? -m bench|stip-bench (run|sweep))(?=\s|$)(.*)")
MODULE = re.compile(r"python3? -m ([A-Za-z_][\w.]*)")
MAX_POINTS = 64  # sweep points composed per command line


def modules() -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for pkg in PACKAGES if (ROOT / pkg).is_dir()
                  for p in (ROOT / pkg).rglob("*.py") if p.name != "__init__.py")


def snippets(text: str) -> list[str]:
    """Each line of a fenced block (comments cut) and each inline code span (line breaks joined)."""
    lines = [line.split(" #")[0].strip() for block in FENCE.findall(text) for line in block.splitlines()]
    prose = FENCE.sub("", text)
    return [s for s in lines if s] + [" ".join(m.split()) for m in INLINE.findall(prose)]


def bench_commands() -> list[tuple[str, str]]:
    """(page, command line) for every `python -m bench` / `stip-bench run|sweep` in the README and docs."""
    out = []
    for page in PAGES:
        for snippet in snippets(page.read_text(encoding="utf-8")):
            for m in BENCH.finditer(snippet):
                sweep = " -m" if m.group(1) == "sweep" else ""
                out.append((page.name, f"python -m bench{sweep}{m.group(2)}".strip()))
    return sorted(set(out))


COMMANDS = bench_commands()
CHECKED = [(page, cmd) for page, cmd in COMMANDS if not PLACEHOLDER.search(cmd)]


def sweep_points(overrides: list[str]) -> list[list[str]]:
    """The cartesian product of comma-separated sweep values (capped), as plain override lists."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    choices = []
    for override, raw in zip(parsed, overrides):
        if override.is_sweep_override():
            key = raw.split("=", 1)[0]
            choices.append([f"{key}={value}" for value in override.sweep_string_iterator()])
        else:
            choices.append([raw])
    return [list(point) for point in itertools.islice(itertools.product(*choices), MAX_POINTS)]


def test_every_module_is_mapped_in_the_architecture_page():
    page = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    missing = [m for m in modules() if f"`{m}`" not in page]
    assert not missing, f"add these to docs/ARCHITECTURE.md (as `path`): {missing}"
    assert len(modules()) > 100  # the walk found the packages


def test_the_command_lines_were_found():
    assert len(COMMANDS) >= 20 and len(CHECKED) >= 15, COMMANDS
    skipped = sorted(set(COMMANDS) - set(CHECKED))
    assert len(skipped) <= len(COMMANDS) // 3, f"too many placeholders to check: {skipped}"


@pytest.mark.parametrize("page, command", CHECKED, ids=[f"{p}:{c[16:70]}" for p, c in CHECKED])
def test_bench_command_composes(page, command):
    args = shlex.split(command)[3:]  # after `python -m bench`
    overrides = [a for a in args if a not in ("-m", "--multirun")]
    assert all("=" in o for o in overrides), f"{page}: not a Hydra override in {command!r}"
    multirun = len(overrides) < len(args)
    for point in sweep_points(overrides):
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose(config_name="config", overrides=point, return_hydra_config=True)
        sweep = cfg.hydra.sweeper.get("params")
        params = OmegaConf.to_container(sweep) if sweep is not None else {}
        assert multirun or not sweep_without_multirun(params, point), f"{page}: {command!r} is a sweep: add -m"
        del cfg.hydra
        problems = schema_problems(OmegaConf.to_container(cfg, resolve=False))
        assert not problems, f"{page}: {command!r} -> {problems}"


def test_every_python_m_module_imports():
    named = {m.rstrip(".") for page in PAGES for s in snippets(page.read_text(encoding="utf-8"))
             for m in MODULE.findall(s)}
    assert {"bench", "bench.aggregate", "report"} <= named
    missing = sorted(m for m in named if importlib.util.find_spec(m) is None)
    assert not missing, f"`python -m` names modules that do not import: {missing}"


def test_readme_is_a_front_door():
    readme = (ROOT / "README.md").read_bytes()
    assert len(readme) <= 12 * 1024, f"README.md is {len(readme)} bytes; move detail into docs/ (limit 12 KB)"
    for page in PAGES[1:]:
        assert f"docs/{page.name}" in readme.decode(), f"README links no docs/{page.name}"
