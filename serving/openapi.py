"""/docs.json with the service's own error body: BentoML documents its exception schemas for
400, 404 and 500; every error of this service answers an ErrorBody instead."""
from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from serving.schemas import ErrorBody, RequestBody

REF = "#/components/schemas/{model}"
ADMIN = "/admin/"  # serving/edge.py: these routes need the admin token
ADMIN_SCHEME = "adminToken"
UNAUTHORIZED = "no 'Authorization: Bearer <RECSYS_ADMIN_TOKEN>' header, or another token"
ERRORS = {
    "400": "a field is missing, of the wrong type, over a limit, or names an unknown item",
    "404": "the item asked about is not in the catalogue",
    "413": "the request body is over RECSYS_MAX_BODY_BYTES",
    "429": "RECSYS_MAX_CONCURRENCY requests are in progress already; or, on /events, this "
           "client is over RECSYS_EVENTS_RATE_LIMIT (see Retry-After)",
    "500": "a bug: the server log has its traceback",
    "503": "the event store is unavailable (/events); see Retry-After",
    "504": "not answered within RECSYS_REQUEST_TIMEOUT_S",
}


def with_error_bodies(spec: dict[str, Any], bodies: Mapping[str, type[RequestBody]]) -> dict[str, Any]:
    """A copy of `spec` whose API routes (`bodies`) answer ErrorBody for every error status."""
    spec = copy.deepcopy(spec)
    if str(spec.get("openapi", "")).startswith("3.0."):
        _as_openapi_30(spec)
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
        if route.startswith(ADMIN):
            responses["401"] = {"description": UNAUTHORIZED, **answer}
            responses["404"] = {"description": f"{ERRORS['404']}; or the admin endpoints are "
                                "disabled (no RECSYS_ADMIN_TOKEN)", **answer}
            operation["security"] = [{ADMIN_SCHEME: []}]
            spec["components"].setdefault("securitySchemes", {})[ADMIN_SCHEME] = {
                "type": "http", "scheme": "bearer", "description": "RECSYS_ADMIN_TOKEN"}
        operation["responses"] = responses
    return spec


def _as_openapi_30(node: Any) -> None:
    """Rewrite, in place, JSON Schema 2020-12 bounds (what pydantic writes: `exclusiveMinimum:
    0`) to OpenAPI 3.0's form (`minimum: 0, exclusiveMinimum: true`), the version BentoML's
    document declares: validators and generators of 3.0 reject the numeric form."""
    if isinstance(node, dict):
        for bound, limit in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
            value = node.get(bound)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                if limit in node:  # both given: keep the tighter, as 2020-12 means both
                    tighter = max if limit == "minimum" else min
                    node[bound] = tighter(value, node[limit]) == value
                    node[limit] = tighter(value, node[limit])
                else:
                    node[limit], node[bound] = value, True
        for child in node.values():
            _as_openapi_30(child)
    elif isinstance(node, list):
        for child in node:
            _as_openapi_30(child)
