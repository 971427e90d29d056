"""Property-based fuzzing of the served API from its own OpenAPI document (Schemathesis).

Every operation of /docs.json gets generated requests, valid and invalid (wrong types, missing
fields, out-of-range numbers, odd unicode), sent to a real `bentoml serve` with a real Redis.
Each answer must be no 5xx, carry a status the document declares, and a body valid against
the schema declared for that status. The admin endpoints are fuzzed without their token (they
must refuse) so that a generated request never moves live traffic.

What the fuzzer found is kept below as plain regression cases.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from devtools.processes import ServerProcess, bentoml_serve
from tests.support.fixtures_models import TrainedModels

pytestmark = pytest.mark.slow

EXAMPLES = 40  # per operation: bounded traffic (a few hundred requests in all, 127.0.0.1 only)
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


@pytest.fixture(scope="module")
def fuzzed_server(trained_models: TrainedModels, redis_server: Any,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    redis_server.start()
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()
    env = {**trained_models.env(), "RECSYS_REDIS_URL": redis_server.url,
           "RECSYS_ADMIN_TOKEN": "fuzz-token-never-sent"}
    log: Path = tmp_path_factory.mktemp("serve-fuzz") / "serve.log"
    with bentoml_serve("service:Recommender", env, log) as process:
        yield process


@pytest.fixture(scope="module")
def api_schema(fuzzed_server: ServerProcess) -> Any:
    return schemathesis.openapi.from_url(f"{fuzzed_server.url}/docs.json")


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                         ids=["valid", "invalid"])
def test_every_operation_answers_within_its_documented_contract(
        api_schema: Any, fuzzed_server: ServerProcess, mode: GenerationMode) -> None:
    """Schemathesis' pytest plugin does not run under pytest 9 (its lazy fixture schema fails
    on pytest's Function nodes), so each operation's strategy is run by Hypothesis here."""
    failures: dict[str, str] = {}
    sent: dict[str, int] = {}
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/recommend", "/events", "/similar_items", "/rank"}
    for operation in operations:
        try:
            sent[operation.label] = _fuzz(operation, mode, fuzzed_server.url)
        except Unsatisfiable:  # no input to make invalid (the GET probes): none was sent
            assert mode is GenerationMode.NEGATIVE, operation.label
            sent[operation.label] = 0
        except (FailureGroup, AssertionError, httpx.HTTPError, OSError) as error:
            failures[operation.label] = f"{type(error).__name__}: {error}"[:3000]
    print(f"fuzzed ({mode.value}): {sent}")
    assert not failures, "\n\n".join(f"{label}: {why}" for label, why in failures.items())


def _fuzz(operation: Any, mode: GenerationMode, base_url: str) -> int:
    """Run `operation`'s generated cases against base_url; returns how many were sent."""
    sent = 0

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    def answers(case: Any) -> None:
        nonlocal sent
        sent += 1
        response = case.call(base_url=base_url, timeout=30)
        case.validate_response(response, checks=CHECKS)

    answers()
    return sent


def _bounds(node: Any) -> Iterator[Any]:
    if isinstance(node, dict):
        for bound in ("exclusiveMinimum", "exclusiveMaximum"):
            if bound in node:
                yield node[bound]
        for child in node.values():
            yield from _bounds(child)
    elif isinstance(node, list):
        for child in node:
            yield from _bounds(child)


def test_found_the_document_used_openapi_31_bounds_under_a_30_version(
        fuzzed_server: ServerProcess) -> None:
    """Schemathesis refused /recommend, /similar_items and /admin/canary: pydantic's
    `exclusiveMinimum: 0` is JSON Schema 2020-12 (OpenAPI 3.1), the document says 3.0."""
    spec = httpx.get(f"{fuzzed_server.url}/docs.json", timeout=10).json()
    assert spec["openapi"].startswith("3.0.")
    bounds = list(_bounds(spec["paths"])) + list(_bounds(spec["components"]))
    assert bounds and all(isinstance(b, bool) for b in bounds), bounds


def test_found_the_admin_routes_answered_an_undocumented_401(
        fuzzed_server: ServerProcess) -> None:
    spec = httpx.get(f"{fuzzed_server.url}/docs.json", timeout=10).json()
    for route in ("/admin/canary", "/admin/rollback"):
        operation = spec["paths"][route]["post"]
        assert "401" in operation["responses"] and operation["security"] == [{"adminToken": []}]
        answer = httpx.post(f"{fuzzed_server.url}{route}", json={}, timeout=10)
        assert answer.status_code == 401 and answer.json()["code"] == "unauthorized"
