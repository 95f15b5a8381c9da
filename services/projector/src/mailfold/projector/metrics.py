"""The projector's Prometheus metrics, defined once per process."""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Gauge, Histogram

EVENTS_APPLIED: Final = Counter(
    "mailfold_projector_events_applied_total",
    "Events folded into a timeline, by type.",
    ["type"],
)
EVENTS_WAITING: Final = Counter(
    "mailfold_projector_events_waiting_total",
    "Events stored while their email's origin had not arrived yet, by type.",
    ["type"],
)
VIOLATIONS: Final = Counter(
    "mailfold_projector_violations_total",
    "Events kept for audit but not applied (policy violations), by reason.",
    ["reason"],
)
REDECIDED: Final = Counter(
    "mailfold_projector_events_redecided_total",
    "Stored events whose decision changed when their email's origin arrived, by new decision.",
    ["decision"],
)
DUPLICATES: Final = Counter(
    "mailfold_projector_duplicates_total",
    "Messages that changed nothing: redeliveries of applied positions and repeated event ids.",
    ["kind"],
)
DEAD_LETTERS: Final = Counter(
    "mailfold_projector_dead_letters_total",
    "Messages sent to the dead-letter stream, by kind of error.",
    ["kind"],
)
BATCH_SIZE: Final = Histogram(
    "mailfold_projector_batch_size",
    "Messages per committed batch.",
    buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2000, 5000),
)
COMMIT_SECONDS: Final = Histogram(
    "mailfold_projector_commit_seconds",
    "Time to write and commit one batch's transaction.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
CONSUMER_LAG: Final = Gauge(
    "mailfold_projector_consumer_lag",
    "Messages not yet delivered to or acknowledged by the consumers of this process's partitions.",
    multiprocess_mode="livemax",
)
POSITION: Final = Gauge(
    "mailfold_projector_position",
    "Last stream sequence committed to PostgreSQL (the lowest of this process's partitions).",
    multiprocess_mode="livemax",
)
LEADER: Final = Gauge(
    "mailfold_projector_leader",
    "1 while this process holds at least one partition's writer lock and consumes, else 0.",
    multiprocess_mode="livesum",  # with workers: how many of them hold partitions
)
PARTITION_LEADER: Final = Gauge(
    "mailfold_projector_partition_leader",
    "1 while this process holds the partition's lease and consumes it, else 0.",
    ["partition"],
    multiprocess_mode="livesum",  # with workers: how many of them lead it (1)
)
PARTITION_POSITION: Final = Gauge(
    "mailfold_projector_partition_position",
    "Last stream sequence committed to PostgreSQL by the partition in this process.",
    ["partition"],
    multiprocess_mode="livemax",
)
PARTITION_LAG: Final = Gauge(
    "mailfold_projector_partition_consumer_lag",
    "Messages not yet delivered to or acknowledged by the partition's consumer (0 if not held).",
    ["partition"],
    multiprocess_mode="livemax",
)
PARTITIONS_HELD: Final = Gauge(
    "mailfold_projector_partitions_held",
    "How many partitions this process runs.",
    multiprocess_mode="livesum",
)
LIVE_PROCESSES: Final = Gauge(
    "mailfold_projector_live_processes",
    "Projector processes sharing the partitions, as this process last counted them.",
    multiprocess_mode="livemax",
)
RESETS: Final = Counter(
    "mailfold_projector_resets_total",
    "Times the consumer was re-seated at the committed position after an error.",
)
