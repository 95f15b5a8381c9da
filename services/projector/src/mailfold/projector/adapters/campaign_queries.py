"""Reading a campaign (one bulk send): its emails, paged, and what became of them, counted."""
# ruff: noqa: S608 -- only schema/table names checked by quote_ident are interpolated; values
# always travel as query parameters.

from __future__ import annotations

from typing import Any, Final

import asyncpg

from mailfold.projector.adapters.sql import table

_COLUMNS: Final = (
    "email_id, to_addrs, status, source_display, email_at, sent_at, delivered_at, bounced_at,"
    " opened_at, clicked_at, rejected_at, opens_human, opens_machine, clicks_human,"
    " clicks_machine, bounce_kind, bounce_reason, rejection_reason, rejection_detail"
)


class CampaignQueries:
    """Read-only queries over the emails of one campaign of one org."""

    def __init__(self, pool: asyncpg.Pool, schema: str = "public") -> None:
        self._pool = pool
        emails = table(schema, "emails")
        records = table(schema, "email_records")
        where = "org_id = $1 AND campaign_id = $2"
        self._page = (
            f"SELECT {_COLUMNS},"
            " (SELECT coalesce(array_agg(r.record_id ORDER BY r.record_id), '{}')"
            f"  FROM {records} r WHERE r.email_id = e.email_id) AS record_ids"
            f" FROM {emails} e WHERE {where} AND ($3::text IS NULL OR email_id > $3)"
            " ORDER BY email_id LIMIT $4"
        )
        self._counts = (
            "SELECT count(*) AS emails,"
            " count(*) FILTER (WHERE sent_at IS NOT NULL) AS sent,"
            " count(*) FILTER (WHERE delivered_at IS NOT NULL) AS delivered,"
            " count(*) FILTER (WHERE bounced_at IS NOT NULL) AS bounced,"
            " count(*) FILTER (WHERE opened_at IS NOT NULL) AS opened_human,"
            " count(*) FILTER (WHERE opens_machine > 0) AS opened_machine,"
            " count(*) FILTER (WHERE clicked_at IS NOT NULL) AS clicked_human,"
            " count(*) FILTER (WHERE clicks_machine > 0) AS clicked_machine,"
            " count(*) FILTER (WHERE rejected_at IS NOT NULL) AS rejected"
            f" FROM {emails} WHERE {where}"
        )
        self._bounce_reasons = (
            "SELECT coalesce(bounce_reason, bounce_kind, 'undetermined') AS reason, count(*) AS n"
            f" FROM {emails} WHERE {where} AND bounced_at IS NOT NULL GROUP BY 1 ORDER BY 1"
        )
        self._reject_reasons = (
            "SELECT coalesce(rejection_reason, 'unknown') AS reason, count(*) AS n"
            f" FROM {emails} WHERE {where} AND rejected_at IS NOT NULL GROUP BY 1 ORDER BY 1"
        )

    async def emails(
        self, org_id: str, campaign_id: str, *, after: str | None, limit: int
    ) -> list[asyncpg.Record]:
        """The campaign's emails in email-id order, after `after` (an email id), at most `limit`."""
        return await self._pool.fetch(self._page, org_id, campaign_id, after, limit)

    async def counts(self, org_id: str, campaign_id: str) -> dict[str, Any] | None:
        """What became of the campaign's emails; None when the org has no such campaign."""
        async with self._pool.acquire() as conn:
            totals = await conn.fetchrow(self._counts, org_id, campaign_id)
            if totals is None or totals["emails"] == 0:
                return None
            bounces = await conn.fetch(self._bounce_reasons, org_id, campaign_id)
            rejections = await conn.fetch(self._reject_reasons, org_id, campaign_id)
        return {
            "emails": totals["emails"],
            "sent": totals["sent"],
            "delivered": totals["delivered"],
            "bounced": {
                "total": totals["bounced"],
                "by_reason": {r["reason"]: r["n"] for r in bounces},
            },
            "opened": {"human": totals["opened_human"], "machine": totals["opened_machine"]},
            "clicked": {"human": totals["clicked_human"], "machine": totals["clicked_machine"]},
            "rejected": {
                "total": totals["rejected"],
                "by_reason": {r["reason"]: r["n"] for r in rejections},
            },
        }
