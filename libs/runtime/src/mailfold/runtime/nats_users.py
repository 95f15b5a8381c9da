"""The NATS users and what each may publish: one table for the embedded servers and deploy/.

nats-server enforces it. Each service connects as its own user and may publish only the events
it emits (`mail.events.<org>.<event_type>`), its own KV buckets, object store, job stream and
dead letters, plus what any JetStream client needs. `admin` (no restrictions) is for operators
and the CLI. `mailfold.cli.natsconf` writes the nats-server configuration from this table, for
`mailfold dev`, the tests and deploy/nats/ alike.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from mailfold.events.subjects import DLQ_PREFIX, subject_for

ACCOUNT: Final = "MAILFOLD"
ADMIN: Final = "admin"

# Stream and consumer calls, pull requests, KV and direct gets ($JS.API), acks ($JS.ACK), flow
# control replies of ordered consumers such as an object store read ($JS.FC), replies (_INBOX).
JETSTREAM_CLIENT: Final = ("$JS.API.>", "$JS.ACK.>", "$JS.FC.>", "_INBOX.>")
# Publish acks, pulled messages, request replies and push deliveries all arrive on inboxes.
SUBSCRIBE: Final = ("_INBOX.>",)


def kv(bucket: str) -> str:
    """The subjects a KV put on `bucket` publishes to."""
    return f"$KV.{bucket}.>"


def object_store(name: str) -> str:
    """The subjects an object store put on `name` publishes to (chunks and metadata)."""
    return f"$O.{name}.>"


def dead_letters(consumer: str) -> str:
    """Where a consumer parks what it cannot use."""
    return f"{DLQ_PREFIX}.{consumer}"


@dataclass(frozen=True, slots=True)
class NatsUser:
    """One NATS user: the event types it may publish and its other publish subjects."""

    name: str
    comment: str
    events: tuple[str, ...] = ()
    subjects: tuple[str, ...] = ()
    unrestricted: bool = False

    @property
    def publish(self) -> tuple[str, ...]:
        """Every subject this user may publish to (nothing else is allowed)."""
        return (
            *(subject_for("*", event) for event in self.events),
            *self.subjects,
            *JETSTREAM_CLIENT,
        )

    @property
    def subscribe(self) -> tuple[str, ...]:
        return SUBSCRIBE

    @property
    def password_variable(self) -> str:
        """The environment variable deploy/nats/ reads this user's password from."""
        return f"MAILFOLD_NATS_{self.name.upper()}_PASSWORD"


USERS: Final = (
    NatsUser(
        ADMIN,
        "Operators and the CLI (topology, orgs, replay, tail): no restrictions.",
        unrestricted=True,
    ),
    NatsUser(
        "ingest",
        "Composed, captured and received mail, and the outcomes it reads from bounces.",
        events=(
            "email_composed",
            "email_captured",
            "email_received",
            "email_sent",
            "email_bounced",
            "email_deferred",
            "email_delivered",
            "email_complained",
            "email_deleted",
        ),
        subjects=(
            kv("mailfold_orgs"),
            kv("mailfold_directory"),
            kv("mailfold_idempotency"),
            object_store("mailfold_content"),
        ),
    ),
    NatsUser(
        "sender",
        "Delivery outcomes; its counters, marks and VERP records.",
        events=(
            "email_sent",
            "email_delivered",
            "email_deferred",
            "email_bounced",
            "email_rejected",
        ),
        subjects=(dead_letters("sender"), kv("mailfold_sender")),
    ),
    NatsUser("tracker", "Opens and clicks.", events=("email_opened", "email_clicked")),
    NatsUser(
        "projector",
        "No events: dead letters of its consumers.",
        subjects=(dead_letters(">"),),
    ),
    NatsUser(
        "webhooks",
        "No events: its delivery jobs, buckets and dead letters.",
        subjects=(
            "webhooks.jobs.>",
            dead_letters("webhooks"),
            kv("mailfold_webhooks"),
            kv("mailfold_webhook_deliveries"),
            kv("mailfold_webhook_emails"),
        ),
    ),
    NatsUser(
        "mailbox",
        "What it syncs from users' own mailboxes; its sync state and status.",
        events=("email_received", "email_captured", "email_sent", "email_bounced", "email_deleted"),
        subjects=(kv("mailfold_mailbox"), kv("mailfold_orgs")),
    ),
)
SERVICE_USERS: Final = tuple(user for user in USERS if not user.unrestricted)


def user(name: str) -> NatsUser:
    """The user called `name`."""
    for candidate in USERS:
        if candidate.name == name:
            return candidate
    raise KeyError(name)


def _strings(values: tuple[str, ...]) -> str:
    return ", ".join(json.dumps(v) for v in values)


def accounts_block(password: Callable[[NatsUser], str]) -> list[str]:
    """The nats-server `accounts` block of USERS; `password(user)` is each one's config value
    (a `$VARIABLE` reference, or a quoted string)."""
    lines = ["accounts {", f"  {ACCOUNT} {{", "    jetstream: enabled", "    users: ["]
    for entry in USERS:
        lines += [
            "      {",
            f"        # {entry.comment}",
            f"        user: {entry.name}",
            f"        password: {password(entry)}",
        ]
        if not entry.unrestricted:
            lines += [
                "        permissions: {",
                "          publish: {",
                "            allow: [",
                *(f"              {json.dumps(subject)}" for subject in entry.publish),
                "            ]",
                "          }",
                f"          subscribe: {{ allow: [{_strings(entry.subscribe)}] }}",
                "        }",
            ]
        lines.append("      }")
    lines += ["    ]", "  }", "}"]
    return lines
