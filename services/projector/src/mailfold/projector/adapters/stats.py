"""An org's deliverability over a time window, aggregated by PostgreSQL from the emails table."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from mailfold.projector.adapters.sql import table

# One row per source, and with GROUPING(source) = 1 the org's total; ratios are over sent mail.
_COUNTS = """
SELECT grouping(source) AS total, source, min(source_display) AS source_display,
       count(*) AS emails,
       count(sent_at) AS sent,
       count(delivered_at) AS delivered,
       count(bounced_at) AS bounced,
       count(*) FILTER (WHERE bounce_kind = 'hard') AS bounced_hard,
       count(*) FILTER (WHERE bounce_kind = 'soft') AS bounced_soft,
       count(opened_at) AS opened,
       count(clicked_at) AS clicked,
       coalesce(sum(opens_human), 0) AS opens_human,
       coalesce(sum(opens_machine), 0) AS opens_machine,
       coalesce(sum(clicks_human), 0) AS clicks_human,
       coalesce(sum(clicks_machine), 0) AS clicks_machine,
       count(complained_at) AS complained,
       count(rejected_at) AS rejected,
       count(received_at) AS received,
       coalesce(sum(violation_count), 0) AS violations,
       round(count(delivered_at)::numeric / nullif(count(sent_at), 0), 4) AS delivery_rate,
       round(count(bounced_at)::numeric / nullif(count(sent_at), 0), 4) AS bounce_rate,
       round(count(opened_at)::numeric / nullif(count(sent_at), 0), 4) AS open_rate,
       round(count(clicked_at)::numeric / nullif(count(sent_at), 0), 4) AS click_rate,
       round(count(complained_at)::numeric / nullif(count(sent_at), 0), 4) AS complaint_rate
FROM {emails}
WHERE org_id = $1 AND email_at >= $2 AND email_at < $3 AND source IS NOT NULL
  AND ($4::text IS NULL OR source = $4)
GROUP BY ROLLUP (source)
ORDER BY grouping(source) DESC, source
"""

_BOUNCE_REASONS = """
SELECT coalesce(bounce_reason, 'unknown') AS reason, bounce_kind AS kind, count(*) AS emails
FROM {emails}
WHERE org_id = $1 AND email_at >= $2 AND email_at < $3 AND bounced_at IS NOT NULL
  AND ($4::text IS NULL OR source = $4)
GROUP BY 1, 2
ORDER BY emails DESC, reason, kind
LIMIT 20
"""

_COUNT_COLUMNS = (
    "emails",
    "sent",
    "delivered",
    "bounced",
    "bounced_hard",
    "bounced_soft",
    "opened",
    "clicked",
    "opens_human",
    "opens_machine",
    "clicks_human",
    "clicks_machine",
    "complained",
    "rejected",
    "received",
    "violations",
)
_RATE_COLUMNS = ("delivery_rate", "bounce_rate", "open_rate", "click_rate", "complaint_rate")


def _figures(row: asyncpg.Record) -> dict[str, Any]:
    figures: dict[str, Any] = {name: int(row[name]) for name in _COUNT_COLUMNS}
    for name in _RATE_COLUMNS:
        figures[name] = None if row[name] is None else float(row[name])
    return figures


class StatsQueries:
    """Deliverability figures of one org (every query names the org)."""

    def __init__(self, pool: asyncpg.Pool, schema: str = "public") -> None:
        self._pool = pool
        emails = table(schema, "emails")
        self._counts = _COUNTS.format(emails=emails)
        self._reasons = _BOUNCE_REASONS.format(emails=emails)

    async def org_stats(
        self, org_id: str, start: datetime, end: datetime, source: str | None
    ) -> dict[str, Any]:
        """Totals, per-source figures and the top bounce reasons of emails timed in [start, end)."""
        async with self._pool.acquire() as conn, conn.transaction(readonly=True):
            rows = await conn.fetch(self._counts, org_id, start, end, source)
            reasons = await conn.fetch(self._reasons, org_id, start, end, source)
        totals: dict[str, Any] = dict.fromkeys(_COUNT_COLUMNS, 0)
        totals.update(dict.fromkeys(_RATE_COLUMNS))
        by_source = []
        for row in rows:
            if row["total"]:
                totals = _figures(row)
            else:
                by_source.append(
                    {"source": row["source"], "display": row["source_display"], **_figures(row)}
                )
        return {
            "totals": totals,
            "by_source": by_source,
            "bounce_reasons": [
                {"reason": r["reason"], "kind": r["kind"], "emails": int(r["emails"])}
                for r in reasons
            ],
        }
