"""The ingest HTTP API (starlette): decode the request, call a handler, encode the answer."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Final

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from mailfold.events import one_per_recipient
from mailfold.ingest.domain import requests as req
from mailfold.ingest.domain.validation import BadKey, FieldError, TooLarge
from mailfold.ingest.entrypoints.openapi import openapi
from mailfold.ingest.metrics import (
    CAMPAIGN_TARGETS,
    EMAILS_COMPOSED,
    HTTP_REQUESTS,
    HTTP_SECONDS,
    IDEMPOTENT_REPLAYS,
)
from mailfold.ingest.service_layer import api, campaigns
from mailfold.ingest.service_layer.ports import Ports
from mailfold.runtime.logging import get_logger
from mailfold.runtime.openapi import openapi_route
from mailfold.runtime.ops import HealthCheck, ops_routes
from mailfold.runtime.orgs import TokenVerifier, bearer
from mailfold.runtime.problems import (
    UNAVAILABLE,
    HttpProblem,
    api_app,
    problem,
    problem_for,
    unavailable,
)

MAX_REQUEST_BYTES: Final = 20 * 1024 * 1024  # 10 MiB of attachments is 13.4 MiB in base64
MAX_IDEMPOTENCY_KEY: Final = 255

log = get_logger("mailfold.ingest.http")
_json = msgspec.json.Encoder()

Endpoint = Callable[[Request, str], Awaitable[Response]]
# Each route's handlers by method; HEAD is answered by the GET handler, never by another.
Methods = Mapping[str, Endpoint]


def json_response(
    body: object, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(_json.encode(body), status, headers, media_type="application/json")


async def read_body(request: Request, limit: int = MAX_REQUEST_BYTES) -> bytes:
    """The request body, refused with 413 past `limit` bytes without reading it all into memory."""
    too_big = TooLarge([FieldError("body", f"request bodies are limited to {limit} bytes")])
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise too_big
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request) -> object:
    """The request's JSON document; 422 naming `body` when it is not JSON."""
    return req.decode_json(await read_body(request))


def idempotency_key(request: Request) -> str | None:
    """The Idempotency-Key header (a structured-field string; the quotes are optional)."""
    raw = request.headers.get("idempotency-key")
    if raw is None:
        return None
    key = raw.strip()
    if len(key) >= 2 and key[0] == key[-1] == '"':
        key = key[1:-1]
    if not key or len(key) > MAX_IDEMPOTENCY_KEY or not all(0x21 <= ord(c) <= 0x7E for c in key):
        raise BadKey(
            [
                FieldError(
                    "Idempotency-Key",
                    f"must be 1-{MAX_IDEMPOTENCY_KEY} visible ASCII characters",
                )
            ]
        )
    return key


