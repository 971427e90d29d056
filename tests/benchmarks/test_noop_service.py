"""The benchmark's no-op floor cannot drift from the service: every API it has, the service has,
with the same route, the same request body type and the same response schema, behind the same
HTTP edge."""
from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from types import ModuleType

import pytest

from serving.edge import HttpEdge
from tests.support.fixtures_models import TrainedModels


@pytest.fixture(scope="module")
def modules(trained_models: TrainedModels) -> Iterator[tuple[ModuleType, ModuleType]]:
    with pytest.MonkeyPatch.context() as patch:
        for name, value in trained_models.env().items():
            patch.setenv(name, value)
        for name in ("service", "benchmarks.noop_service"):
            sys.modules.pop(name, None)
        yield (importlib.import_module("service"),
               importlib.import_module("benchmarks.noop_service"))
        for name in ("service", "benchmarks.noop_service"):
            sys.modules.pop(name, None)


def test_every_noop_api_matches_the_services(modules: tuple[ModuleType, ModuleType]) -> None:
    service, noop = modules
    ours, floor = service.Recommender.apis, noop.Noop.apis

    assert set(floor) == {"recommend", "search"} and set(floor) <= set(ours)
    for name, api in floor.items():
        assert api.route == ours[name].route
        assert api.input_spec is ours[name].input_spec  # the very same body type
        assert api.output_spec.model_json_schema() == ours[name].output_spec.model_json_schema()


def test_both_run_behind_the_same_edge(modules: tuple[ModuleType, ModuleType]) -> None:
    service, noop = modules
    edges = [[options for cls, options in svc.middlewares if cls is HttpEdge]
             for svc in (service.Recommender, noop.Noop)]

    assert [len(e) for e in edges] == [1, 1]
    ours, floor = edges[0][0], edges[1][0]
    for route in ("/recommend", "/search"):
        assert floor["bodies"][route] is ours["bodies"][route]
    assert {k: v for k, v in floor.items() if k != "bodies"} == \
        {k: v for k, v in ours.items() if k != "bodies"}
