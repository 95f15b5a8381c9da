"""The webhooks API: endpoints, their deliveries and replays, and the org's events for polling."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Final

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from mailfold.events import EVENT_TYPES
from mailfold.runtime.openapi import openapi_route
from mailfold.runtime.ops import HealthCheck, ops_routes
from mailfold.runtime.orgs import TokenVerifier, check_bearer, valid_org_id
from mailfold.runtime.problems import FieldError as Field
from mailfold.runtime.problems import api_app, page_limit
from mailfold.runtime.problems import problem as runtime_problem
from mailfold.webhooks.adapters.jobs import JobQueue
from mailfold.webhooks.adapters.kv import Deliveries, Endpoints
from mailfold.webhooks.adapters.stream import StreamReader, org_subject
from mailfold.webhooks.domain.deliveries import Delivery
from mailfold.webhooks.domain.endpoints import (
    Endpoint,
    EndpointInput,
    EndpointPatch,
    InvalidField,
    TooManyEndpoints,
)
from mailfold.webhooks.domain.retries import Outcome
from mailfold.webhooks.entrypoints import openapi as openapi_doc
from mailfold.webhooks.service_layer.endpoints import Manager
from mailfold.webhooks.service_layer.replay import Replayer, ReplayRequest

MAX_BODY: Final = 64 * 1024
DEFAULT_LIMIT: Final = 50
MAX_LIMIT: Final = openapi_doc.MAX_LIMIT
_ENCODER: Final = msgspec.json.Encoder()
_AT_PATH: Final = re.compile(r"at `\$\.?([^`\[]*)")
_UNKNOWN: Final = re.compile(r"unknown field `([^`]+)`")
_MISSING: Final = re.compile(r"missing required field `([^`]+)`")

Handler = Callable[[Request, str], Awaitable[Response]]


def json_response(body: Any, status: int = 200) -> Response:
    """A JSON response encoded by msgspec."""
    return Response(_ENCODER.encode(body), status_code=status, media_type="application/json")


def problem(
    status: int, title: str, detail: str, errors: list[dict[str, str]] | None = None
) -> Response:
    """An RFC 9457 problem document (built by the runtime, as every service's); `errors` name
    the fields."""
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    fields = [Field(e["field"], e["message"]) for e in errors or []]
    return runtime_problem(status, detail, fields, title=title, headers=headers)


def invalid(field: str, message: str) -> Response:
    """422 naming one field."""
    return problem(
        422, "Unprocessable Content", f"{field}: {message}", [{"field": field, "message": message}]
    )


def _decode_error(exc: msgspec.MsgspecError) -> Response:
    text = str(exc)
    match = _UNKNOWN.search(text) or _MISSING.search(text) or _AT_PATH.search(text)
    field = match.group(1) if match and match.group(1) else "body"
    return invalid(field, text)


def endpoint_view(endpoint: Endpoint, **extra: Any) -> dict[str, Any]:
    """An endpoint as the API shows it: never its secrets (they are shown once, when made)."""
    return {
        "id": endpoint.endpoint_id,
        "org_id": endpoint.org_id,
        "url": endpoint.url,
        "event_types": list(endpoint.event_types),
        "sources": list(endpoint.sources),
        "description": endpoint.description,
        "enabled": endpoint.enabled,
        "disabled_reason": endpoint.disabled_reason or None,
        "signing_secrets": [{"created_at": s.created_at} for s in endpoint.secrets],
        "created_at": endpoint.created_at,
        "updated_at": endpoint.updated_at,
        **extra,
    }


def delivery_view(delivery: Delivery) -> dict[str, Any]:
    """A delivery record as the API shows it."""
    return msgspec.to_builtins(delivery) | {"webhook_id": delivery.event_id}  # type: ignore[no-any-return]


def _limit(raw: str | None) -> int | Response:
    """The page size, or a 422 naming `limit`."""
    errors: list[Field] = []
    limit = page_limit(raw, DEFAULT_LIMIT, MAX_LIMIT, errors)
    return invalid(errors[0].field, errors[0].message) if errors else limit


class Api:
    """Route handlers; every route is the org's own (its bearer token)."""

    def __init__(
        self,
        verifier: TokenVerifier,
        endpoints: Endpoints,
        deliveries: Deliveries,
        manager: Manager,
        replayer: Replayer,
        reader: StreamReader,
        queue: JobQueue,
        in_flight: Callable[[str], int] = lambda endpoint_id: 0,
    ) -> None:
        self._in_flight = in_flight  # first attempts in flight or waiting on this copy
        self._verifier = verifier
        self._endpoints = endpoints
        self._deliveries = deliveries
        self._manager = manager
        self._replayer = replayer
        self._reader = reader
        self._queue = queue

    def _guard(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def guarded(request: Request) -> Response:
            org_id = request.path_params["org"]
            if not valid_org_id(org_id):
                return problem(404, "Not Found", "no such org")
            refused = await check_bearer(
                self._verifier, org_id, request.headers.get("authorization")
            )
            if refused == 404:
                return problem(404, "Not Found", "no such org")
            if refused is not None:
                return problem(401, "Unauthorized", "a valid bearer token for the org is required")
            return await handler(request, org_id)

        return guarded

    async def _body(self, request: Request, kind: type[Any]) -> Any:
        if "json" not in request.headers.get("content-type", ""):
            return invalid("content-type", "must be application/json")
        data = await request.body()
        if len(data) > MAX_BODY:
            return problem(413, "Content Too Large", f"the body is larger than {MAX_BODY} bytes")
        try:
            return msgspec.json.decode(data, type=kind)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return _decode_error(exc)
        except UnicodeDecodeError:
            return invalid("body", "is not valid UTF-8")
        except RecursionError:
            return invalid("body", "is nested too deeply")

    def _endpoint(self, request: Request, org_id: str) -> Endpoint | Response:
        found = self._endpoints.get(org_id, request.path_params["endpoint_id"])
        return found if found is not None else problem(404, "Not Found", "no such webhook")

    async def create(self, request: Request, org_id: str) -> Response:
        data = await self._body(request, EndpointInput)
        if isinstance(data, Response):
            return data
        try:
            endpoint, secret = await self._manager.create(org_id, data)
        except InvalidField as exc:
            return invalid(exc.field, exc.message)
        except TooManyEndpoints as exc:
            return problem(409, "Conflict", str(exc))
        return json_response(endpoint_view(endpoint, secret=secret), 201)

    async def list_(self, request: Request, org_id: str) -> Response:
        return json_response({"items": [endpoint_view(e) for e in self._endpoints.of_org(org_id)]})

    async def show(self, request: Request, org_id: str) -> Response:
        endpoint = self._endpoint(request, org_id)
        if isinstance(endpoint, Response):
            return endpoint
        backlog = await self._queue.backlog(endpoint.endpoint_id)
        backlog += self._in_flight(endpoint.endpoint_id)
        return json_response(endpoint_view(endpoint, backlog=backlog))

    async def patch(self, request: Request, org_id: str) -> Response:
        endpoint = self._endpoint(request, org_id)
        if isinstance(endpoint, Response):
            return endpoint
        data = await self._body(request, EndpointPatch)
        if isinstance(data, Response):
            return data
        try:
            updated, secret = await self._manager.patch(endpoint, data)
        except InvalidField as exc:
            return invalid(exc.field, exc.message)
        extra = {} if secret is None else {"secret": secret}
        return json_response(endpoint_view(updated, **extra))

    async def delete(self, request: Request, org_id: str) -> Response:
        endpoint = self._endpoint(request, org_id)
        if isinstance(endpoint, Response):
            return endpoint
        await self._manager.delete(endpoint)
        return Response(status_code=204)

    async def endpoint_route(self, request: Request, org_id: str) -> Response:
        method = request.method
        if method == "GET":
            return await self.show(request, org_id)
        if method == "PATCH":
            return await self.patch(request, org_id)
        return await self.delete(request, org_id)

    async def collection_route(self, request: Request, org_id: str) -> Response:
        if request.method == "POST":
            return await self.create(request, org_id)
        return await self.list_(request, org_id)

    async def deliveries(self, request: Request, org_id: str) -> Response:
        endpoint = self._endpoint(request, org_id)
        if isinstance(endpoint, Response):
            return endpoint
        params = request.query_params
        outcome = params.get("outcome")
        outcomes = {str(o) for o in Outcome}
        if outcome is not None and outcome not in outcomes:
            return invalid("outcome", f"must be one of: {', '.join(sorted(outcomes))}")
        limit = _limit(params.get("limit"))
        if isinstance(limit, Response):
            return limit
        after = params.get("after", "0")
        if not (after.isascii() and after.isdigit()) or int(after) > openapi_doc.MAX_SEQ:
            return invalid("after", "must be a stream sequence (an integer from 0 to 2^63-1)")
        records = [
            d
            for d in await self._deliveries.of_endpoint(org_id, endpoint.endpoint_id)
            if d.stream_seq > int(after) and (outcome is None or d.outcome == outcome)
        ]
        page = records[:limit]
        return json_response(
            {
                "items": [delivery_view(d) for d in page],
                "next_after": page[-1].stream_seq if len(records) > limit else None,
            }
        )

    async def replay(self, request: Request, org_id: str) -> Response:
        endpoint = self._endpoint(request, org_id)
        if isinstance(endpoint, Response):
            return endpoint
        data = await self._body(request, ReplayRequest)
        if isinstance(data, Response):
            return data
        if data.event_id is not None and data.since is not None:
            return invalid("event_id", "give either event_id or since/until, not both")
        if data.event_id is not None:
            done = await self._replayer.by_event_id(endpoint, data.event_id)
            if done is None:
                return invalid("event_id", "no such event in the org's stream")
            return json_response(msgspec.to_builtins(done), 202)
        if data.since is None:
            return invalid("since", "give event_id, or since (and optionally until)")
        for name, value in (("since", data.since), ("until", data.until)):
            if value is not None and value.tzinfo is None:
                return invalid(name, "must carry a time zone (RFC 3339)")
        until = data.until or datetime.max.replace(tzinfo=data.since.tzinfo)
        if until <= data.since:
            return invalid("until", "must be after since")
        done = await self._replayer.by_time(endpoint, data.since, until)
        return json_response(msgspec.to_builtins(done), 202)

    async def events(self, request: Request, org_id: str) -> Response:
        params = request.query_params
        after = params.get("after", "0")
        if not (after.isascii() and after.isdigit()) or int(after) > openapi_doc.MAX_SEQ:
            return invalid("after", "must be a stream sequence (an integer from 0 to 2^63-1)")
        limit = _limit(params.get("limit"))
        if isinstance(limit, Response):
            return limit
        event_type = params.get("type")
        if event_type is not None and event_type not in EVENT_TYPES:
            return invalid("type", "must be an event type such as email_sent")
        stored = await self._reader.read(
            org_subject(org_id, event_type), after_seq=int(after), limit=limit
        )
        items = [{"seq": s.seq, "time": s.time, "event": msgspec.Raw(s.data)} for s in stored]
        return json_response(
            {"items": items, "next_after": stored[-1].seq if stored else int(after)}
        )

    def routes(self) -> list[BaseRoute]:
        """The API's routes."""
        base = "/v1/orgs/{org}/webhooks"
        item = base + "/{endpoint_id}"
        return [
            Route(base, self._guard(self.collection_route), methods=["GET", "POST"]),
            Route(item, self._guard(self.endpoint_route), methods=["GET", "PATCH", "DELETE"]),
            Route(item + "/deliveries", self._guard(self.deliveries), methods=["GET"]),
            Route(item + "/replay", self._guard(self.replay), methods=["POST"]),
            Route("/v1/orgs/{org}/events", self._guard(self.events), methods=["GET"]),
        ]


def build_app(api: Api, health: HealthCheck, asyncapi: Callable[[], str]) -> Starlette:
    """The webhooks API with /openapi.json, /healthz, /metrics and /asyncapi.json on one port."""
    routes = [*api.routes(), openapi_route(openapi_doc.openapi())]
    return api_app([*routes, *ops_routes(health, asyncapi=asyncapi)])
