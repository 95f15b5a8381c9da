"""The mailbox service's Prometheus metrics; the label sets are bounded."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Final

from prometheus_client import REGISTRY, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

MESSAGES_SEEN: Final = Counter(
    "mailfold_mailbox_messages_seen_total", "Mailbox messages read by the sync", ["protocol"]
)
EVENTS_PUBLISHED: Final = Counter(
    "mailfold_mailbox_events_published_total", "Events published by the mailbox sync", ["type"]
)
RESETS: Final = Counter(
    "mailfold_mailbox_uidvalidity_resets_total", "Folders whose UIDVALIDITY changed"
)
ERRORS: Final = Counter("mailfold_mailbox_errors_total", "Mailbox sync failures, by kind", ["kind"])
OTHER: Final = "_other"
EXPORT_INTERVAL_S: Final = 5.0

# The board is computed at scrape time, which prometheus-client's multiprocess mode cannot merge
# across the workers of `mailfold serve mailbox --workers N`: there each worker writes it into
# these gauges (unregistered: the multiprocess files are what /metrics reads), every few seconds.
_SHARED_LAG: Final = Gauge(
    "mailfold_mailbox_sync_lag_seconds",
    "Seconds since each held mailbox last finished a sync round",
    ["mailbox"],
    registry=None,
    multiprocess_mode="livemax",
)
_SHARED_STATES: Final = Gauge(
    "mailfold_mailbox_mailboxes",
    "Mailboxes held by this copy, by state",
    ["state"],
    registry=None,
    multiprocess_mode="livesum",
)


class SyncBoard(Collector):
    """Per held mailbox: its state and when it last synced; exported as lag and state counts.

    The lag has one series per mailbox for the first `limit` mailboxes this copy holds, and one
    `_other` series (the largest lag of the rest), so the label set stays bounded.
    """

    def __init__(self, limit: int = 50) -> None:
        self.limit = limit
        self._since: dict[str, float] = {}  # mailbox label -> monotonic time of the last sync
        self._state: dict[str, str] = {}
        self._exported: dict[str, set[tuple[str, ...]]] = {}

    def held(self, label: str) -> None:
        """A mailbox this copy now syncs (its lag counts from now)."""
        self._since.setdefault(label, time.monotonic())
        self._state.setdefault(label, "pending")

    def dropped(self, label: str) -> None:
        """A mailbox this copy no longer syncs."""
        self._since.pop(label, None)
        self._state.pop(label, None)

    def synced(self, label: str) -> None:
        """A sync round of this mailbox finished."""
        self._since[label] = time.monotonic()
        self._state[label] = "ok"

    def state(self, label: str, state: str) -> None:
        """A mailbox's state changed (`failing`, `syncing`, ...)."""
        if label in self._since:
            self._state[label] = state

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = time.monotonic()
        lag = GaugeMetricFamily(
            "mailfold_mailbox_sync_lag_seconds",
            "Seconds since each held mailbox last finished a sync round",
            labels=["mailbox"],
        )
        labels = sorted(self._since)
        for label in labels[: self.limit]:
            lag.add_metric([label], now - self._since[label])
        rest = labels[self.limit :]
        if rest:
            lag.add_metric([OTHER], max(now - self._since[x] for x in rest))
        yield lag
        states = GaugeMetricFamily(
            "mailfold_mailbox_mailboxes", "Mailboxes held by this copy, by state", labels=["state"]
        )
        counts: dict[str, int] = {}
        for state in self._state.values():
            counts[state] = counts.get(state, 0) + 1
        for state, count in sorted(counts.items()):
            states.add_metric([state], count)
        yield states

    def export(self) -> None:
        """Write the board into the gauges the workers share: each worker's mailboxes are its own
        series (the largest lag wins where two report one), the state counts add up, and a
        series this worker no longer has is set to 0 (a multiprocess value cannot be removed)."""
        for family, gauge in zip(self.collect(), (_SHARED_LAG, _SHARED_STATES), strict=True):
            current = {tuple(s.labels.values()): s.value for s in family.samples}
            for labels, value in current.items():
                gauge.labels(*labels).set(value)
            for gone in self._exported.get(family.name, set()) - current.keys():
                gauge.labels(*gone).set(0)
            self._exported[family.name] = set(current)


BOARD: Final = SyncBoard()
REGISTRY.register(BOARD)