class IngestApi:
    """The routes of the API, bound to the handlers' ports and the org token verifier."""

    def __init__(
        self, ports: Ports, verifier: TokenVerifier, available: Callable[[], bool] = lambda: True
    ) -> None:
        self._ports = ports
        self._verifier = verifier
        self._available = available

    def routes(self) -> list[BaseRoute]:
        route = self._route
        return [
            route("/v1/orgs/{org}/emails", "emails", {"POST": self.compose}),
            route(
                "/v1/orgs/{org}/templates/{template_id}",
                "templates",
                {"GET": self.get_template, "PUT": self.put_template},
            ),
            route(
                "/v1/orgs/{org}/records/{record_id}",
                "records",
                {"GET": self.get_record, "PUT": self.put_record, "DELETE": self.delete_record},
            ),
            route(
                "/v1/orgs/{org}/settings",
                "settings",
                {"GET": self.get_settings, "PUT": self.put_settings},
            ),
            route(
                "/v1/orgs/{org}/mailboxes/{user}",
                "mailboxes",
                {"GET": self.get_mailbox, "PUT": self.put_mailbox},
            ),
        ]

    def _route(self, path: str, name: str, methods: Methods) -> Route:
        return Route(path, self._guard(name, methods), methods=list(methods))

    def _guard(self, name: str, methods: Methods) -> Callable[[Request], Awaitable[Response]]:
        """Method dispatch, bearer-token check, problem answers for refusals and outages, metrics."""
        handlers = dict(methods)
        if "GET" in handlers:
            handlers["HEAD"] = handlers["GET"]
        allowed = ", ".join(handlers)

        async def run(request: Request) -> Response:
            endpoint = handlers.get(request.method)
            if endpoint is None:
                response = problem(
                    405,
                    f"{request.method} is not answered at this path",
                    [FieldError("method", f"use {allowed}")],
                    headers={"Allow": allowed},
                )
            else:
                started = time.perf_counter()
                try:
                    response = await self._answer(request, request.path_params["org"], endpoint)
                except Exception:
                    HTTP_REQUESTS.labels(name, "500").inc()
                    raise
                HTTP_SECONDS.labels(name).observe(time.perf_counter() - started)
            HTTP_REQUESTS.labels(name, str(response.status_code)).inc()
            return response

        return run

    async def _answer(self, request: Request, org_id: str, endpoint: Endpoint) -> Response:
        try:
            if not self._available():
                raise ConnectionError("not connected to NATS")
            token = bearer(request.headers.get("authorization"))
            if not await self._verifier.verify(org_id, token):
                return problem(
                    401,
                    "a valid bearer token for this org is required",
                    [FieldError("Authorization", "missing or invalid bearer token")],
                    headers={"WWW-Authenticate": 'Bearer realm="mailfold"'},
                )
            return await endpoint(request, org_id)
        except HttpProblem as exc:
            return problem_for(exc)
        except UNAVAILABLE as exc:
            log.warning("nats_unavailable", path=request.url.path, error=repr(exc))
            return unavailable()

    async def compose(self, request: Request, org_id: str) -> Response:
        """`POST /v1/orgs/{org}/emails`."""
        key = idempotency_key(request)
        document = await read_json(request)
        cmd = req.compose_from_json(document)
        if one_per_recipient(cmd.source):
            return await self._campaign(org_id, cmd, key, document)
        composed = await api.compose_email(
            self._ports,
            org_id,
            cmd,
            idempotency_key=key,
            fingerprint=req.fingerprint(document) if key is not None else "",
        )
        if composed.replayed:
            IDEMPOTENT_REPLAYS.inc()
        else:
            EMAILS_COMPOSED.labels(cmd.source.value).inc()
            log.info(
                "email_composed",
                org_id=org_id,
                email_id=composed.email_id,
                event_id=composed.event_id,
                source=cmd.source.value,
            )
        return json_response(
            {"email_id": composed.email_id},
            202,
            {"Location": f"/v1/orgs/{org_id}/emails/{composed.email_id}"},
        )

    async def _campaign(
        self, org_id: str, cmd: req.ComposeEmail, key: str | None, document: object
    ) -> Response:
        """A bulk send: one email per recipient, answered as a campaign."""
        campaign = await campaigns.compose_campaign(
            self._ports,
            org_id,
            cmd,
            idempotency_key=key,
            fingerprint=req.fingerprint(document) if key is not None else "",
        )
        if campaign.replayed:
            IDEMPOTENT_REPLAYS.inc()
        else:
            sent = sum(1 for e in campaign.view.emails if e.email_id is not None)
            EMAILS_COMPOSED.labels(cmd.source.value).inc(sent)
            for target in campaign.view.emails:
                CAMPAIGN_TARGETS.labels(target.status, target.reason or "").inc()
            log.info(
                "campaign_composed",
                org_id=org_id,
                campaign_id=campaign.campaign_id,
                emails=sent,
                source=cmd.source.value,
            )
        return json_response(
            campaign.view,
            202,
            {"Location": f"/v1/orgs/{org_id}/campaigns/{campaign.campaign_id}"},
        )

    async def get_template(self, request: Request, org_id: str) -> Response:
        """`GET /v1/orgs/{org}/templates/{template_id}`."""
        template_id = req.valid_ident("template_id", request.path_params["template_id"])
        return json_response(await api.get_template(self._ports, org_id, template_id))

    async def put_template(self, request: Request, org_id: str) -> Response:
        """`PUT /v1/orgs/{org}/templates/{template_id}`."""
        template_id = req.valid_ident("template_id", request.path_params["template_id"])
        cmd = req.template_from_json(template_id, await read_json(request))
        return json_response(await api.put_template(self._ports, org_id, cmd))

    async def get_record(self, request: Request, org_id: str) -> Response:
        """`GET /v1/orgs/{org}/records/{record_id}`."""
        record_id = req.valid_ident("record_id", request.path_params["record_id"])
        return json_response(await api.record_view(self._ports, org_id, record_id))

    async def put_record(self, request: Request, org_id: str) -> Response:
        """`PUT /v1/orgs/{org}/records/{record_id}`."""
        record_id = req.valid_ident("record_id", request.path_params["record_id"])
        record = req.record_from_json(record_id, await read_json(request))
        return json_response(await api.put_record(self._ports, org_id, record))

    async def delete_record(self, request: Request, org_id: str) -> Response:
        """`DELETE /v1/orgs/{org}/records/{record_id}`."""
        record_id = req.valid_ident("record_id", request.path_params["record_id"])
        await api.delete_record(self._ports, org_id, record_id)
        return Response(status_code=204)

    async def get_settings(self, request: Request, org_id: str) -> Response:
        """`GET /v1/orgs/{org}/settings`."""
        return json_response(await api.get_settings(self._ports, org_id))

    async def put_settings(self, request: Request, org_id: str) -> Response:
        """`PUT /v1/orgs/{org}/settings`."""
        settings = req.settings_from_json(await read_json(request))
        return json_response(await api.put_settings(self._ports, org_id, settings))

    async def get_mailbox(self, request: Request, org_id: str) -> Response:
        """`GET /v1/orgs/{org}/mailboxes/{user}`; the secret is never answered back."""
        user = req.valid_user(request.path_params["user"])
        return json_response(await api.get_mailbox(self._ports, org_id, user))

    async def put_mailbox(self, request: Request, org_id: str) -> Response:
        """`PUT /v1/orgs/{org}/mailboxes/{user}`."""
        user = req.valid_user(request.path_params["user"])
        mailbox = req.mailbox_from_json(await read_json(request))
        return json_response(await api.put_mailbox(self._ports, org_id, user, mailbox))


def build_app(
    ports: Ports,
    verifier: TokenVerifier,
    health: HealthCheck,
    *,
    asyncapi: Callable[[], str],
    available: Callable[[], bool] = lambda: True,
) -> Starlette:
    """The API with /healthz, /metrics and /asyncapi.json on the same port.

    `available` says whether NATS is reachable; while it is not, requests get 503 at once
    instead of waiting for timeouts.
    """
    return api_app(
        [
            *IngestApi(ports, verifier, available).routes(),
            openapi_route(openapi()),
            *ops_routes(health, asyncapi=asyncapi),
        ]
    )
