"""`bentoml build` → `bentoml export` → `bentoml import` into an empty home → `bentoml serve`.

The build runs in a copy of the files the bentofile includes (service.py, bentofile.yaml,
recsys/ and a serving-models.json naming the session's models), so the real repo root is never
written to. The served Bento must not need the repository: the project is installed editable in
this virtualenv (a meta-path finder that maps `recsys` to the repo), so the server runs with a
`sitecustomize` on PYTHONPATH that removes that finder in every process BentoML starts, from a
working directory outside the repo. A control import proves that, in that environment, `recsys`
is importable from nowhere but the Bento's own src/ directory.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from devtools.processes import bentoml_serve
from tests.support.bento_build import (
    PACKAGED,
    build_bento,
    build_context,
    clean_env,
    run_bentoml,
)
from tests.support.fixtures_models import TrainedModels

pytestmark = pytest.mark.slow

FORBIDDEN_REQUIREMENTS = ("torch", "mlflow", "scikit-learn", "skl2onnx", "pandas")
HIDE_EDITABLE_INSTALL = """\
import sys
sys.meta_path[:] = [f for f in sys.meta_path
                    if not getattr(f, "__module__", "").startswith("__editable__")]
"""


def test_exported_bento_serves_from_an_empty_home_without_the_repo(
        trained_models: TrainedModels, tmp_path: Path) -> None:
    tags = json.loads(trained_models.models_file.read_text())
    context = build_context(trained_models, tmp_path)
    build_env = clean_env(BENTOML_HOME=str(trained_models.bentoml_home))

    tag = build_bento(context, build_env)
    bento_dir = trained_models.bentoml_home / "bentos" / "recommender" / tag.split(":", 1)[1]

    # What was packaged: the runtime package and models file, no training code, no torch.
    src = bento_dir / "src"
    assert (src / "service.py").is_file() and (src / "serving-models.json").is_file()
    for package in PACKAGED:
        assert {p.name for p in (src / package).glob("*.py")} == \
            {p.name for p in (context / package).glob("*.py")}
    assert not (src / "training").exists() and not (src / "registry").exists()
    assert not (src / "tests").exists()
    requirements = (bento_dir / "env" / "python" / "requirements.txt").read_text()
    bento_yaml = yaml.safe_load((bento_dir / "bento.yaml").read_text())
    packaged = (requirements + (bento_yaml.get("image") or {}).get("python_requirements", ""))
    names = {line.split("==")[0].strip().lower() for line in packaged.splitlines() if line.strip()}
    assert {"onnxruntime", "faiss-cpu", "redis", "bentoml"} <= names, names
    assert not names & set(FORBIDDEN_REQUIREMENTS), names
    pinned = {m["tag"] for s in bento_yaml["services"] for m in s["models"]}
    assert pinned == {t for kinds in tags.values() for t in kinds.values()}
    # Its Dockerfile (tests/e2e/test_container.py builds and runs it): non-root, a health check.
    dockerfile = (bento_dir / "env" / "docker" / "Dockerfile").read_text()
    assert "\nUSER bentoml\n" in dockerfile and "\nHEALTHCHECK " in dockerfile
    assert "/readyz" in dockerfile.partition("\nHEALTHCHECK ")[2]

    archive = tmp_path / "recommender.bento"
    run_bentoml("export", tag, str(archive), cwd=tmp_path, env=build_env)
    assert archive.is_file() and archive.stat().st_size > 0

    fresh_home = tmp_path / "fresh-bentoml-home"
    assert not fresh_home.exists()
    serve_env = clean_env(BENTOML_HOME=str(fresh_home))
    run_bentoml("import", str(archive), cwd=tmp_path, env=serve_env)
    imported = {f"{d.parent.name}:{d.name}" for d in (fresh_home / "models").glob("*/*")
                if (d / "model.yaml").is_file()}
    assert imported == pinned  # the models travelled inside the archive
    served_src = fresh_home / "bentos" / "recommender" / tag.split(":", 1)[1] / "src"
    assert (served_src / "recsys" / "pipeline" / "recommend.py").is_file()  # the runtime package
    assert (served_src / "serving" / "model_services.py").is_file()  # and the BentoML glue
    # build-time and development tools stay out of the Bento
    assert not (served_src / "devtools").exists() and not (served_src / "training").exists()

    # Serve it with the editable install hidden and a working directory outside the repo.
    hide = tmp_path / "hide-editable-install"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(HIDE_EDITABLE_INSTALL)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    serve_env["PYTHONPATH"] = str(hide)
    control = subprocess.run([sys.executable, "-c", "import recsys"], cwd=run_dir, env=serve_env,
                             capture_output=True, text=True, timeout=60, check=False)
    assert control.returncode != 0 and "No module named 'recsys'" in control.stderr, \
        control.stderr

    bento_server = bentoml_serve(tag, {}, tmp_path / "serve.log", cwd=run_dir, base_env=serve_env)
    with bento_server as server, server.client() as client:
        response = client.post("/recommend", json={"user_id": "bento-user", "k": 5})
        info = client.post("/info", json={}).json()
    assert response.status_code == 200, response.text
    assert len(response.json()["items"]) == 5
    assert response.json()["model_versions"] == tags["champion"]
    assert info["models"] == {"champion": tags["champion"]}  # read from the Bento's models file


def test_gpu_bento_builds_with_the_cuda_packages_and_the_models_on_the_gpu(
        trained_models: TrainedModels, tmp_path: Path) -> None:
    """Built here, not served: serving it needs a GPU (README: GPU)."""
    context = build_context(trained_models, tmp_path)
    env = clean_env(BENTOML_HOME=str(trained_models.bentoml_home))
    tag = build_bento(context, env, "bentofile.gpu.yaml")
    bento_dir = trained_models.bentoml_home / "bentos" / "recommender" / tag.split(":", 1)[1]
    requirements = (bento_dir / "env" / "python" / "requirements.txt").read_text().splitlines()
    assert "onnxruntime-gpu[cuda,cudnn]==1.31.1" in requirements, requirements
    assert "faiss-gpu==1.15.1" in requirements, requirements
    names = {line.split("==")[0].split("[")[0].strip().lower() for line in requirements}
    assert not names & {"onnxruntime", "faiss-cpu"}, names
    bento_yaml = yaml.safe_load((bento_dir / "bento.yaml").read_text())
    envs = {e["name"]: e["value"] for e in bento_yaml["envs"]}
    assert envs["RECSYS_GPU"] == "1" and envs["RECSYS_TOPOLOGY"] == "services"
