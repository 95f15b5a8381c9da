"""Reading the projection: a record's emails, an email with its history, an org's emails."""
# ruff: noqa: S608 -- only schema/table names checked by quote_ident are interpolated; values
# always travel as query parameters.

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Final

import asyncpg

from mailfold.projector.adapters.campaign_queries import CampaignQueries
from mailfold.projector.adapters.sql import Connection, quote_ident, table
from mailfold.projector.domain.rows import EMAIL_SHAPE

_SUMMARY: Final = ", ".join(f"e.{c.name}" for c in EMAIL_SHAPE)


class ProjectionQueries:
    """Read-only queries over the projection (every query of an org names the org)."""

    def __init__(self, pool: asyncpg.Pool, schema: str = "public") -> None:
        self._pool = pool
        self.campaigns = CampaignQueries(pool, schema)
        emails = table(schema, "emails")
        records = table(schema, "email_records")
        events = table(schema, "events")
        self._record_emails = (
            f"SELECT {_SUMMARY} FROM {emails} e "
            "WHERE e.org_id = $1 AND e.deleted_at IS NULL"
            f" AND EXISTS (SELECT 1 FROM {records} r"
            "  WHERE r.org_id = $1 AND r.record_id = $2 AND r.email_id = e.email_id)"
            " AND (NOT $3::boolean OR e.crm_originated)"
            " AND ($4::timestamptz IS NULL OR (e.email_at, e.email_id) < ($4, $5::text))"
            " ORDER BY e.email_at DESC, e.email_id DESC LIMIT $6"
        )
        self._record_known = (
            f"SELECT EXISTS (SELECT 1 FROM {records} WHERE org_id = $1 AND record_id = $2)"
        )
        self._email = f"SELECT {_SUMMARY} FROM {emails} e WHERE e.email_id = $1"
        self._email_of_org = self._email + " AND e.org_id = $2"
        self._state = f"SELECT state FROM {emails} WHERE email_id = $1"
        self._links = f"SELECT module, record_id FROM {records} WHERE email_id = $1 ORDER BY module, record_id"
        self._history = (
            "SELECT stream_seq, event_id, type, org_id, occurred_at, payload::text AS payload,"
            f" decision, reason, detail FROM {events} WHERE email_id = $1"
        )
        self._org_count = f"SELECT count(*) FROM {emails} WHERE org_id = $1"
        self._org_emails = (
            f"SELECT {_SUMMARY}, e.state,"
            " (SELECT coalesce(array_agg(r.module || ':' || r.record_id ORDER BY r.module,"
            f" r.record_id), '{{}}') FROM {records} r WHERE r.email_id = e.email_id) AS records"
            f" FROM {emails} e WHERE e.org_id = $1 ORDER BY e.email_at, e.email_id"
        )

    async def record_emails(
        self,
        org_id: str,
        record_id: str,
        *,
        crm_only: bool,
        after: tuple[datetime, str] | None,
        limit: int,
    ) -> list[asyncpg.Record]:
        """A record's emails, newest first, deleted ones left out, after a cursor position."""
        at, email_id = after if after is not None else (None, None)
        return await self._pool.fetch(
            self._record_emails, org_id, record_id, crm_only, at, email_id, limit
        )

    async def record_known(self, org_id: str, record_id: str) -> bool:
        """True when some email of the org is linked to the record."""
        return bool(await self._pool.fetchval(self._record_known, org_id, record_id))

    async def email(self, email_id: str, org_id: str | None = None) -> asyncpg.Record | None:
        """One email's summary; with `org_id`, only if it belongs to that org."""
        if org_id is None:
            return await self._pool.fetchrow(self._email, email_id)
        return await self._pool.fetchrow(self._email_of_org, email_id, org_id)

    async def state(self, email_id: str) -> bytes | None:
        """The email's encoded fold state."""
        value = await self._pool.fetchval(self._state, email_id)
        return None if value is None else bytes(value)

    async def links(self, email_id: str) -> list[asyncpg.Record]:
        """The records the email is attached to."""
        return await self._pool.fetch(self._links, email_id)

    async def history(self, email_id: str, org_id: str | None = None) -> list[asyncpg.Record]:
        """Every stored event of the email in stream order; with `org_id`, that org's only."""
        if org_id is None:
            return await self._pool.fetch(self._history + " ORDER BY stream_seq", email_id)
        return await self._pool.fetch(
            self._history + " AND org_id = $2 ORDER BY stream_seq", email_id, org_id
        )

    async def org_email_count(self, org_id: str) -> int:
        """How many emails the org has (what an export will write)."""
        return int(await self._pool.fetchval(self._org_count, org_id) or 0)

    async def org_emails(self, org_id: str) -> AsyncIterator[asyncpg.Record]:
        """Every email of the org, oldest first, with its state and record links, streamed."""
        async with self._pool.acquire() as conn, conn.transaction():
            async for row in conn.cursor(self._org_emails, org_id, prefetch=500):
                yield row

    async def ping(self) -> bool:
        """True when the database answers."""
        return bool(await self._pool.fetchval("SELECT true"))


async def table_rows(
    conn: Connection, schema: str, name: str, key: Sequence[str], columns: Sequence[str]
) -> AsyncIterator[asyncpg.Record]:
    """Every row of a projection table, ordered by `key` in byte order (Python's str order).

    Runs a cursor: call inside a transaction.
    """
    ordered = ", ".join(f'{quote_ident(c)} COLLATE "C"' for c in key)
    selected = ", ".join(quote_ident(c) for c in dict.fromkeys([*key, *columns]))
    query = f"SELECT {selected} FROM {table(schema, name)} ORDER BY {ordered}"
    async for row in conn.cursor(query, prefetch=2000):
        yield row
