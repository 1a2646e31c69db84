"""`stip-bench`: the one entry point lists its subcommands and forwards each one's arguments unchanged."""
import subprocess
import sys
from pathlib import Path

from bench import cli

ROOT = Path(__file__).resolve().parents[1]


def test_help_lists_every_subcommand_with_one_line(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("run", "sweep", "aggregate", "report", "privacy", "profile"):
        assert any(line.split()[:1] == [name] and len(line.split()) > 1 for line in out.splitlines()), name


def test_help_as_a_module_from_a_fresh_interpreter():
    proc = subprocess.run([sys.executable, "-m", "bench.cli", "--help"], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "sweep" in proc.stdout and "profile" in proc.stdout


def test_an_unknown_command_names_the_choices(capsys):
    assert cli.main(["benchmark"]) == 2
    err = capsys.readouterr().err
    assert "'benchmark'" in err and "aggregate" in err


def test_run_forwards_hydra_overrides_unchanged(capsys):
    """`--cfg job` makes Hydra print the composed config and stop: the override reached `python -m bench`."""
    assert cli.main(["run", "--cfg", "job", "model=bert-tiny", "run.seq_len=7"]) == 0
    out = capsys.readouterr().out
    assert "bert-tiny" in out and "seq_len: 7" in out


def test_aggregate_forwards_its_own_arguments(capsys):
    assert cli.main(["aggregate", "--help"]) == 0  # argparse's SystemExit(0) inside the module becomes 0
    assert "--results" in capsys.readouterr().out


def test_the_console_script_points_at_this_main():
    assert 'stip-bench = "bench.cli:main"' in (ROOT / "pyproject.toml").read_text()
    for sub in cli.SUBCOMMANDS.values():
        assert (ROOT / (sub.module.replace(".", "/") + ".py")).exists() or \
            (ROOT / sub.module.replace(".", "/") / "__main__.py").exists(), sub.module
