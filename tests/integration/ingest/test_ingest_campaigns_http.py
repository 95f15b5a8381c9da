"""A bulk compose through the ingest HTTP API on real NATS: its answer, its refusals, its key."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from mailfold.events import EmailComposed

from .conftest import ReadEvents, ReadMetric

BODY: dict[str, Any] = {
    "source": "mass_email",
    "from": "rep@acme.example",
    "subject": "Spring",
    "html": "<p>Hi</p>",
}


@pytest.mark.parametrize("field", ["cc", "bcc"])
async def test_cc_and_bcc_are_refused_for_a_mass_email_naming_the_field(
    api: httpx.AsyncClient, org_id: str, events: ReadEvents, field: str
) -> None:
    r = await api.post(
        f"/v1/orgs/{org_id}/emails", json={**BODY, "to": ["a@x.example"], field: ["b@x.example"]}
    )
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"
    assert [e["field"] for e in r.json()["errors"]] == [field]
    assert await events(org_id) == []


async def test_a_mass_email_answers_its_campaign_and_repeats_it_for_the_same_key(
    api: httpx.AsyncClient, org_id: str, events: ReadEvents, metric: ReadMetric
) -> None:
    no_address = 'mailfold_ingest_campaign_targets_total{reason="no_address",status="refused"}'
    before = await metric(no_address)
    for rid, address in (("c1", "Ann@x.example"), ("a1", "ann@x.example"), ("c2", "")):
        r = await api.put(
            f"/v1/orgs/{org_id}/records/{rid}",
            json={"module": "Contacts", "addresses": [address] if address else []},
        )
        assert r.status_code == 200, r.text
    body = {**BODY, "record_ids": ["c1", "a1", "c2"], "to": ["bob@y.example", "BOB@y.example"]}
    key = {"Idempotency-Key": "spring-2026"}

    first = await api.post(f"/v1/orgs/{org_id}/emails", json=body, headers=key)
    again = await api.post(f"/v1/orgs/{org_id}/emails", json=body, headers=key)

    assert first.status_code == again.status_code == 202
    answer = first.json()
    assert again.json() == answer
    assert first.headers["location"] == f"/v1/orgs/{org_id}/campaigns/{answer['campaign_id']}"
    accepted = {e["recipient"]: e for e in answer["emails"] if e["status"] == "accepted"}
    assert set(accepted) == {"ann@x.example", "bob@y.example"}
    assert sorted(accepted["ann@x.example"]["record_ids"]) == ["a1", "c1"]
    assert accepted["bob@y.example"]["record_ids"] == []
    (refused,) = [e for e in answer["emails"] if e["status"] == "refused"]
    assert refused["reason"] == "no_address"
    assert refused["record_ids"] == ["c2"]
    assert await metric(no_address) == before + 1  # the repeat is not counted again
    published = [e for e in await events(org_id) if isinstance(e, EmailComposed)]
    assert sorted(e.email_id for e in published) == sorted(e["email_id"] for e in accepted.values())
    assert all(len(e.to) == 1 and not e.cc and not e.bcc for e in published)
    other = await api.post(
        f"/v1/orgs/{org_id}/emails", json={**body, "subject": "Other"}, headers=key
    )
    assert other.status_code == 422
    assert other.json()["errors"][0]["field"] == "Idempotency-Key"
