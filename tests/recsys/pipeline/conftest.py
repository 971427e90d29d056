"""Fixtures of the request-path tests: the trained champion and challenger."""
from __future__ import annotations

import pytest

from recsys.app.models_file import ModelRefs
from recsys.models.bundles import EmbeddingBundle
from tests.support.fixtures_models import TrainedModels


@pytest.fixture(scope="module")
def refs(trained_models: TrainedModels) -> list[ModelRefs]:
    return [trained_models.refs("champion"), trained_models.refs("challenger")]


@pytest.fixture(scope="module")
def champion(trained_models: TrainedModels) -> EmbeddingBundle:
    return EmbeddingBundle.load(trained_models.refs("champion").paths["embedding"])
