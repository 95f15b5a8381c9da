"""The mailbox's HTTP app answers every refusal as problem+json, as every other service does."""

from __future__ import annotations

from typing import Any, cast

import httpx

from mailfold.mailbox.entrypoints.http import mailbox_app
from mailfold.runtime.orgs import TokenVerifier


async def _never(org_id: str, email_id: str) -> str:  # pragma: no cover - not reached
    raise AssertionError("no deletion expected")


async def _healthy() -> dict[str, object]:
    return {"nats": "ok"}


async def _get(path: str) -> httpx.Response:
    verifier = cast(TokenVerifier, cast(Any, object()))
    transport = httpx.ASGITransport(app=mailbox_app(_never, verifier, _healthy, lambda: "{}"))
    async with httpx.AsyncClient(transport=transport, base_url="http://mailbox") as client:
        return await client.get(path)


async def test_an_unknown_path_is_a_problem_document() -> None:
    answer = await _get("/v1/nothing-here")
    assert answer.status_code == 404
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["status"] == 404


async def test_a_wrong_method_is_a_problem_document() -> None:
    answer = await _get("/v1/orgs/acme/emails/e1")
    assert answer.status_code == 405
    assert answer.headers["content-type"] == "application/problem+json"
    assert "DELETE" in answer.headers["allow"]


async def test_a_trailing_slash_is_not_redirected() -> None:
    answer = await _get("/healthz/")
    assert answer.status_code == 404
    assert "location" not in answer.headers
