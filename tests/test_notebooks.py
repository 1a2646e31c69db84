"""The analysis notebooks run top to bottom on the committed results, so they never rot.

They run on a frozen copy: `results/` and `notebooks/` as committed at HEAD (`git archive`), so a local run
that rewrote `results/` can neither break nor fake this test; outside git, a copy of the working tree.
"""
import shutil
import subprocess
import tarfile
from io import BytesIO
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module")
def frozen(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("frozen")
    archive = subprocess.run(["git", "archive", "--format=tar", "HEAD", "results", "notebooks"], cwd=ROOT,
                             capture_output=True)
    if archive.returncode == 0:
        with tarfile.open(fileobj=BytesIO(archive.stdout)) as tar:
            tar.extractall(out, filter="data")
    else:
        for name in ("results", "notebooks"):
            shutil.copytree(ROOT / name, out / name)
    return out


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path, frozen):
    copy = frozen / "notebooks" / path.name
    if not copy.exists():  # a notebook not committed yet: run it against the committed results
        shutil.copy(path, copy)
    nb = nbformat.read(copy, as_version=4)
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(copy.parent)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert outputs and not any(o.get("output_type") == "error" for o in outputs)
