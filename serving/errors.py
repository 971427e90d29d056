"""The one mapping from errors to HTTP answers: status and code per error, the ErrorBody JSON,
and one log line per error answer (client errors at INFO, no traceback)."""
from __future__ import annotations

import functools
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from http import HTTPStatus
from typing import Any, TypeVar

from pydantic import ValidationError
from starlette.responses import Response

from recsys.errors import NotFoundError, RecsysError, RequestError, UnavailableError
from serving.schemas import ErrorBody, FieldError

# BentoML's server logging shows its own "bentoml" logger tree at INFO, and the root at WARNING.
LOG = logging.getLogger("bentoml.recsys.http")
CODES = {400: "invalid_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
         413: "body_too_large", 415: "unsupported_media_type", 429: "too_many_requests",
         500: "internal_error", 503: "unavailable", 504: "timeout"}
R = TypeVar("R")


def code_for(status: int) -> str:
    if status in CODES:
        return CODES[status]
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "client_error" if status < 500 else "server_error"


def status_for(error: RecsysError) -> int | None:
    """The status of an error a client should see; None for the rest (a bug: a 500)."""
    if isinstance(error, NotFoundError):
        return 404
    if isinstance(error, RequestError):
        return 400
    if isinstance(error, UnavailableError):
        return 503
    return None


def error_json(status: int, message: str, fields: Iterable[FieldError] = ()) -> bytes:
    return ErrorBody(error=message, code=code_for(status), fields=list(fields)) \
        .model_dump_json().encode()


def error_response(status: int, message: str, fields: Iterable[FieldError] = (),
                   headers: dict[str, str] | None = None) -> Response:
    return Response(error_json(status, message, fields), status_code=status, headers=headers,
                    media_type="application/json")


def validation_fields(error: ValidationError) -> list[FieldError]:
    return [FieldError(field=".".join(str(part) for part in e["loc"]) or "body",
                       message=e["msg"]) for e in error.errors(include_url=False)]


def validation_message(fields: list[FieldError]) -> str:
    return "; ".join(f"{f.field}: {f.message}" for f in fields)


def answers_errors(method: Callable[..., Awaitable[R]]) -> Callable[..., Awaitable[R | Response]]:
    """An API method that answers the project's client and availability errors itself (BentoML
    would log each as an ERROR with a traceback); anything else still reaches BentoML as a 500."""

    @functools.wraps(method)
    async def answering(*args: Any, **kwargs: Any) -> R | Response:
        try:
            return await method(*args, **kwargs)
        except RecsysError as error:
            status = status_for(error)
            if status is None:
                raise
            fields = [FieldError(field=error.field, message=str(error).split(": ", 1)[-1])] \
                if isinstance(error, RequestError) else []
            retry = getattr(error, "retry_after_s", None)
            headers = {"Retry-After": str(max(1, round(retry)))} if retry else None
            return error_response(status, str(error), fields, headers)
    return answering


def log_error_answer(method: str, path: str, status: int, body: bytes) -> None:
    """One line per error answer: client errors at INFO, server errors at WARNING (a bug's
    traceback is BentoML's, logged where it was raised)."""
    try:
        message = json.loads(body).get("error", "")
    except (ValueError, AttributeError):
        message = body[:200].decode(errors="replace")
    LOG.log(logging.INFO if status < 500 else logging.WARNING, "%s %s -> %d %s: %s",
            method, path, status, code_for(status), message)
