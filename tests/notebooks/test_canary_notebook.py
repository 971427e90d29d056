"""Notebook 06 against a real service: `bentoml serve` following a real MLflow tracking server,
the canary's state in a real Redis, the notebook starting the canary, replaying held-out traffic
and watching it to the promotion."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest

from devtools.local_redis import LocalRedis
from devtools.processes import ServerProcess, bentoml_serve
from registry import CHALLENGER, CHAMPION, PREVIOUS_CHAMPION
from tests.notebooks.test_notebooks import NOTEBOOK_DIR, venv_kernel  # noqa: F401 (the fixture)
from tests.support.fixtures_models import TrainedModels
from tests.support.http import RELAXED_LATENCY
from tests.support.registry_server import RegistryServer, registry_copy

NOTEBOOK = "06_canary.ipynb"
TOKEN = "notebook-token"


@pytest.fixture
def service(trained_models: TrainedModels, redis_server: LocalRedis,
            tmp_path: Path) -> Iterator[tuple[ServerProcess, RegistryServer]]:
    redis_server.start()
    with registry_copy(trained_models, tmp_path / "tracking") as registry:
        env = {**trained_models.env(), **RELAXED_LATENCY, "RECSYS_REDIS_URL": redis_server.url,
               "RECSYS_MODEL_SOURCE": "registry", "RECSYS_REGISTRY_URI": registry.url,
               "RECSYS_REGISTRY_POLL_S": "1", "RECSYS_CANARY_TICK_S": "0.5",
               "RECSYS_MODEL_CACHE_DIR": str(tmp_path / "model-cache"),
               "RECSYS_WARM_USERS": "20", "RECSYS_ADMIN_TOKEN": TOKEN}
        with bentoml_serve("service:Recommender", env, tmp_path / "serve.log") as server:
            yield server, registry


@pytest.mark.slow
@pytest.mark.usefixtures("venv_kernel")
def test_the_notebook_releases_the_challenger_through_its_stages(
        service: tuple[ServerProcess, RegistryServer], trained_models: TrainedModels,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import papermill

    server, registry = service
    before = {alias: registry.registry().resolve(alias) for alias in (CHAMPION, CHALLENGER)}
    # the fixture's synthetic data (its models saw all of it: traffic, not clicks, here)
    for name, value in (("RECSYS_SYNTHETIC_USERS", "150"), ("RECSYS_SYNTHETIC_ITEMS", "300"),
                        ("RECSYS_REPLAY_HOLDOUT", "0.2")):
        monkeypatch.setenv(name, value)
    out = tmp_path / NOTEBOOK
    papermill.execute_notebook(
        NOTEBOOK_DIR / NOTEBOOK, out, kernel_name="python3", cwd=str(tmp_path),
        progress_bar=False,
        parameters={"service_url": server.url, "admin_token": TOKEN, "stages": [0.3, 1.0],
                    "min_requests": 80, "min_impressions": 10**6, "min_stage_seconds": 3.0,
                    "warmup_seconds": 2.0,
                    "replay_rate": 150.0, "replay_count": 5000, "timeout_s": 120.0})

    executed = nbformat.read(out, as_version=4)
    text = "\n".join(str(o.get("text", "")) for c in executed.cells if c.cell_type == "code"
                     for o in c.outputs)
    images = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs
              if "image/png" in o.get("data", {})]
    assert "running at stage 0 (30% of users)" in text, text
    assert "promoted at stage 1" in text and "every stage passed" in text, text
    assert "sent " in text and " 0 failed" in text, text
    assert len(images) == 1  # the guards per variant over time
    now = registry.registry()
    assert now.resolve(CHAMPION) == before[CHALLENGER]
    assert now.resolve(PREVIOUS_CHAMPION) == before[CHAMPION]
