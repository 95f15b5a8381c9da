"""The webhooks service's Prometheus metrics (labels are bounded: outcomes, never endpoints)."""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Gauge, Histogram

DELIVERIES: Final = Counter(
    "mailfold_webhooks_deliveries_total",
    "Deliveries settled, by outcome (delivered, failed, disabled)",
    ["outcome"],
)
ATTEMPTS: Final = Counter(
    "mailfold_webhooks_attempts_total",
    "HTTP attempts, by outcome (delivered, retrying, failed, disabled)",
    ["outcome"],
)
LATENCY: Final = Histogram(
    "mailfold_webhooks_attempt_seconds",
    "Time of one attempt, from resolving the host to the answer's status line",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0),
)
DISABLED: Final = Counter(
    "mailfold_webhooks_endpoints_disabled_total", "Endpoints disabled by a 410 Gone answer"
)
ENQUEUED: Final = Counter(
    "mailfold_webhooks_jobs_enqueued_total",
    "Delivery jobs queued by the fan-out: retries of first attempts, a congested endpoint's jobs",
)
FIRST_ATTEMPTS: Final = Counter(
    "mailfold_webhooks_first_attempts_total", "First attempts made straight from the fan-out"
)
BACKLOG: Final = Gauge(
    "mailfold_webhooks_backlog",
    "Jobs not yet settled, all endpoints together (waiting, in flight, waiting to retry)",
    multiprocess_mode="livemax",  # every copy measures the same shared queues
)
BACKLOG_MAX: Final = Gauge(
    "mailfold_webhooks_backlog_max",
    "The largest backlog of a single endpoint",
    multiprocess_mode="livemax",
)
BACKLOG_ENDPOINTS: Final = Gauge(
    "mailfold_webhooks_endpoints_with_backlog",
    "Endpoints with at least one unsettled job",
    multiprocess_mode="livemax",
)
WORKERS: Final = Gauge(
    "mailfold_webhooks_workers", "Endpoints this copy is delivering to", multiprocess_mode="livesum"
)
