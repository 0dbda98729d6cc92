"""The code passes the checks pyproject.toml's [tool.ruff] names (pyflakes: unused or undefined
names; isort: import order), so a reader's `ruff check` is as clean as CI's."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_ruff_check_is_clean():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (it comes with the dev extras: pip install -e '.[dev]')")
    r = subprocess.run([ruff, "check", "--no-cache", "features", "serving", "jobs", "bench", "tests"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-1000:]
