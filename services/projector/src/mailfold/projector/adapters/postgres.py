"""The projection in PostgreSQL: reading states to continue the fold, writing a batch atomically."""
# ruff: noqa: S608 -- only schema/table names checked by quote_ident are interpolated; values
# always travel as query parameters.

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import asyncpg

from mailfold.events import EmailState
from mailfold.events.fold import decode_state
from mailfold.projector.adapters.migrations import LOCK_CLASS
from mailfold.projector.adapters.sql import Connection, table
from mailfold.projector.domain.rows import EMAIL_COLUMNS, EVENT_COLUMNS, RECORD_COLUMNS
from mailfold.projector.service_layer.ports import DuplicateEventIds, PositionConflict, WriteSet

_EMAILS_STAGE: Final = "mailfold_emails_stage"


async def connect(dsn: str) -> asyncpg.Connection:
    """One connection (the writer keeps its own: it holds the writer lock for its lifetime)."""
    return await asyncpg.connect(dsn, command_timeout=60)


async def create_pool(dsn: str, *, max_size: int = 4) -> asyncpg.Pool:
    """A small pool for reads (the fold's state loads, the query API)."""
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=max_size, command_timeout=30)
    assert pool is not None
    return pool


async def positions(conn: Connection, schema: str = "public") -> dict[str, int]:
    """Every position row: consumer name -> last committed sequence (none before migrating)."""
    try:
        rows = await conn.fetch(
            f"SELECT consumer, last_seq FROM {table(schema, 'consumer_positions')}"
        )
    except asyncpg.UndefinedTableError:
        return {}
    return {r["consumer"]: int(r["last_seq"]) for r in rows}


class PgStateReader:
    """Committed states and event ids, read through a pool (never the writer's connection)."""

    def __init__(self, pool: asyncpg.Pool, schema: str = "public") -> None:
        self._pool = pool
        self._events = table(schema, "events")
        self._emails = table(schema, "emails")

    async def existing_event_ids(self, event_ids: Sequence[str]) -> frozenset[str]:
        rows = await self._pool.fetch(
            f"SELECT event_id FROM {self._events} WHERE event_id = ANY($1::text[])",
            list(event_ids),
        )
        return frozenset(r[0] for r in rows)

    async def load_states(self, email_ids: Sequence[str]) -> dict[str, EmailState]:
        rows = await self._pool.fetch(
            f"SELECT email_id, state FROM {self._emails} WHERE email_id = ANY($1::text[])",
            list(email_ids),
        )
        return {r[0]: decode_state(r[1]) for r in rows}

    async def is_empty(self) -> bool:
        """True when no email is stored yet (every cache miss is then a new email)."""
        return not await self._pool.fetchval(f"SELECT EXISTS (SELECT 1 FROM {self._emails})")


class PgBatchWriter:
    """Writes batches on one connection that holds the projection's writer lock.

    The lock (a session advisory lock per schema and consumer) makes a second projector process
    a standby; the position check in every transaction guards against anything else.
    """

    def __init__(
        self, conn: asyncpg.Connection, *, schema: str, consumer: str, stream: str
    ) -> None:
        self._conn = conn
        self._consumer = consumer
        self._stream = stream
        self._lock_key = f"{schema}/{consumer}"
        events, emails = table(schema, "events"), table(schema, "emails")
        self._records = table(schema, "email_records")
        self._positions = table(schema, "consumer_positions")
        self._stage_sql = (
            f"CREATE TEMP TABLE IF NOT EXISTS {_EMAILS_STAGE} (LIKE {emails}) ON COMMIT DELETE ROWS"
        )
        self._update_decision = (
            f"UPDATE {events} SET decision = $2, reason = $3, detail = $4 WHERE event_id = $1"
        )
        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in EMAIL_COLUMNS if c != "email_id")
        self._upsert_emails = (
            f"INSERT INTO {emails} SELECT * FROM {_EMAILS_STAGE} "
            f"ON CONFLICT (email_id) DO UPDATE SET {updates}"
        )
        self._unlink = f"DELETE FROM {self._records} WHERE email_id = ANY($1::text[])"
        self._schema = schema

    @property
    def connection(self) -> asyncpg.Connection:
        return self._conn

    async def try_lock(self) -> bool:
        """Take the writer lock if free; held until the connection closes."""
        taken = await self._conn.fetchval(
            "SELECT pg_try_advisory_lock($1, hashtext($2))", LOCK_CLASS, self._lock_key
        )
        return bool(taken)

    async def prepare(self, *, start: int = 0) -> int:
        """Create the staging tables and the position row (at `start` when new); returns the
        committed position."""
        await self._conn.execute(self._stage_sql)
        await self._conn.execute(
            f"INSERT INTO {self._positions} (consumer, stream, last_seq) VALUES ($1, $2, $3) "
            "ON CONFLICT (consumer) DO NOTHING",
            self._consumer,
            self._stream,
            start,
        )
        return await self.position()

    async def position(self) -> int:
        """The last stream sequence committed."""
        value = await self._conn.fetchval(
            f"SELECT last_seq FROM {self._positions} WHERE consumer = $1", self._consumer
        )
        return int(value or 0)

    async def write(self, batch: WriteSet) -> None:
        conn = self._conn
        async with conn.transaction():
            if batch.event_rows:
                try:
                    await conn.copy_records_to_table(
                        "events",
                        schema_name=self._schema,
                        records=batch.event_rows,
                        columns=EVENT_COLUMNS,
                    )
                except asyncpg.UniqueViolationError as exc:
                    raise DuplicateEventIds(str(exc)) from exc
            if batch.decision_rows:
                await conn.executemany(self._update_decision, batch.decision_rows)
            if batch.email_rows and batch.emails_new:
                await conn.copy_records_to_table(
                    "emails",
                    schema_name=self._schema,
                    records=batch.email_rows,
                    columns=EMAIL_COLUMNS,
                )
            elif batch.email_rows:
                await conn.copy_records_to_table(
                    _EMAILS_STAGE, records=batch.email_rows, columns=EMAIL_COLUMNS
                )
                await conn.execute(self._upsert_emails)
            if batch.unlinked:
                await conn.execute(self._unlink, batch.unlinked)
            if batch.record_rows:
                await conn.copy_records_to_table(
                    "email_records",
                    schema_name=self._schema,
                    records=batch.record_rows,
                    columns=RECORD_COLUMNS,
                )
            status = await conn.execute(
                f"UPDATE {self._positions} SET last_seq = $2, updated_at = now() "
                "WHERE consumer = $1 AND last_seq = $3",
                self._consumer,
                batch.last_seq,
                batch.expected_seq,
            )
            if status != "UPDATE 1":
                raise PositionConflict(
                    f"position of {self._consumer} is no longer {batch.expected_seq}"
                )
