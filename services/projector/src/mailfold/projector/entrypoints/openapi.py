"""The query API's answers as types, and its OpenAPI 3.1 document generated from them."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final, Literal

import msgspec

from mailfold.events import Source
from mailfold.runtime.openapi import Operation, Param, document


class EmailPage(msgspec.Struct, kw_only=True):
    """A page of a record's Emails related list, newest first."""

    org_id: str
    record_id: str
    filter: Literal["all", "crm"]
    items: list[dict[str, Any]]
    next_cursor: str | None


class EmailWithHistory(msgspec.Struct, kw_only=True):
    """An email's state and every event about it, with the policy's decision on each."""

    email: dict[str, Any]
    history: list[dict[str, Any]]


class CampaignCounts(msgspec.Struct, kw_only=True):
    """What became of a bulk send's emails."""

    org_id: str
    campaign_id: str
    counts: dict[str, Any]


class CampaignPage(msgspec.Struct, kw_only=True):
    """A page of a bulk send's emails, in email-id order."""

    org_id: str
    campaign_id: str
    items: list[dict[str, Any]]
    next_cursor: str | None


class OrgStats(msgspec.Struct, kw_only=True):
    """An org's deliverability over [from, to): totals, per-source figures, top bounce reasons."""

    org_id: str
    from_: datetime = msgspec.field(name="from")
    to: datetime
    source: str | None
    totals: dict[str, Any]
    by_source: list[dict[str, Any]]
    bounce_reasons: list[dict[str, Any]]


INSTANT: Final[dict[str, Any]] = {
    "anyOf": [{"type": "string", "format": "date-time"}, {"type": "string", "format": "date"}]
}

ORG: Final = Param(
    "org", "path", {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,62}$"}, "the org id"
)
TEXT_ID: Final[dict[str, Any]] = {"type": "string", "minLength": 1, "maxLength": 200}


def operations() -> list[Operation]:
    """Every operation of the query API."""
    return [
        Operation(
            "GET",
            "/v1/orgs/{org}/records/{record_id}/emails",
            "listRecordEmails",
            "A record's Emails related list",
            {200: ("A page of the list", EmailPage)},
            (
                ORG,
                Param("record_id", "path", TEXT_ID),
                Param("filter", "query", {"enum": ["all", "crm"]}, "crm: sent from the CRM only"),
                Param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 200}),
                Param("cursor", "query", {"type": "string"}, "next_cursor of the previous page"),
            ),
            tags=("emails",),
        ),
        Operation(
            "GET",
            "/v1/orgs/{org}/emails/{email_id}",
            "getEmail",
            "An email with its full history",
            {200: ("The email", EmailWithHistory)},
            (ORG, Param("email_id", "path", TEXT_ID)),
            tags=("emails",),
        ),
        Operation(
            "GET",
            "/v1/orgs/{org}/campaigns/{campaign_id}",
            "getCampaign",
            "A bulk send's counts",
            {200: ("The counts", CampaignCounts)},
            (ORG, Param("campaign_id", "path", TEXT_ID)),
            tags=("campaigns",),
        ),
        Operation(
            "GET",
            "/v1/orgs/{org}/campaigns/{campaign_id}/emails",
            "listCampaignEmails",
            "A bulk send's emails",
            {200: ("A page of the emails", CampaignPage)},
            (
                ORG,
                Param("campaign_id", "path", TEXT_ID),
                Param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 500}),
                Param("cursor", "query", {"type": "string"}, "next_cursor of the previous page"),
            ),
            tags=("campaigns",),
        ),
        Operation(
            "GET",
            "/v1/orgs/{org}/stats",
            "getOrgStats",
            "The org's deliverability over a time window, by source",
            {200: ("The figures", OrgStats)},
            (
                ORG,
                Param(
                    "from",
                    "query",
                    INSTANT,
                    "window start (RFC 3339 with an offset, or a date): default to minus 30 days",
                ),
                Param("to", "query", INSTANT, "window end, exclusive: default now"),
                Param(
                    "source",
                    "query",
                    {"enum": sorted(s.value for s in Source)},
                    "only emails of this source",
                ),
            ),
            tags=("stats",),
        ),
    ]


def openapi() -> dict[str, Any]:
    """The query API's OpenAPI document."""
    return document(
        title="mailfold query API",
        version="1",
        description="Per-record email timelines and each email's history, folded from the "
        "event stream. Errors are application/problem+json naming each field at fault.",
        operations=operations(),
    )
