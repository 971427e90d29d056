"""The house checks as tests: ruff on the whole project, mypy on recsys/ and serving/."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _check(*command: str) -> None:
    done = subprocess.run([sys.executable, "-m", *command], check=False, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(command)}:\n{done.stdout}{done.stderr}"


def test_ruff_finds_nothing() -> None:
    _check("ruff", "check", "--no-cache", ".")


@pytest.mark.slow
def test_mypy_passes_on_the_runtime_and_serving_packages(tmp_path: Path) -> None:
    _check("mypy", "--cache-dir", str(tmp_path / "mypy"))  # packages: [tool.mypy] in pyproject
