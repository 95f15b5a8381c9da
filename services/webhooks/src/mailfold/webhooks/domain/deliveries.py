"""A delivery job (one event for one endpoint) and the record of its attempts."""

from __future__ import annotations

from datetime import datetime
from typing import Final

import msgspec

from mailfold.webhooks.domain.retries import Outcome

MAX_ATTEMPTS_KEPT: Final = 20  # a record keeps the latest attempts; the count is kept in full


class Job(msgspec.Struct, frozen=True, kw_only=True):
    """What the delivery queue holds: everything needed to send, computed once at fan-out."""

    org_id: str
    endpoint_id: str
    event_id: str  # also the webhook-id, on every attempt and every replay
    event_type: str
    email_id: str
    occurred_at: datetime
    stream_seq: int
    body: bytes
    replay: bool = False
    # A retry of an attempt made straight from the fan-out: the attempts already made, and when
    # the next one is due (the queue holds the job back until then).
    attempts_made: int = 0
    not_before: datetime | None = None


class Attempt(msgspec.Struct, frozen=True, kw_only=True):
    """One HTTP attempt: when, the answer (None when none came), how long, what went wrong."""

    number: int
    at: datetime
    status_code: int | None
    latency_ms: float
    outcome: Outcome
    error: str = ""
    next_attempt_at: datetime | None = None


class Delivery(msgspec.Struct, frozen=True, kw_only=True):
    """The state of one event's delivery to one endpoint, as the deliveries API shows it."""

    org_id: str
    endpoint_id: str
    event_id: str
    event_type: str
    email_id: str
    stream_seq: int
    outcome: Outcome
    attempts: int
    history: tuple[Attempt, ...] = ()
    replays: int = 0
    updated_at: datetime


def record(previous: Delivery | None, job: Job, attempt: Attempt) -> Delivery:
    """The delivery record after one more attempt."""
    history = (*(previous.history if previous else ()), attempt)[-MAX_ATTEMPTS_KEPT:]
    replays = (previous.replays if previous else 0) + (
        1 if job.replay and attempt.number == 1 else 0
    )
    return Delivery(
        org_id=job.org_id,
        endpoint_id=job.endpoint_id,
        event_id=job.event_id,
        event_type=job.event_type,
        email_id=job.email_id,
        stream_seq=job.stream_seq,
        outcome=attempt.outcome,
        attempts=(previous.attempts if previous else 0) + 1,
        history=history,
        replays=replays,
        updated_at=attempt.at,
    )
