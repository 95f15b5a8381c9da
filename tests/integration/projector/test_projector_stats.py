"""Deliverability as the live projector reports it: /metrics counters (once per change, never on a
replay or a repeat), the pipeline gauges, and an org's figures from `GET /v1/orgs/{org}/stats`."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import msgspec
import pytest
from nats.aio.client import Client
from prometheus_client.parser import text_string_to_metric_families

from mailfold.cli.embedded import EmbeddedNats
from mailfold.cli.main import main as mailfold
from mailfold.events import AnyEvent, Source, Verdict, new_id
from mailfold.projector.entrypoints.consumer import ConsumerSettings
from mailfold.projector.entrypoints.openapi import OrgStats
from mailfold.runtime import bus
from mailfold.runtime.orgs import create_org

if TYPE_CHECKING:
    from tests.integration.projector.conftest import Mail, StartProjector

from tests.integration.projector.conftest import (
    Mail as MailBuilder,
)
from tests.integration.projector.conftest import (
    last_seq,
    publish,
    publish_again,
    wait_for_position,
)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(client: httpx.AsyncClient, prefix: str) -> Samples:
    """The samples of /metrics whose name starts with `prefix`."""
    response = await client.get("/metrics")
    assert response.status_code == 200
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name.startswith(prefix) and not sample.name.endswith("_created"):
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def gained(before: Samples, after: Samples) -> dict[str, float]:
    out = {}
    for key, value in after.items():
        if value != before.get(key, 0.0):
            labels = ",".join(f"{k}={v}" for k, v in key[1])
            out[f"{key[0]}{{{labels}}}"] = value - before.get(key, 0.0)
    return out


def story(mail: Mail) -> tuple[list[AnyEvent], dict[str, str]]:
    """A tracked email opened by a person and a proxy, a bounced one, a dropbox copy whose open is
    a violation, a received one."""
    ids = {name: new_id() for name in ("tracked", "bounced", "dropbox", "received")}
    t, b, d, r = ids["tracked"], ids["bounced"], ids["dropbox"], ids["received"]
    events: list[AnyEvent] = [
        mail.composed(t, minutes=0),
        mail.sent(t, 1),
        mail.delivered(t, 2),
        mail.opened(t, 4),
        mail.opened(t, 5, Verdict.MACHINE),
        mail.clicked(t, 6),
        mail.composed(b, minutes=10, source=Source.MASS_EMAIL),
        mail.sent(b, 11),
        mail.bounced(b, 12),
        mail.composed(d, minutes=20, source=Source.BCC_DROPBOX),
        mail.sent(d, 21),
        mail.opened(d, 22),
        mail.received(r, minutes=30),
    ]
    return events, ids


async def test_a_replay_or_a_repeat_changes_no_deliverability_counter(
    nc: Client,
    mail: Mail,
    database_url: str,
    start_projector: StartProjector,
    fresh_nats: EmbeddedNats,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    js = nc.jetstream()
    events, _ = story(mail)
    prefix = "mailfold_deliverability_"
    async with start_projector(consumer=ConsumerSettings(max_batch=3)) as service:
        client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.port}")
        async with client:
            before = await scrape(client, prefix)
            await publish(js, events)
            await wait_for_position(database_url, await last_seq(js))
            first = gained(before, await scrape(client, prefix))

            # Every event published again under new stream positions, then a full replay.
            middle = await scrape(client, prefix)
            for event in events:
                await publish_again(js, event)
            await wait_for_position(database_url, await last_seq(js))
            monkeypatch.setenv("MAILFOLD_NATS_URL", fresh_nats.url)
            monkeypatch.setenv("MAILFOLD_DATABASE_URL", database_url)
            monkeypatch.setenv("MAILFOLD_DATA_DIR", str(tmp_path / "no-dev-stack"))
            assert await asyncio.to_thread(mailfold, ["replay", "--verify"]) == 0
            after = await scrape(client, prefix)

    assert gained(middle, after) == {}
    m = prefix
    assert first[f"{m}opens_total{{source=individual,verdict=human}}"] == 1
    assert first[f"{m}opens_total{{source=individual,verdict=machine}}"] == 1
    assert first[f"{m}clicks_total{{source=individual,verdict=human}}"] == 1
    # The fixture's reason "user_unknown" is not in the classifier's vocabulary.
    assert first[f"{m}bounces_total{{kind=hard,reason=other}}"] == 1
    assert first[f"{m}violations_total{{reason=unreachable_status,source=bcc_dropbox}}"] == 1
    assert first[f"{m}milestones_total{{milestone=sent,source=mass_email}}"] == 1
    assert first[f"{m}milestones_total{{milestone=received,source=imap}}"] == 1
    assert first[f"{m}sent_to_delivered_seconds_count{{}}"] == 1
    assert first[f"{m}sent_to_first_open_seconds_sum{{}}"] == 180.0
    transitions = {k: v for k, v in first.items() if k.startswith(f"{m}emails_total")}
    # Each email ends in exactly one status, however many steps it took to get there.
    finals = {k for k in transitions if "to_status=" in k}
    assert f"{m}emails_total{{from_status=none,source=bcc_dropbox,to_status=Sent}}" in finals
    assert sum(1 for k in finals if "source=imap" in k and "to_status=Received" in k) == 1


async def test_the_pipeline_gauges_show_consumers_streams_and_dependencies(
    nc: Client, mail: Mail, database_url: str, start_projector: StartProjector
) -> None:
    js = nc.jetstream()
    events, _ = story(mail)
    async with start_projector(lag_interval=0.05) as service:
        await publish(js, events)
        await js.publish(f"mail.events.{mail.org_id}.email_sent", b"poison")
        await wait_for_position(database_url, await last_seq(js))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.port}") as client:
            deadline = time.monotonic() + 30
            while True:
                got = await scrape(client, "mailfold_")
                floor = got.get(
                    (
                        "mailfold_jetstream_consumer_ack_floor",
                        (("consumer", "projector"), ("stream", "MAIL_EVENTS")),
                    )
                )
                dlq = got.get(("mailfold_jetstream_stream_messages", (("stream", "MAIL_DLQ"),)))
                if floor == len(events) + 1 and dlq == 1:
                    break
                assert time.monotonic() < deadline, got
                await asyncio.sleep(0.05)
    key = (("consumer", "projector"), ("stream", "MAIL_EVENTS"))
    assert got[("mailfold_jetstream_consumer_pending", key)] == 0
    assert got[("mailfold_jetstream_consumer_oldest_unacked_age_seconds", key)] == 0
    assert (
        got[("mailfold_jetstream_stream_messages", (("stream", "MAIL_EVENTS"),))] == len(events) + 1
    )
    assert got[("mailfold_projector_dependency_up", (("dependency", "nats"),))] == 1
    assert got[("mailfold_projector_dependency_up", (("dependency", "postgresql"),))] == 1


async def test_stats_count_an_orgs_emails_by_source_in_postgresql(
    nc: Client, mail: Mail, database_url: str, start_projector: StartProjector
) -> None:
    js = nc.jetstream()
    orgs = await bus.kv(js, bus.BUCKET_ORGS)
    token = await create_org(orgs, mail.org_id)
    other = MailBuilder(mail.org_id + "y")
    other_token = await create_org(orgs, other.org_id)
    events, _ = story(mail)
    theirs, _ = story(other)
    async with start_projector() as service:
        await publish(js, [*events, *theirs])
        await wait_for_position(database_url, await last_seq(js))
        base = f"http://127.0.0.1:{service.port}"
        auth = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=base) as client:
            url = f"/v1/orgs/{mail.org_id}/stats"
            window = {"from": "2026-03-01", "to": "2026-03-03T00:00:00Z"}
            response = await client.get(url, params=window, headers=auth)
            only_mass = await client.get(
                url, params={**window, "source": "mass_email"}, headers=auth
            )
            outside = await client.get(
                url, params={"from": "2026-03-03", "to": "2026-03-04"}, headers=auth
            )
            bad = await client.get(
                url, params={"from": "yesterday", "source": "<b>x</b>"}, headers=auth
            )
            backwards = await client.get(
                url, params={"from": "2026-03-03", "to": "2026-03-01"}, headers=auth
            )
            anonymous = await client.get(url, params=window)
            # The default 30-day window before a `to` in year 1 would start before year 1.
            earliest = await client.get(url, params={"to": "0001-01-22"}, headers=auth)
            crossing = await client.get(
                url, params=window, headers={"Authorization": f"Bearer {other_token}"}
            )

    assert response.status_code == 200
    body = response.json()
    assert msgspec.convert(body, OrgStats).org_id == mail.org_id  # the declared answer type
    totals = body["totals"]
    assert totals["emails"] == 4
    assert totals["sent"] == 3
    assert (totals["delivered"], totals["bounced"], totals["bounced_hard"]) == (1, 1, 1)
    assert (totals["opened"], totals["clicked"], totals["received"]) == (1, 1, 1)
    assert (totals["opens_human"], totals["opens_machine"], totals["clicks_human"]) == (1, 1, 1)
    assert totals["violations"] == 1
    assert totals["bounce_rate"] == pytest.approx(1 / 3, abs=1e-4)
    by_source = {s["source"]: s for s in body["by_source"]}
    assert set(by_source) == {"individual", "mass_email", "bcc_dropbox", "imap"}
    assert by_source["individual"]["display"] == "Individual"
    assert by_source["individual"]["open_rate"] == 1.0
    assert by_source["imap"]["bounce_rate"] is None  # nothing sent: no ratio
    assert body["bounce_reasons"] == [{"reason": "user_unknown", "kind": "hard", "emails": 1}]

    mass = only_mass.json()
    assert [s["source"] for s in mass["by_source"]] == ["mass_email"]
    assert mass["totals"]["emails"] == 1
    assert outside.json()["totals"]["emails"] == 0
    assert outside.json()["by_source"] == []

    assert bad.status_code == 422
    assert bad.headers["content-type"] == "application/problem+json"
    assert {e["field"] for e in bad.json()["errors"]} == {"from", "source"}
    assert backwards.status_code == 422
    assert backwards.json()["errors"][0]["field"] == "from"
    assert anonymous.status_code == 401
    assert earliest.status_code == 200
    assert earliest.json()["totals"]["emails"] == 0
    assert anonymous.headers["content-type"] == "application/problem+json"
    assert crossing.status_code == 404
