"""Stream, subject and header naming shared by every producer and consumer."""

from __future__ import annotations

from typing import Final

from mailfold.events.events import Event

STREAM: Final = "MAIL_EVENTS"
SUBJECT_PREFIX: Final = "mail.events"
STREAM_SUBJECTS: Final = ("mail.events.>",)
DLQ_STREAM: Final = "MAIL_DLQ"
DLQ_PREFIX: Final = "mail.dlq"
DLQ_SUBJECTS: Final = ("mail.dlq.>",)
MSG_ID_HEADER: Final = "Nats-Msg-Id"


def subject_for(org_id: str, event_type: str) -> str:
    """`mail.events.<org>.<event_type>`."""
    return f"{SUBJECT_PREFIX}.{org_id}.{event_type}"


def event_subject(event: Event) -> str:
    """The subject an event is published on."""
    return subject_for(event.org_id, event.event_type)


def publish_headers(event: Event) -> dict[str, str]:
    """Headers for a publish: the event id as Nats-Msg-Id so JetStream drops a duplicate publish."""
    return {MSG_ID_HEADER: event.event_id}


def dlq_subject(consumer: str) -> str:
    """`mail.dlq.<consumer>`."""
    return f"{DLQ_PREFIX}.{consumer}"
