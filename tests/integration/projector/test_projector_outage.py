"""The query API while NATS is away: 503 with Retry-After at once, never a 500 after a wait."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import httpx
from nats.aio.client import Client

from mailfold.cli.embedded import EmbeddedNats
from mailfold.runtime import bus
from mailfold.runtime.orgs import create_org

if TYPE_CHECKING:
    from tests.integration.projector.conftest import StartProjector


async def test_with_nats_down_the_query_api_answers_503_problems_and_recovers(
    fresh_nats: EmbeddedNats, nc: Client, start_projector: StartProjector, org_id: str
) -> None:
    token = await create_org(await bus.kv(nc.jetstream(), bus.BUCKET_ORGS), org_id)
    url = f"/v1/orgs/{org_id}/records/lead-1/emails"
    async with (
        start_projector() as service,
        httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{service.port}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        ) as client,
    ):
        assert (await client.get(url)).status_code == 404  # the token works; no such record
        await asyncio.to_thread(fresh_nats.kill)
        statuses: list[int] = []
        for _ in range(100):
            response = await client.get(url)
            statuses.append(response.status_code)
            if response.status_code == 503:
                break
            await asyncio.sleep(0.1)
        assert response.status_code == 503, statuses
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["retry-after"] == "1"
        assert response.json()["status"] == 503
        assert 500 not in statuses

        await asyncio.to_thread(fresh_nats.restart)
        for _ in range(300):
            response = await client.get(url)
            if response.status_code == 404:
                break
            await asyncio.sleep(0.1)
        assert response.status_code == 404
