"""The query API: a record's Emails related list, and an email with its full history."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final

import msgspec
from nats.js.kv import KeyValue
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from mailfold.projector.adapters.queries import ProjectionQueries
from mailfold.projector.domain.cursor import InvalidCursor, decode_cursor, encode_cursor
from mailfold.projector.entrypoints.campaigns import CampaignEndpoints
from mailfold.projector.entrypoints.openapi import EmailPage, EmailWithHistory, openapi
from mailfold.projector.service_layer import views
from mailfold.runtime.directory import load_record
from mailfold.runtime.openapi import openapi_route
from mailfold.runtime.ops import HealthCheck, ops_routes
from mailfold.runtime.orgs import TokenVerifier, bearer, check_bearer
from mailfold.runtime.problems import FieldError, api_app, page_limit, problem

DEFAULT_LIMIT: Final = 50
MAX_LIMIT: Final = 200
FILTERS: Final = ("all", "crm")
_ENCODER: Final = msgspec.json.Encoder()


def json_response(body: Any, status: int = 200) -> Response:
    """A JSON response encoded by msgspec (datetimes as RFC 3339)."""
    return Response(_ENCODER.encode(body), status_code=status, media_type="application/json")


def not_found(what: str) -> Response:
    """404, also for ids of another org, so that ids do not leak."""
    return problem(404, f"no such {what}", [FieldError(what, "not found")])


class Api:
    """Route handlers over the projection's queries."""

    def __init__(
        self,
        queries: ProjectionQueries,
        verifier: TokenVerifier,
        directory: KeyValue | None,
        *,
        available: Callable[[], bool] = lambda: True,
    ) -> None:
        self._queries = queries
        self._verifier = verifier
        self._directory = directory
        self._available = available

    async def authorize(self, request: Request, org_id: str) -> Response | None:
        """None when the request's bearer token is the org's, else the problem to answer."""
        # Tokens are checked against NATS: while it is away, answer 503 at once (the Guard
        # turns this error into the problem) rather than wait for the lookup to time out.
        if not self._available():
            raise ConnectionError("not connected to NATS")
        header = request.headers.get("authorization")
        refused = await check_bearer(self._verifier, org_id, header)
        if refused is None:
            return None
        if refused == 404:  # another org's valid token: say nothing about which org exists
            return not_found("org")
        return problem(
            401,
            "the bearer token is not valid" if bearer(header) else "a bearer token is required",
            [FieldError("Authorization", "missing or invalid bearer token")],
            headers={"WWW-Authenticate": "Bearer"},
        )

    async def record_emails(self, request: Request) -> Response:
        org_id = request.path_params["org"]
        record_id = request.path_params["record_id"]
        refused = await self.authorize(request, org_id)
        if refused is not None:
            return refused
        params = request.query_params
        errors: list[FieldError] = []
        filter_ = params.get("filter", "all")
        if filter_ not in FILTERS:
            errors.append(FieldError("filter", "must be one of: all, crm"))
        limit = page_limit(params.get("limit"), DEFAULT_LIMIT, MAX_LIMIT, errors)
        after = None
        raw_cursor = params.get("cursor")
        if raw_cursor is not None:
            try:
                after = decode_cursor(raw_cursor)
            except InvalidCursor as exc:
                errors.append(FieldError("cursor", str(exc)))
        if errors:
            fields = ", ".join(e.field for e in errors)
            return problem(422, f"invalid query: {fields}", errors)
        rows = await self._queries.record_emails(
            org_id, record_id, crm_only=filter_ == "crm", after=after, limit=limit + 1
        )
        if not rows and after is None and not await self._record_exists(org_id, record_id):
            return not_found("record")
        page = rows[:limit]
        next_cursor = None
        if len(rows) > limit:
            last = page[-1]
            next_cursor = encode_cursor(last["email_at"], last["email_id"])
        return json_response(
            EmailPage(
                org_id=org_id,
                record_id=record_id,
                filter="crm" if filter_ == "crm" else "all",
                items=[views.list_item(r) for r in page],
                next_cursor=next_cursor,
            )
        )

    async def _record_exists(self, org_id: str, record_id: str) -> bool:
        if await self._queries.record_known(org_id, record_id):
            return True
        if self._directory is None:
            return False
        try:
            return await load_record(self._directory, org_id, record_id) is not None
        except Exception:  # a record id the directory cannot key is not a record
            return False

    async def email(self, request: Request) -> Response:
        org_id = request.path_params["org"]
        email_id = request.path_params["email_id"]
        refused = await self.authorize(request, org_id)
        if refused is not None:
            return refused
        row = await self._queries.email(email_id, org_id)
        if row is None:
            return not_found("email")
        links = await self._queries.links(email_id)
        history = await self._queries.history(email_id, org_id)
        return json_response(
            EmailWithHistory(
                email=views.email_detail(row, links),
                history=[views.history_entry(h) for h in history],
            )
        )

    def routes(self) -> list[BaseRoute]:
        campaigns = CampaignEndpoints(self._queries.campaigns, self.authorize, json_response)
        return [
            Route("/v1/orgs/{org}/records/{record_id}/emails", self.record_emails),
            Route("/v1/orgs/{org}/emails/{email_id}", self.email),
            *campaigns.routes(),
        ]


def build_app(
    api: Api,
    health: HealthCheck,
    extra: Sequence[BaseRoute] = (),
    *,
    asyncapi: Callable[[], str],
    details: Callable[[], dict[str, object]] | None = None,
) -> Starlette:
    """The query API (and `extra` routes: stats, the record page) with /healthz, /metrics and
    /asyncapi.json; `details` (the partitions held) shows in /healthz."""
    ops = ops_routes(health, asyncapi=asyncapi, details=details)
    routes = [*api.routes(), *extra, openapi_route(openapi()), *ops]
    return api_app(routes)
