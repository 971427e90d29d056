"""The HTTP edge: the ASGI layer every request passes before BentoML routes it.

It limits requests in progress (429) and their time (504), keeps the admin endpoints to holders
of the admin token (401; 404 when no token is set), refuses bodies over the size limit (413),
validates each API's body once (400, every field at fault named) and hands the model to
BentoML, gives every error answer, BentoML's and Starlette's included, the one ErrorBody shape,
logs each in one line, and documents that body in /docs.json. It limits each client's rate of
/events (429 with Retry-After; the `limits` library's moving window, in this worker's memory).

The concurrency limit and timeout are BentoML's `traffic` settings done here: BentoML answers
those from middleware outside any the service adds, in a body of its own.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import math
import sys
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from pydantic import ValidationError

from recsys.settings import ServingSettings
from serving.errors import error_json, log_error_answer, validation_fields, validation_message
from serving.openapi import with_error_bodies
from serving.rate_limit import ClientRateLimit
from serving.schemas import VALIDATED_BODY, ErrorBody, FieldError, RequestBody, RequestLimits

Scope = dict[str, Any]
Message = dict[str, Any]
PROBES = frozenset({"/livez", "/readyz", "/healthz", "/metrics"})  # never limited
OPENAPI = "/docs.json"
PICKLE = "application/vnd.bentoml+pickle"
ADMIN = "/admin/"
EVENTS = "/events"


if sys.version_info >= (3, 11):
    deadline = asyncio.timeout  # cancels the request's own task: no task per request
else:  # pragma: no cover - Python 3.10
    from async_timeout import timeout as deadline


class ClientGone(Exception):
    """The client disconnected before its body arrived."""


class ErrorReply:
    """The sending side of one request: error answers leave in the ErrorBody shape (the edge's
    own, and any other, reshaped) and are logged; everything else passes untouched."""

    def __init__(self, scope: Scope, send: Any) -> None:
        self.scope, self.downstream = scope, send
        self.started = False
        self._held: Message | None = None  # an error's start message, until its body is whole
        self._body = b""

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            if message["status"] >= 400:
                self._held = message
                return
        elif message["type"] == "http.response.body" and self._held is not None:
            self._body += message.get("body", b"")
            if not message.get("more_body"):
                held, self._held = self._held, None
                await self._answer(held["status"], reshaped(held["status"], self._body),
                                   held.get("headers", []))
            return
        await self.downstream(message)

    async def error(self, status: int, message: str, fields: list[FieldError] | None = None,
                    headers: list[tuple[bytes, bytes]] | None = None) -> None:
        self.started = True
        await self._answer(status, error_json(status, message, fields or []), headers or [])

    async def _answer(self, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        log_error_answer(self.scope["method"], self.scope["path"], status, body)
        kept = [(k, v) for k, v in headers if k.lower() not in (b"content-length", b"content-type")]
        await self.downstream({"type": "http.response.start", "status": status, "headers": [
            *kept, (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode())]})
        await self.downstream({"type": "http.response.body", "body": body})


def reshaped(status: int, body: bytes) -> bytes:
    """`body` if it is an ErrorBody already, else an ErrorBody carrying its message."""
    try:
        document = json.loads(body)
    except ValueError:
        document = body.decode(errors="replace").strip()
    if isinstance(document, dict):
        try:
            return ErrorBody.model_validate(document).model_dump_json().encode()
        except ValidationError:
            pass
    return error_json(status, message_of(document) or code_phrase(status))


def message_of(document: Any) -> str:
    """The message in BentoML's error bodies ({"error": ...} or [{"error": ...}]) or a text."""
    if isinstance(document, list) and document:
        document = document[0]
    if isinstance(document, dict):
        return str(document.get("error") or document.get("detail") or "")
    return str(document)


def code_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"


