"""Run a profile of configs/bench_profiles.yaml step by step, then aggregate and write the paper report.

`python -m bench.profile bench|all [--results results] [--runs outputs/runs] [--profiles FILE]` runs each
step as its own subprocess (`python -m <module, default bench> <args>`; `{results}` and `{runs}` in args
are replaced by the folders), goes on after a failed step, records each step's wall minutes and status in
<results>/profile.json (rewritten after every step), then runs `bench.aggregate --plots` and `report`
and exits 1 if any step failed. A step may set `timeout_min` (a step past it is stopped and marked timeout)
and `name` (default: its module and args).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import yaml

from bench.conditions import OtherLoad
from protocols.paths import CONFIG_DIR, REPO_ROOT

ROOT = REPO_ROOT
PROFILES = CONFIG_DIR / "bench_profiles.yaml"
STEP_KEYS = {"args", "module", "minutes", "name", "timeout_min"}
TAIL_LINES = 20  # lines of a failed step's output kept in profile.json


@dataclass(frozen=True)
class Step:
    """One command of a profile: `python -m <module> <args>`, with the minutes it was measured to take."""

    module: str
    args: str
    minutes: float | None
    name: str
    timeout_min: float | None = None

    def argv(self, results: Path, runs: Path) -> list[str]:
        args = self.args.replace("{results}", str(results)).replace("{runs}", str(runs))
        return [sys.executable, "-m", self.module, *shlex.split(args)]


def load_profile(name: str, path: Path = PROFILES) -> list[Step]:
    """The steps of profile `name`; a bad entry raises naming the file, profile, index and the fix."""
    doc = yaml.safe_load(Path(path).read_text()) or {}
    if name not in doc:
        raise KeyError(f"profile {name!r} is not in {path}; profiles: {sorted(doc)}")
    steps = []
    for i, raw in enumerate(doc[name] or []):
        if not isinstance(raw, dict) or not set(raw) <= STEP_KEYS or ("args" not in raw and "module" not in raw):
            raise ValueError(f"{path}: {name}[{i}] = {raw!r}: a step is a mapping with args and/or module "
                             f"(keys: {sorted(STEP_KEYS)})")
        module, args = str(raw.get("module") or "bench"), str(raw.get("args") or "")
        steps.append(Step(module, args, raw.get("minutes"), str(raw.get("name") or f"{module} {args}".strip()),
                          raw.get("timeout_min")))
    return steps


@dataclass
class Outcome:
    """What one step did: its command, wall minutes, status (ok | failed | timeout) and, if not ok, its output tail."""

    name: str
    command: str
    status: str
    returncode: int | None
    minutes: float
    expected_minutes: float | None
    tail: str = ""


def run_step(step: Step, results: Path, runs: Path) -> Outcome:
    """Run one step, echoing its output; never raises for the step's own failure."""
    argv = step.argv(results, runs)
    command = shlex.join(["python", *argv[1:]]).replace(f"{ROOT}{os.sep}", "")  # paths as the repo sees them
    print(f"== [{datetime.now(timezone.utc):%H:%M:%S}] {command}", flush=True)
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    start = time.monotonic()
    timeout = None if step.timeout_min is None else 60.0 * step.timeout_min
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    status, rc, timed_out = "ok", None, threading.Event()
    try:
        with subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, bufsize=1) as proc:
            def stop() -> None:  # a step past its timeout_min, silent or not
                timed_out.set()
                proc.kill()

            watchdog = threading.Timer(timeout, stop) if timeout is not None else None
            if watchdog:
                watchdog.start()
            assert proc.stdout is not None
            for line in proc.stdout:
                sys.stdout.write(line)
                tail.append(line.rstrip("\n"))
            rc = proc.wait()
            if watchdog:
                watchdog.cancel()
    except OSError as err:
        status, tail = "failed", deque([f"could not start {command}: {err}"])
    if timed_out.is_set():
        status = "timeout"
        tail.append(f"stopped after timeout_min={step.timeout_min}")
    elif status == "ok" and rc != 0:
        status = "failed"
    minutes = (time.monotonic() - start) / 60
    print(f"== {status} in {minutes:.1f} min: {command}", flush=True)
    return Outcome(step.name, command, status, rc, round(minutes, 3), step.minutes,
                   "" if status == "ok" else "\n".join(tail))


def _write(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(path)


def run_profile(name: str, results: Path, runs: Path, profiles: Path = PROFILES) -> dict:
    """Every step of the profile, then aggregate and report; returns the profile.json record."""
    steps = load_profile(name, profiles)
    tail = [Step("bench.aggregate", f"--plots --runs {shlex.quote(str(runs))} --results {{results}}", None,
                 "aggregate"),
            Step("report", "--results {results}", None, "report")]
    record = {"profile": name, "profiles_file": str(profiles), "started": datetime.now(timezone.utc).isoformat(),
              "load_average_at_start": list(os.getloadavg()), "cpu_count": os.cpu_count(), "steps": []}
    path = results / "profile.json"
    host = OtherLoad()  # the report judges the host by others' cores, not by the load average at start
    for step in [*steps, *tail]:
        if step.name == "report":  # the report reads profile.json: write it complete up to here first
            record["finished"] = datetime.now(timezone.utc).isoformat()
            record["load_average_at_end"] = list(os.getloadavg())
            record["other_load_cores"] = round(host.sample()[2], 3)
            _write(path, record)
        record["steps"].append(asdict(run_step(step, results, runs)))
        _write(path, record)
    failed = [s["name"] for s in record["steps"] if s["status"] != "ok"]
    record["failed"] = failed
    _write(path, record)
    return record


def main(argv: list[str] | None = None) -> int:
    """CLI: python -m bench.profile bench|all; exit status 1 when any step failed."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("profile", help="a profile of the profiles file: bench (make bench) or all (make bench-all)")
    p.add_argument("--results", default="results", help="where tables, profile.json and REPORT.md go")
    p.add_argument("--runs", default="outputs/runs", help="the per-run folders bench.aggregate reads")
    p.add_argument("--profiles", default=str(PROFILES), help="the profiles file (configs/bench_profiles.yaml)")
    args = p.parse_args(argv)
    record = run_profile(args.profile, Path(args.results).resolve(), Path(args.runs).resolve(), Path(args.profiles))
    steps = record["steps"]
    print(f"== profile {args.profile}: {len(steps)} steps, {sum(s['minutes'] for s in steps):.1f} min, "
          f"failed: {', '.join(record['failed']) or 'none'}")
    return 1 if record["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
