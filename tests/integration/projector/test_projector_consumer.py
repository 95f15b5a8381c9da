"""The consumer: poison to the dead-letter stream, repeats change nothing, one writer at a time."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import asyncpg
import httpx
from nats.aio.client import Client
from nats.aio.msg import Msg

from mailfold.cli.embedded import EmbeddedNats
from mailfold.events import DLQ_STREAM, AnyEvent, dlq_subject, encode, new_id

if TYPE_CHECKING:
    from tests.integration.projector.conftest import Mail, StartProjector

from tests.integration.projector.conftest import (
    assert_projection_is_the_fold,
    last_seq,
    publish,
    publish_again,
    wait_for_position,
)


async def dead_letters(nc: Client) -> list[Msg]:
    js = nc.jetstream()
    sub = await js.pull_subscribe(dlq_subject("projector"), stream=DLQ_STREAM)
    found: list[Msg] = []
    try:
        while True:
            try:
                found.extend(await sub.fetch(50, timeout=0.5))
            except TimeoutError:  # nats-py raises its own subclass or the builtin
                return found
    finally:
        await sub.unsubscribe()


async def test_poison_goes_to_the_dead_letter_stream_with_its_reason_and_the_rest_applies(
    nc: Client, mail: Mail, database_url: str, start_projector: StartProjector
) -> None:
    js = nc.jetstream()
    email_id = new_id()
    good: list[AnyEvent] = [mail.composed(email_id), mail.sent(email_id), mail.opened(email_id)]
    org = mail.org_id
    poison = [
        (f"mail.events.{org}.email_sent", b"\x00\x01 not json at all"),
        (
            f"mail.events.{org}.email_sent",
            b'{"type": "email_sent", "org_id": "' + org.encode() + b'"}',
        ),
        (f"mail.events.{org}.email_beamed", b'{"type": "email_beamed", "event_id": "x"}'),
        # A valid event on the subject of another type.
        (f"mail.events.{org}.email_opened", encode(mail.sent(email_id))),
    ]
    async with start_projector():
        await publish(js, good[:1])
        for subject, data in poison:
            await js.publish(subject, data)
        await publish(js, good[1:])
        await wait_for_position(database_url, await last_seq(js))

    await assert_projection_is_the_fold(database_url, good)
    letters = await dead_letters(nc)
    assert [m.data for m in letters] == [data for _, data in poison]
    errors = [m.headers["Mailfold-Error"] for m in letters if m.headers]
    assert errors[0].startswith("undecodable: ")
    assert errors[1].startswith("invalid event: ")
    assert errors[2].startswith("invalid event: ")
    assert "email_beamed" in errors[2]
    assert errors[3] == (
        f"subject mismatch: email_sent of org {org} belongs on mail.events.{org}.email_sent"
    )
    for seq, (letter, (subject, _)) in enumerate(zip(letters, poison, strict=True), start=2):
        assert letter.headers is not None
        assert letter.headers["Mailfold-Consumer"] == "projector"
        assert letter.headers["Mailfold-Subject"] == subject
        assert letter.headers["Mailfold-Stream"] == "MAIL_EVENTS"
        assert letter.headers["Mailfold-Stream-Seq"] == str(seq)


async def test_a_repeat_beyond_the_duplicate_window_and_a_restart_change_nothing(
    nc: Client, mail: Mail, database_url: str, start_projector: StartProjector
) -> None:
    js = nc.jetstream()
    email_id = new_id()
    history: list[AnyEvent] = [
        mail.composed(email_id),
        mail.sent(email_id),
        mail.delivered(email_id),
        mail.opened(email_id),
    ]
    async with start_projector():
        await publish(js, history)
        await wait_for_position(database_url, 4)
    conn = await asyncpg.connect(database_url)
    try:
        before = await conn.fetchrow("SELECT * FROM emails WHERE email_id = $1", email_id)

        async with start_projector():
            for event in history:
                await publish_again(js, event)
            await wait_for_position(database_url, 8)

        after = await conn.fetchrow("SELECT * FROM emails WHERE email_id = $1", email_id)
        assert after is not None
        assert before is not None
        assert {k: v for k, v in after.items() if k not in {"updated_seq", "state"}} == {
            k: v for k, v in before.items() if k not in {"updated_seq", "state"}
        }
        assert after["opens_human"] == 1
        assert await conn.fetchval("SELECT count(*) FROM events") == 4
    finally:
        await conn.close()
    await assert_projection_is_the_fold(database_url, history)


async def test_events_before_their_origin_wait_and_are_decided_when_it_arrives(
    nc: Client, mail: Mail, database_url: str, start_projector: StartProjector
) -> None:
    js = nc.jetstream()
    email_id = new_id()
    origin = mail.composed(email_id, to=("a@example.org", "b@example.org"))
    early: list[AnyEvent] = [mail.sent(email_id), mail.opened(email_id)]
    conn = await asyncpg.connect(database_url)
    try:
        async with start_projector():
            await publish(js, early)
            await wait_for_position(database_url, 2)
            waiting = await conn.fetch("SELECT decision FROM events ORDER BY stream_seq")
            assert [r["decision"] for r in waiting] == ["waiting", "waiting"]
            row = await conn.fetchrow("SELECT * FROM emails WHERE email_id = $1", email_id)
            assert row is not None
            assert (row["waiting_count"], row["status"]) == (2, None)

            await publish(js, [origin])
            await wait_for_position(database_url, 3)
        decided = await conn.fetch("SELECT decision, reason FROM events ORDER BY stream_seq")
        assert [(r["decision"], r["reason"]) for r in decided] == [
            ("applied", None),
            ("violation", "unreachable_status"),
            ("applied", None),
        ]
    finally:
        await conn.close()
    await assert_projection_is_the_fold(database_url, [*early, origin])


async def test_a_second_projector_waits_as_standby_and_takes_over_when_the_first_stops(
    nc: Client, mail: Mail, database_url: str, start_projector: StartProjector
) -> None:
    js = nc.jetstream()
    first, second = mail.life(new_id(), 0), mail.life(new_id(), 1)
    async with start_projector(lag_interval=0.2) as standby:
        async with start_projector() as leader:
            await publish(js, first)
            await wait_for_position(database_url, await last_seq(js))
            # Whichever took the writer lock first leads; the other waits.
            assert sorted([leader.runner.leader, standby.runner.leader]) == [False, True]
            waiting = standby if leader.runner.leader else leader
        await publish(js, second)
        await wait_for_position(database_url, await last_seq(js))
        assert waiting.runner.leader or standby.runner.leader
    await assert_projection_is_the_fold(database_url, [*first, *second])


async def test_health_and_metrics_are_served_on_the_api_port(
    nc: Client, mail: Mail, database_url: str, start_projector: StartProjector
) -> None:
    js = nc.jetstream()
    email_id = new_id()
    async with start_projector() as service, httpx.AsyncClient() as client:
        await publish(js, mail.life(email_id, 2))
        await js.publish(f"mail.events.{mail.org_id}.email_sent", b"junk")
        await wait_for_position(database_url, await last_seq(js))
        base = f"http://127.0.0.1:{service.port}"
        health = await client.get(f"{base}/healthz")
        assert health.status_code == 200
        assert health.json()["checks"] == {"nats": "ok", "database": "ok"}
        operations = (await client.get(f"{base}/asyncapi.json")).json()["operations"]
        assert [op["action"] for op in operations.values()] == ["receive"]
        assert all(name.startswith("projector:") for name in operations)
        for _ in range(50):
            metrics = (await client.get(f"{base}/metrics")).text
            if "mailfold_projector_dead_letters_total" in metrics:
                break
            await asyncio.sleep(0.05)
    assert 'mailfold_projector_events_applied_total{type="email_composed"}' in metrics
    assert 'mailfold_projector_violations_total{reason="unreachable_status"}' in metrics
    assert 'mailfold_projector_dead_letters_total{kind="undecodable"}' in metrics
    assert "mailfold_projector_batch_size_bucket" in metrics
    assert "mailfold_projector_commit_seconds_bucket" in metrics
    assert "mailfold_projector_consumer_lag" in metrics


async def test_the_projector_carries_on_after_nats_restarts(
    nc: Client,
    mail: Mail,
    database_url: str,
    start_projector: StartProjector,
    fresh_nats: EmbeddedNats,
) -> None:
    js = nc.jetstream()
    before = [e for n in range(5) for e in mail.life(new_id(), n)]
    after = [e for n in range(5) for e in mail.life(new_id(), n)]
    async with start_projector():
        await publish(js, before)
        await wait_for_position(database_url, len(before))
        await asyncio.to_thread(fresh_nats.restart)
        for _ in range(200):
            if nc.is_connected:
                break
            await asyncio.sleep(0.05)
        await publish(js, after)
        await wait_for_position(database_url, len(before) + len(after))
    await assert_projection_is_the_fold(database_url, [*before, *after])
