"""When to try a delivery again: the Standard Webhooks schedule, jitter, Retry-After, giving up."""

from __future__ import annotations

import enum
import random
from collections.abc import Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Final

# The specification's example schedule: immediately, then after these delays.
DEFAULT_SCHEDULE_S: Final = (
    5.0,
    300.0,
    1800.0,
    7200.0,
    18000.0,
    36000.0,
    50400.0,
    72000.0,
    86400.0,
)
JITTER: Final = 0.1  # +-10 %, so that endpoints failing together do not retry together
MAX_RETRY_AFTER_S: Final = 86400.0


class Outcome(enum.StrEnum):
    """What became of one attempt, or of a delivery as a whole."""

    DELIVERED = "delivered"  # a 2xx answer
    RETRYING = "retrying"  # failed; another attempt is scheduled
    FAILED = "failed"  # failed for good: the last attempt, or the endpoint is gone
    DISABLED = "disabled"  # the endpoint answered 410 Gone and was disabled


def classify(status: int | None) -> Outcome:
    """Only 2xx delivers (3xx is a failure: redirects are not followed); 410 disables."""
    if status is not None and 200 <= status < 300:
        return Outcome.DELIVERED
    if status == 410:
        return Outcome.DISABLED
    return Outcome.RETRYING


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None when unusable."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # "¹".isdigit() is true too, and no number
        return min(float(value), MAX_RETRY_AFTER_S)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return min(max((when - now).total_seconds(), 0.0), MAX_RETRY_AFTER_S)


def next_delay(
    attempt: int,
    schedule: Sequence[float],
    *,
    status: int | None,
    retry_after: float | None,
    rng: random.Random,
) -> float | None:
    """Seconds until attempt `attempt + 1`, or None when attempt `attempt` was the last.

    `attempt` counts from 1. A 429 or 503 with Retry-After waits at least that long.
    """
    if attempt > len(schedule):
        return None
    delay = schedule[attempt - 1] * rng.uniform(1 - JITTER, 1 + JITTER)
    if status in (429, 503) and retry_after is not None:
        delay = max(delay, retry_after)
    return delay


def parse_schedule(text: str) -> tuple[float, ...]:
    """A schedule from `5s,5m,30m,2h`-style text (bare numbers are seconds)."""
    units = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    out: list[float] = []
    for raw in text.split(","):
        item = raw.strip().lower()
        if not item:
            continue
        factor = units.get(item[-1])
        number = item[:-1] if factor is not None else item
        try:
            value = float(number) * (factor or 1.0)
        except ValueError as exc:
            raise ValueError(f"bad delay {raw.strip()!r}") from exc
        if value < 0:
            raise ValueError(f"negative delay {raw.strip()!r}")
        out.append(value)
    return tuple(out)
