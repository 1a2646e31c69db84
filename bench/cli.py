"""`stip-bench <command> [args...]`: one entry point that forwards to the harness's `python -m` modules.

Each subcommand runs its module as `python -m <module>` would, with the remaining arguments unchanged, so
`stip-bench run model=bert-tiny` is `python -m bench model=bert-tiny` and `stip-bench sweep ...` is
`python -m bench -m ...`. The modules are named in SUBCOMMANDS alone.
"""
from __future__ import annotations

import runpy
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Subcommand:
    """A `python -m` module, the arguments put before the user's, and one line of help."""

    module: str
    summary: str
    leading_args: tuple[str, ...] = ()


SUBCOMMANDS: dict[str, Subcommand] = {
    "run": Subcommand("bench", "one run: Hydra overrides model=... protocol=... network=... (python -m bench)"),
    "sweep": Subcommand("bench", "a Hydra multirun over comma-separated overrides (python -m bench -m)", ("-m",)),
    "aggregate": Subcommand("bench.aggregate", "finished runs -> <results>/<experiment>/ tables and figures"),
    "report": Subcommand("report", "the paper report: <results>/REPORT.md and report.csv"),
    "privacy": Subcommand("bench.privacy", "the attacks on STIP as tidy rows beside dcor (Hydra overrides)"),
    "profile": Subcommand("bench.profile", "a profile of configs/bench_profiles.yaml (bench|all), as make bench"),
}


def usage() -> str:
    """The `--help` text: every subcommand with its line."""
    width = max(len(name) for name in SUBCOMMANDS)
    lines = ["usage: stip-bench <command> [args...]", "",
             "Secure Transformer inference benchmarks; each command forwards its args to its module.", "",
             "commands:"]
    lines += [f"  {name:<{width}}  {sub.summary}" for name, sub in SUBCOMMANDS.items()]
    lines += ["", "`stip-bench <command> --help` shows that command's own options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the subcommand named first in argv (default sys.argv[1:]) as `python -m <module>`; return its exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"stip-bench: unknown command {name!r}; choose one of: {', '.join(SUBCOMMANDS)} "
              "(stip-bench --help)", file=sys.stderr)
        return 2
    sub = SUBCOMMANDS[name]
    saved = sys.argv
    sys.argv = [sub.module, *sub.leading_args, *rest]  # runpy sets argv[0] to the module's file
    try:
        runpy.run_module(sub.module, run_name="__main__", alter_sys=True)
    except SystemExit as exit_:
        code = exit_.code
        if isinstance(code, str):  # sys.exit("message"): print it as the interpreter would
            print(code, file=sys.stderr)
        return code if isinstance(code, int) else (0 if code is None else 1)
    finally:
        sys.argv = saved
    return 0


if __name__ == "__main__":
    sys.exit(main())
