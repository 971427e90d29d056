"""`bentoml build` of the session's models, from a copy of what the bentofiles include: the
repository root is never written to, and the build sees nothing the tests did not put there."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from devtools.processes import QUIET_ENV, REPO_ROOT
from tests.support.fixtures_models import TrainedModels

CLI_TIMEOUT_S = 240
PACKAGED = ("recsys", "serving")  # the packages bentofile.yaml includes
LEFT_OUT = ("devtools", "training")  # in the build context, as in a checkout; not in the Bento


def clean_env(**extra: str) -> dict[str, str]:
    """The test environment minus anything that points at the repo, its models or a home."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("RECSYS_") and k not in ("PYTHONPATH", "BENTOML_HOME")}
    return {**env, **QUIET_ENV, **extra}


def run_bentoml(*args: str, cwd: Path, env: dict[str, str]) -> str:
    """`python -m bentoml ARGS`; its stdout, or AssertionError with both streams' tails."""
    result = subprocess.run([sys.executable, "-m", "bentoml", *args], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=CLI_TIMEOUT_S, check=False)
    assert result.returncode == 0, (f"bentoml {' '.join(args)} failed ({result.returncode}):\n"
                                    f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result.stdout


def build_context(trained_models: TrainedModels, root: Path) -> Path:
    """A directory under `root` laid out like a checkout, serving-models.json naming the
    session's models."""
    context = root / "build-context"
    context.mkdir()
    shutil.copy2(REPO_ROOT / "service.py", context)
    shutil.copy2(REPO_ROOT / "bentofile.yaml", context)
    shutil.copy2(REPO_ROOT / "bentofile.gpu.yaml", context)
    for package in PACKAGED + LEFT_OUT:
        shutil.copytree(REPO_ROOT / package, context / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy2(trained_models.models_file, context / "serving-models.json")
    return context


def build_bento(context: Path, env: dict[str, str], bentofile: str = "bentofile.yaml") -> str:
    """The tag ("recommender:<version>") of the Bento built from `context` into env's home."""
    out = run_bentoml("build", "-f", bentofile, "--output", "tag", cwd=context, env=env)
    tag = out.strip().splitlines()[-1].removeprefix("__tag__:")
    assert tag.startswith("recommender:"), out
    return tag