class HttpEdge:
    def __init__(self, app: Any, *, bodies: Mapping[str, type[RequestBody]],
                 limits: RequestLimits, max_body_bytes: int, max_concurrency: int,
                 timeout_s: float, admin_token: str | None = None,
                 events_rate_limit: str = "", client_address_header: str | None = None) -> None:
        self.app, self.bodies, self.limits = app, dict(bodies), limits
        self.admin_credentials = f"Bearer {admin_token}".encode() if admin_token else None
        self.max_body_bytes, self.timeout_s = max_body_bytes, timeout_s
        self.in_progress = asyncio.Semaphore(max_concurrency)
        self.events_rate = ClientRateLimit(events_rate_limit) if events_rate_limit else None
        self.address_header = client_address_header.lower().encode() \
            if client_address_header else None

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        reply = ErrorReply(scope, send)
        if scope["path"] in PROBES:
            await self.app(scope, receive, reply.send)
        elif self.in_progress.locked():
            await reply.error(429, "too many requests in progress (RECSYS_MAX_CONCURRENCY)")
        else:
            async with self.in_progress:
                await self._within_timeout(scope, receive, reply)

    async def _within_timeout(self, scope: Scope, receive: Any, reply: ErrorReply) -> None:
        try:
            async with deadline(self.timeout_s):
                await self._handle(scope, receive, reply)
        except asyncio.TimeoutError:
            if not reply.started:
                await reply.error(504, f"not answered within {self.timeout_s:g} s "
                                       "(RECSYS_REQUEST_TIMEOUT_S)")
        except ClientGone:
            pass

    async def _handle(self, scope: Scope, receive: Any, reply: ErrorReply) -> None:
        if scope["path"] == OPENAPI and scope["method"] == "GET":
            await self._openapi(scope, receive, reply)
            return
        if scope["path"].startswith(ADMIN) and not await self._admitted(scope, reply):
            return
        if scope["path"] == EVENTS and self.events_rate is not None:
            wait_s = await self.events_rate.wait_s(self._client(scope))
            if wait_s is not None:
                await reply.error(429, f"over {self.events_rate.item} events for this client "
                                       "(RECSYS_EVENTS_RATE_LIMIT)",
                                  headers=[(b"retry-after", str(wait_s).encode())])
                return
        body_type = self.bodies.get(scope["path"]) if scope["method"] == "POST" else None
        if body_type is None:
            await self.app(scope, receive, reply.send)
            return
        if header(scope, b"content-type").startswith(PICKLE):
            await reply.error(415, "application/vnd.bentoml+pickle is not accepted here")
            return
        raw = await self._read_body(scope, receive)
        if raw is None:
            await reply.error(413, f"request body over {self.max_body_bytes} bytes "
                                   "(RECSYS_MAX_BODY_BYTES)")
            return
        try:
            scope[VALIDATED_BODY] = body_type.parse(raw, self.limits)
        except ValidationError as error:
            fields = validation_fields(error)
            await reply.error(400, validation_message(fields), fields)
            return
        await self.app(scope, Replay(raw, receive), reply.send)

    def _client(self, scope: Scope) -> str:
        """The peer address, or the first address of the header a trusted load balancer sets."""
        if self.address_header is not None:
            forwarded = header(scope, self.address_header)
            if forwarded:
                return forwarded.split(",")[0].strip()
        peer = scope.get("client")
        return str(peer[0]) if peer else "unknown"

    async def _admitted(self, scope: Scope, reply: ErrorReply) -> bool:
        """Whether an admin request carries the token (compared in constant time); answers it
        when not."""
        if self.admin_credentials is None:
            await reply.error(404, f"{scope['path']}: the admin endpoints are disabled "
                                   "(set RECSYS_ADMIN_TOKEN to enable them)")
            return False
        sent = next((bytes(v) for k, v in scope["headers"] if k.lower() == b"authorization"), b"")
        if not hmac.compare_digest(sent, self.admin_credentials):
            await reply.error(401, "the admin endpoints need 'Authorization: Bearer "
                                   "<RECSYS_ADMIN_TOKEN>'",
                              headers=[(b"www-authenticate", b'Bearer realm="recsys admin"')])
            return False
        return True

    async def _read_body(self, scope: Scope, receive: Any) -> bytes | None:
        """The whole body, or None as soon as it is known to exceed the limit."""
        declared = header(scope, b"content-length")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)

    async def _openapi(self, scope: Scope, receive: Any, reply: ErrorReply) -> None:
        captured = Captured()
        await self.app(scope, receive, captured.send)
        body = captured.body
        if captured.status == 200:
            body = json.dumps(with_error_bodies(json.loads(body), self.bodies)).encode()
        await reply.send({"type": "http.response.start", "status": captured.status, "headers": [
            *captured.headers_except(b"content-length"),
            (b"content-length", str(len(body)).encode())]})
        await reply.send({"type": "http.response.body", "body": body})


class Captured:
    """A whole response, kept instead of sent."""

    def __init__(self) -> None:
        self.status, self.body = 500, b""
        self.headers: list[tuple[bytes, bytes]] = []

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status, self.headers = message["status"], list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            self.body += message.get("body", b"")

    def headers_except(self, name: bytes) -> list[tuple[bytes, bytes]]:
        return [(k, v) for k, v in self.headers if k.lower() != name]


class Replay:
    """A `receive` that gives the body the edge already read, then the client's own messages
    (a disconnect)."""

    def __init__(self, raw: bytes, receive: Any) -> None:
        self.raw: bytes | None = raw
        self.receive = receive

    async def __call__(self) -> Message:
        if self.raw is None:
            return await self.receive()
        raw, self.raw = self.raw, None
        return {"type": "http.request", "body": raw, "more_body": False}


def header(scope: Scope, name: bytes) -> str:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return bytes(value).decode("latin-1").strip().lower()
    return ""


def install_edge(service: Any, settings: ServingSettings) -> None:
    """Add the edge to a BentoML service: every API whose input is a RequestBody is validated
    there; the concurrency limit is shared out over the service's workers."""
    bodies = {api.route: api.input_spec for api in service.apis.values()
              if isinstance(api.input_spec, type) and issubclass(api.input_spec, RequestBody)}
    service.add_asgi_middleware(
        HttpEdge, bodies=bodies, limits=RequestLimits.from_settings(settings),
        max_body_bytes=settings.max_body_bytes,
        max_concurrency=math.ceil(settings.max_concurrency / settings.workers),
        timeout_s=settings.request_timeout_s,
        admin_token=settings.admin_token.get_secret_value() if settings.admin_token else None,
        events_rate_limit=settings.events_rate_limit,
        client_address_header=settings.client_address_header)
