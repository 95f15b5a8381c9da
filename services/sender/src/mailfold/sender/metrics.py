"""The sender's Prometheus metrics, defined once per process."""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Gauge, Histogram

SENT: Final = Counter("mailfold_sender_sent_total", "Emails sent (EmailSent)", ["transport"])
DELIVERED: Final = Counter(
    "mailfold_sender_delivered_total", "Recipients whose server accepted the email"
)
DEFERRED: Final = Counter(
    "mailfold_sender_deferred_total", "Temporary failures reported for a recipient (EmailDeferred)"
)
BOUNCED: Final = Counter(
    "mailfold_sender_bounced_total", "Recipients the email will never reach", ["reason", "kind"]
)
REJECTED: Final = Counter(
    "mailfold_sender_rejected_total", "Emails or recipients refused before sending", ["reason"]
)
UNKNOWN_OUTCOMES: Final = Counter(
    "mailfold_sender_unknown_outcomes_total",
    "Recipients left 'attempting' by a sender that died mid-DATA; not sent again",
)
SMTP_SECONDS: Final = Histogram(
    "mailfold_sender_smtp_seconds",
    "Duration of one SMTP transaction (MAIL to the reply after DATA)",
    ["transport", "verdict"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
SMTP_CONNECT_FAILURES: Final = Counter(
    "mailfold_sender_smtp_connect_failures_total",
    "Servers that could not be reached",
    ["transport"],
)
HANDLED: Final = Counter(
    "mailfold_sender_emails_handled_total",
    "Deliveries of EmailComposed handled, by outcome",
    ["outcome"],  # done, retry, error
)
IN_FLIGHT: Final = Gauge(
    "mailfold_sender_in_flight",
    "EmailComposed being handled right now",
    multiprocess_mode="livesum",
)
