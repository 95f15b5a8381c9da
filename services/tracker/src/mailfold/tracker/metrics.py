"""The tracker's Prometheus metrics, defined once per process (a second start reuses them)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from prometheus_client import Counter, Gauge, Histogram

from mailfold.events import EmailClicked, EmailOpened, Event

OPENS: Final = Counter(
    "mailfold_tracker_opens_total",
    "Opens recorded (accepted for publishing), by verdict and detection label",
    ["verdict", "label"],
)
CLICKS: Final = Counter(
    "mailfold_tracker_clicks_total",
    "Clicks recorded (accepted for publishing), by verdict and detection label",
    ["verdict", "label"],
)
INVALID_TOKENS: Final = Counter(
    "mailfold_tracker_invalid_tokens_total",
    "Requests whose token recorded nothing, by endpoint and reason",
    ["endpoint", "reason"],
)
EVENTS_PUBLISHED: Final = Counter(
    "mailfold_tracker_events_published_total",
    "Events acknowledged by JetStream",
)
PUBLISH_FAILURES: Final = Counter(
    "mailfold_tracker_publish_failures_total",
    "Publish attempts that failed and will be retried",
)
EVENTS_DROPPED: Final = Counter(
    "mailfold_tracker_events_dropped_total",
    "Events that could not be kept: buffer full, or not published before the stop deadline",
    ["reason"],
)
BACKLOG: Final = Gauge(
    "mailfold_tracker_publish_backlog",
    "Events accepted and not yet acknowledged by JetStream (buffered, in flight or retrying)",
    multiprocess_mode="livesum",
)
REQUEST_SECONDS: Final = Histogram(
    "mailfold_tracker_request_seconds",
    "Time to answer a pixel or redirect request, by endpoint",
    ["endpoint"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)


def count_recorded(offer: Callable[[Event], bool]) -> Callable[[EmailOpened | EmailClicked], None]:
    """Wrap the buffer's `offer`: count each open or click it accepts, by verdict and label."""
    children: dict[tuple[bool, str, str], Counter] = {}

    def emit(event: EmailOpened | EmailClicked) -> None:
        if not offer(event):
            return
        key = (isinstance(event, EmailOpened), event.verdict.value, event.label)
        child = children.get(key)
        if child is None:
            child = children[key] = (OPENS if key[0] else CLICKS).labels(key[1], key[2])
        child.inc()

    return emit
