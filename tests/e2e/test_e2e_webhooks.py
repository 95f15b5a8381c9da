"""An email composed through ingest reaches a signed webhook endpoint as it goes out."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.routing import Route
from tests.e2e.conftest import Stack
from tests.integration.webhooks.conftest import Receiver, always

from mailfold.runtime.ops import HttpServer


async def test_an_email_reaches_a_webhook_endpoint_composed_sent_and_delivered(
    stack: Stack,
) -> None:
    headers = {"authorization": f"Bearer {stack.token}"}
    wanted = ["email_composed", "email_sent", "email_delivered"]
    receiver = Receiver(always(200))
    app = Starlette(routes=[Route("/hook", receiver.handle, methods=["POST"])])
    receiver.server = HttpServer(app, "127.0.0.1", 0)
    await receiver.server.start()
    try:
        await _deliver(stack, receiver, headers, wanted)
    finally:
        await receiver.server.stop()


async def _deliver(
    stack: Stack, receiver: Receiver, headers: dict[str, str], wanted: list[str]
) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        created = await http.post(
            f"{stack.runtime['webhooks_url']}/v1/orgs/{stack.org}/webhooks",
            json={"url": receiver.url, "event_types": wanted},
            headers=headers,
        )
        assert created.status_code == 201, created.text
        secret = created.json()["secret"]
        composed = await http.post(
            f"{stack.ingest}/v1/orgs/{stack.org}/emails",
            headers=headers,
            json={
                "source": "individual",
                "from": "rep@e2e.example",
                "to": ["hook@example.org"],
                "subject": "Webhooks",
                "text": "hello",
            },
        )
        assert composed.status_code == 202, composed.text
        email_id = composed.json()["email_id"]

        def mine() -> list[dict[str, Any]]:
            return [b for b in receiver.verified(secret) if b["email_id"] == email_id]

        async with asyncio.timeout(60):
            while {b["type"] for b in mine()} != set(wanted):
                await receiver.wait_for(len(receiver.requests) + 1)
    bodies = sorted(mine(), key=lambda b: b["email_sequence"])
    assert [b["type"] for b in bodies] == wanted
    assert [b["email_sequence"] for b in bodies] == [1, 2, 3]
    assert bodies[-1]["email_status"] == "Delivered"
