"""A projector serving only the query API, reading another database than the one folded into."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from nats.aio.client import Client
from tests.integration.projector.conftest import (
    Mail,
    StartProjector,
    last_seq,
    publish,
    wait_for_position,
)
from tests.nats_users import service_auth

from mailfold.cli.embedded import EmbeddedNats
from mailfold.events import new_id
from mailfold.projector.bootstrap import Settings, start
from mailfold.runtime import bus
from mailfold.runtime.orgs import create_org


@pytest.fixture
async def reader_dsn(database_url: str) -> AsyncIterator[str]:
    """A login whose every transaction is read-only, as on a streaming replica."""
    role = f"reader_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f"CREATE ROLE {role} LOGIN")
        await conn.execute(f"ALTER ROLE {role} SET default_transaction_read_only = on")
        yield database_url.replace("postgresql://postgres@", f"postgresql://{role}@", 1)
        await conn.execute(f"DROP OWNED BY {role}")
        await conn.execute(f"DROP ROLE {role}")
    finally:
        await conn.close()


async def test_a_query_only_projector_serves_the_timeline_from_a_read_only_database(
    nc: Client,
    mail: Mail,
    database_url: str,
    reader_dsn: str,
    fresh_nats: EmbeddedNats,
    start_projector: StartProjector,
) -> None:
    js = nc.jetstream()
    token = await create_org(await bus.kv(js, bus.BUCKET_ORGS), mail.org_id)
    email_id = new_id()
    async with start_projector():
        await publish(js, [mail.composed(email_id), mail.sent(email_id, 1)])
        await wait_for_position(database_url, await last_seq(js))
    admin = await asyncpg.connect(database_url)
    try:
        await admin.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {_role(reader_dsn)}")
    finally:
        await admin.close()

    reader = await start(
        Settings(
            nats_url=fresh_nats.url,
            nats_auth=service_auth("projector"),
            database_url=reader_dsn,
            query_database_url=reader_dsn,
            consume=False,
            port=0,
        )
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{reader.port}") as client:
            answer = await client.get(
                f"/v1/orgs/{mail.org_id}/emails/{email_id}",
                headers={"Authorization": f"Bearer {token}"},
            )
            health = await client.get("/healthz")
    finally:
        await reader.stop()

    assert answer.status_code == 200, answer.text
    assert answer.json()["email"]["status"] == "Sent"
    assert health.status_code == 200, health.text
    assert health.json()["partitions"]["held"] == []


def _role(dsn: str) -> str:
    return dsn.split("://", 1)[1].split("@", 1)[0]
