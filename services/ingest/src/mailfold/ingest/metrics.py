"""Prometheus metrics of the ingest service, defined once per process."""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Histogram

HTTP_REQUESTS: Final = Counter(
    "mailfold_ingest_http_requests",
    "API requests answered, by route and status code.",
    ["route", "status"],
)
EMAILS_COMPOSED: Final = Counter(
    "mailfold_ingest_emails_composed",
    "Emails composed through the API (idempotent replays not counted), by source.",
    ["source"],
)
CAMPAIGN_TARGETS: Final = Counter(
    "mailfold_ingest_campaign_targets",
    "Targets of bulk sends (one email per recipient), by status and refusal reason.",
    ["status", "reason"],
)
IDEMPOTENT_REPLAYS: Final = Counter(
    "mailfold_ingest_idempotent_replays",
    "Compose requests answered from an earlier request with the same Idempotency-Key.",
)
SMTP_RECIPIENTS: Final = Counter(
    "mailfold_ingest_smtp_recipients",
    "RCPT commands answered, by outcome (accepted, refused, deferred, failed).",
    ["outcome"],
)
SMTP_MESSAGES: Final = Counter(
    "mailfold_ingest_smtp_messages",
    "Messages at the end of DATA, by kind (bounce, dropbox, inbound) and outcome.",
    ["kind", "outcome"],
)
SMTP_MESSAGE_BYTES: Final = Histogram(
    "mailfold_ingest_smtp_message_bytes",
    "Size of messages received by SMTP.",
    buckets=(1e3, 1e4, 1e5, 1e6, 5e6, 1e7, 2.5e7, 5e7),
)
BOUNCE_REPORTS: Final = Counter(
    "mailfold_ingest_bounce_reports",
    "Messages to bounce+<token> addresses, by outcome (published, invalid_token, unparsed).",
    ["outcome"],
)
EVENTS_PUBLISHED: Final = Counter(
    "mailfold_ingest_events_published",
    "Events acknowledged by MAIL_EVENTS (a duplicate dropped by JetStream counts too), by type.",
    ["type"],
)
PUBLISH_FAILURES: Final = Counter(
    "mailfold_ingest_publish_failures",
    "Publishes MAIL_EVENTS did not acknowledge (the request or message was refused for a retry).",
)
BOUNCE_PARSER_ERRORS: Final = Counter(
    "mailfold_ingest_bounce_parser_errors",
    "Reports on which the bounce parser raised (logged with the message's SHA-256; still kept).",
)
SMTP_CONNECTIONS_REFUSED: Final = Counter(
    "mailfold_ingest_smtp_connections_refused",
    "SMTP connections turned away with 421 because the listener had its maximum open.",
)
HTTP_SECONDS: Final = Histogram(
    "mailfold_ingest_http_request_seconds",
    "Time to answer an API request, by route.",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
