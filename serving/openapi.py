"""/docs.json with the service's own error body: BentoML documents its exception schemas for
400, 404 and 500; every error of this service answers an ErrorBody instead."""
from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from serving.schemas import ErrorBody, RequestBody

REF = "#/components/schemas/{model}"
ERRORS = {
    "400": "a field is missing, of the wrong type, over a limit, or names an unknown item",
    "404": "the item asked about is not in the catalogue",
    "413": "the request body is over RECSYS_MAX_BODY_BYTES",
    "429": "RECSYS_MAX_CONCURRENCY requests are in progress already",
    "500": "a bug: the server log has its traceback",
    "503": "the event store is unavailable (/events); see Retry-After",
    "504": "not answered within RECSYS_REQUEST_TIMEOUT_S",
}


def with_error_bodies(spec: dict[str, Any], bodies: Mapping[str, type[RequestBody]]) -> dict[str, Any]:
    """A copy of `spec` whose API routes (`bodies`) answer ErrorBody for every error status."""
    spec = copy.deepcopy(spec)
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    document = ErrorBody.model_json_schema(ref_template=REF)
    schemas.update(document.pop("$defs", {}))
    schemas["ErrorBody"] = document
    answer = {"content": {"application/json": {"schema": {"$ref": REF.format(model="ErrorBody")}}}}
    for route in bodies:
        operation = spec.get("paths", {}).get(route, {}).get("post")
        if operation is None:
            continue
        responses = {code: r for code, r in operation.get("responses", {}).items()
                     if not str(code).startswith(("4", "5"))}
        responses.update({code: {"description": why, **answer} for code, why in ERRORS.items()})
        operation["responses"] = responses
    return spec
