"""The webhooks API's answers as types, and its OpenAPI 3.1 document generated from them and
from the body types the handlers decode to."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

import msgspec

from mailfold.events import EVENT_TYPES
from mailfold.runtime.openapi import Operation, Param, document
from mailfold.webhooks.domain.deliveries import Delivery
from mailfold.webhooks.domain.endpoints import EndpointInput, EndpointPatch
from mailfold.webhooks.domain.retries import Outcome
from mailfold.webhooks.service_layer.replay import Replayed, ReplayRequest

MAX_LIMIT: Final = 500
MAX_SEQ: Final = 2**63 - 1  # beyond any stream sequence; larger ones NATS refuses


class SecretInfo(msgspec.Struct, kw_only=True):
    """A signing secret as listed: only when it was made (its value is shown once)."""

    created_at: datetime


class EndpointView(msgspec.Struct, kw_only=True):
    """An endpoint as the API shows it. `secret` is present only in the answer that made it
    (creation, rotation); `backlog` only when one endpoint is read."""

    id: str
    org_id: str
    url: str
    event_types: list[str]
    sources: list[str]
    description: str
    enabled: bool
    disabled_reason: str | None
    signing_secrets: list[SecretInfo]
    created_at: datetime
    updated_at: datetime
    secret: str | msgspec.UnsetType = msgspec.UNSET
    backlog: int | msgspec.UnsetType = msgspec.UNSET


class EndpointList(msgspec.Struct, kw_only=True):
    """The org's endpoints."""

    items: list[EndpointView]


class DeliveryView(Delivery, frozen=True, kw_only=True):
    """A delivery record; `webhook_id` is the event id every attempt and replay sends."""

    webhook_id: str


class DeliveryPage(msgspec.Struct, kw_only=True):
    """A page of an endpoint's deliveries in stream order; pass `next_after` as `after`."""

    items: list[DeliveryView]
    next_after: int | None


class StoredEvent(msgspec.Struct, kw_only=True):
    """One event of the org's stream: its sequence, when it was stored, the event itself."""

    seq: int
    time: datetime
    event: dict[str, Any]


class EventPage(msgspec.Struct, kw_only=True):
    """A page of the org's events; pass `next_after` as `after` to poll for more."""

    items: list[StoredEvent]
    next_after: int


ORG: Final = Param(
    "org", "path", {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,62}$"}, "the org id"
)
ENDPOINT: Final = Param("endpoint_id", "path", {"type": "string", "minLength": 1}, "the webhook id")
LIMIT: Final = Param("limit", "query", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT})
AFTER: Final = Param(
    "after",
    "query",
    {"type": "integer", "minimum": 0, "maximum": MAX_SEQ},
    "the stream sequence to read after",
)


def operations() -> list[Operation]:
    """Every operation of the webhooks API."""
    return [
        Operation(
            "POST",
            "/v1/orgs/{org}/webhooks",
            "createWebhook",
            "Add an endpoint (its signing secret is answered once, here)",
            {201: ("The endpoint, with its secret", EndpointView)},
            (ORG,),
            EndpointInput,
            ("webhooks",),
        ),
        Operation(
            "GET",
            "/v1/orgs/{org}/webhooks",
            "listWebhooks",
            "The org's endpoints",
            {200: ("The endpoints, without secrets", EndpointList)},
            (ORG,),
            tags=("webhooks",),
        ),
        Operation(
            "GET",
            "/v1/orgs/{org}/webhooks/{endpoint_id}",
            "getWebhook",
            "An endpoint and its delivery backlog",
            {200: ("The endpoint, without secrets", EndpointView)},
            (ORG, ENDPOINT),
            tags=("webhooks",),
        ),
        Operation(
            "PATCH",
            "/v1/orgs/{org}/webhooks/{endpoint_id}",
            "patchWebhook",
            "Change an endpoint or rotate its secret",
            {200: ("The endpoint, with the new secret after a rotation", EndpointView)},
            (ORG, ENDPOINT),
            EndpointPatch,
            ("webhooks",),
        ),
        Operation(
            "DELETE",
            "/v1/orgs/{org}/webhooks/{endpoint_id}",
            "deleteWebhook",
            "Remove an endpoint",
            {204: ("Removed", None)},
            (ORG, ENDPOINT),
            tags=("webhooks",),
        ),
        Operation(
            "GET",
            "/v1/orgs/{org}/webhooks/{endpoint_id}/deliveries",
            "listDeliveries",
            "An endpoint's deliveries and their attempts",
            {200: ("A page of deliveries", DeliveryPage)},
            (
                ORG,
                ENDPOINT,
                Param("outcome", "query", {"enum": sorted(str(o) for o in Outcome)}),
                LIMIT,
                AFTER,
            ),
            tags=("webhooks",),
        ),
        Operation(
            "POST",
            "/v1/orgs/{org}/webhooks/{endpoint_id}/replay",
            "replayWebhook",
            "Send one event, or the events of a time window, to the endpoint again",
            {202: ("What was queued; when incomplete, replay again from last_time", Replayed)},
            (ORG, ENDPOINT),
            ReplayRequest,
            ("webhooks",),
        ),
        Operation(
            "GET",
            "/v1/orgs/{org}/events",
            "listEvents",
            "The org's events, for polling instead of (or besides) webhooks",
            {200: ("A page of events", EventPage)},
            (
                ORG,
                AFTER,
                LIMIT,
                Param("type", "query", {"enum": sorted(EVENT_TYPES)}, "only events of this type"),
            ),
            tags=("events",),
        ),
    ]


def openapi() -> dict[str, Any]:
    """The webhooks API's OpenAPI document."""
    return document(
        title="mailfold webhooks API",
        version="1",
        description="Webhook endpoints, their deliveries and replays, and the org's events for "
        "polling. Errors are application/problem+json naming each field at fault.",
        operations=operations(),
    )
