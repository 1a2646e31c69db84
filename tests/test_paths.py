"""One module knows where configs live (protocols.paths): a checkout finds them, a bare install is told how."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from protocols import paths

ROOT = Path(__file__).resolve().parents[1]


def test_checkout_finds_its_configs():
    assert (paths.config_dir() / "config.yaml").is_file()
    assert paths.config_group("protocol") == paths.CONFIG_DIR / "protocol"


def test_missing_config_dir_names_the_env_var(tmp_path):
    code = "from protocols.paths import config_dir\nconfig_dir()"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), paths.CONFIG_DIR_ENV: str(tmp_path)})
    assert proc.returncode != 0
    assert paths.CONFIG_DIR_ENV in proc.stderr and str(tmp_path) in proc.stderr


def test_no_module_computes_the_repo_root_itself():
    offenders = [str(p.relative_to(ROOT)) for pkg in ("protocols", "baselines", "bench")
                 for p in (ROOT / pkg).rglob("*.py")
                 if "parents[" in p.read_text(encoding="utf-8") and p.name != "paths.py"
                 and "artifacts" not in p.parts and p.name != "report.py"]  # the report's move adapts those
    assert offenders == []
