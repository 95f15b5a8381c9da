"""The projection store's contract against PostgreSQL: the reader and the writer the projector
runs, and the queries the API reads with."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
from tests.unit.projector.store_contract import StoreContract

from mailfold.projector.adapters.migrations import migrate
from mailfold.projector.adapters.postgres import PgBatchWriter, PgStateReader, create_pool
from mailfold.projector.adapters.queries import ProjectionQueries


class PgStore(PgStateReader):
    """The PostgreSQL reader and writer, read back through the query API's queries."""

    def __init__(self, pool: asyncpg.Pool, writer: PgBatchWriter) -> None:
        super().__init__(pool)
        self._writer = writer
        self._queries = ProjectionQueries(pool)
        self.write = writer.write

    async def stored_email(self, email_id: str) -> asyncpg.Record | None:
        return await self._queries.email(email_id)

    async def stored_links(self, email_id: str) -> list[asyncpg.Record]:
        return await self._queries.links(email_id)

    async def stored_decisions(self, email_id: str) -> list[tuple[str, str, str | None, str]]:
        history = await self._queries.history(email_id)
        return [(h["event_id"], h["decision"], h["reason"], h["detail"]) for h in history]

    async def committed_position(self) -> int:
        return await self._writer.position()


class TestPostgresStore(StoreContract):
    @pytest.fixture
    async def store(self, database_url: str) -> AsyncIterator[PgStore]:
        conn = await asyncpg.connect(database_url)
        pool = await create_pool(database_url)
        try:
            await migrate(conn)
            writer = PgBatchWriter(
                conn, schema="public", consumer="projector", stream="MAIL_EVENTS"
            )
            assert await writer.try_lock()
            assert await writer.prepare() == 0
            yield PgStore(pool, writer)
        finally:
            await pool.close()
            await conn.close()
