"""The ingest API's OpenAPI 3.1 document, generated from the body types the handlers convert to."""

from __future__ import annotations

from typing import Any, Final

from mailfold.ingest.domain import payloads
from mailfold.ingest.domain.campaigns import CampaignView
from mailfold.ingest.domain.template import Template
from mailfold.runtime.directory import OrgSettings, RecordEntry
from mailfold.runtime.openapi import Operation, Param, document

ORG: Final = Param(
    "org", "path", {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,62}$"}, "the org id"
)
IDENT: Final[dict[str, Any]] = {"type": "string", "pattern": "^[A-Za-z0-9_.:-]{1,64}$"}
TEMPLATE: Final = Param("template_id", "path", IDENT)
RECORD: Final = Param("record_id", "path", IDENT)
USER: Final = Param(
    "user", "path", {"type": "string", "pattern": "^[A-Za-z0-9_.:@=+-]{1,128}$"}, "the user id"
)
IDEMPOTENCY: Final = Param(
    "Idempotency-Key",
    "header",
    {"type": "string", "pattern": "^[!-~]{1,255}$"},
    "a retry with the same key and body answers the first email's id",
)


def operations() -> list[Operation]:
    """Every operation of the ingest API."""
    return [
        Operation(
            "POST",
            "/v1/orgs/{org}/emails",
            "composeEmail",
            "Compose an email",
            {
                202: (
                    "Recorded: the email's id, or for a bulk source (one email per recipient) "
                    "the campaign and each target's outcome",
                    (payloads.Accepted, CampaignView),
                )
            },
            (ORG, IDEMPOTENCY),
            payloads.ComposeEmailBody,
            ("emails",),
        ),
        Operation(
            "PUT",
            "/v1/orgs/{org}/templates/{template_id}",
            "putTemplate",
            "Create or replace a template",
            {200: ("The template, with content references", Template)},
            (ORG, TEMPLATE),
            payloads.TemplateBody,
            ("templates",),
        ),
        Operation(
            "GET",
            "/v1/orgs/{org}/templates/{template_id}",
            "getTemplate",
            "Read a template",
            {200: ("The template", Template)},
            (ORG, TEMPLATE),
            tags=("templates",),
        ),
        Operation(
            "PUT",
            "/v1/orgs/{org}/records/{record_id}",
            "putRecord",
            "Create or replace a record and its addresses",
            {200: ("The record", RecordEntry)},
            (ORG, RECORD),
            payloads.RecordBody,
            ("records",),
            links={
                200: {
                    "GetRecord": {
                        "operationId": "getRecord",
                        "parameters": {
                            "org": "$request.path.org",
                            "record_id": "$request.path.record_id",
                        },
                    }
                }
            },
        ),
        Operation(
            "GET",
            "/v1/orgs/{org}/records/{record_id}",
            "getRecord",
            "Read a record and the attachment bytes it holds",
            {200: ("The record", payloads.RecordView)},
            (ORG, RECORD),
            tags=("records",),
        ),
        Operation(
            "DELETE",
            "/v1/orgs/{org}/records/{record_id}",
            "deleteRecord",
            "Delete a record",
            {204: ("Deleted", None)},
            (ORG, RECORD),
            tags=("records",),
        ),
        Operation(
            "PUT",
            "/v1/orgs/{org}/settings",
            "putSettings",
            "Replace the org's settings",
            {200: ("The settings", OrgSettings)},
            (ORG,),
            payloads.SettingsBody,
            ("settings",),
        ),
        Operation(
            "GET",
            "/v1/orgs/{org}/settings",
            "getSettings",
            "Read the org's settings",
            {200: ("The settings", OrgSettings)},
            (ORG,),
            tags=("settings",),
        ),
        Operation(
            "PUT",
            "/v1/orgs/{org}/mailboxes/{user}",
            "putMailbox",
            "Set a user's integrated mailbox (the secret is never answered back)",
            {200: ("The mailbox without its secret", payloads.MailboxView)},
            (ORG, USER),
            payloads.MailboxBody,
            ("mailboxes",),
        ),
        Operation(
            "GET",
            "/v1/orgs/{org}/mailboxes/{user}",
            "getMailbox",
            "Read a user's integrated mailbox",
            {200: ("The mailbox without its secret", payloads.MailboxView)},
            (ORG, USER),
            tags=("mailboxes",),
        ),
    ]


def openapi() -> dict[str, Any]:
    """The ingest API's OpenAPI document."""
    return document(
        title="mailfold ingest API",
        version="1",
        description="Compose email and manage records, templates, settings and mailboxes. "
        "Errors are application/problem+json naming each field at fault.",
        operations=operations(),
    )
