"""bus.AckedPublisher and kv_put against a real nats-server: stored, refused, compare-and-set."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import nats.errors
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.errors import APIError, KeyWrongLastSequenceError

from mailfold.cli.embedded import EmbeddedNats
from mailfold.events import EmailComposed, Source, decode, new_id
from mailfold.events.subjects import STREAM
from mailfold.runtime import bus


@pytest.fixture
async def nc(fresh_nats: EmbeddedNats) -> AsyncIterator[Client]:
    """A connection of the test's own to its own nats-server."""
    client = await bus.connect(fresh_nats.url, "test-acked", reconnect=False)
    yield client
    await bus.close(client)


def _composed(org_id: str = "acme") -> EmailComposed:
    return EmailComposed(
        event_id=new_id(),
        org_id=org_id,
        email_id=new_id(),
        producer="test",
        occurred_at=datetime(2026, 1, 2, tzinfo=UTC),
        source=Source.INDIVIDUAL,
        from_addr="me@acme.example",
        to=("ann@example.org",),
    )


async def test_kv_put_writes_and_compare_and_set_fails_with_its_own_error(
    nc: Client,
) -> None:
    kv = await bus.kv(nc.jetstream(), "test_acked", ttl_s=60)
    first = await bus.kv_put(kv, "a.b", b"one", last=0)  # only if absent
    assert (await kv.get("a.b")).value == b"one"
    with pytest.raises(KeyWrongLastSequenceError):
        await bus.kv_put(kv, "a.b", b"again", last=0)  # present now: refused, not hung
    second = await bus.kv_put(kv, "a.b", b"two", last=first)
    assert second > first
    with pytest.raises(KeyWrongLastSequenceError):
        await bus.kv_put(kv, "a.b", b"stale", last=first)
    third = await bus.kv_put(kv, "a.b", b"three")  # unconditional
    entry = await kv.get("a.b")
    assert (entry.value, entry.revision) == (b"three", third)
    outcomes = await bus.kv_put_many(kv, [("m.1", b"x"), ("m.2", b"y"), ("bad key", b"z")])
    assert outcomes[:2] == [None, None]
    assert isinstance(outcomes[2], BaseException)  # an invalid subject is not stored
    assert [(await kv.get(k)).value for k in ("m.1", "m.2")] == [b"x", b"y"]


async def test_a_refused_or_unrouted_publish_raises_instead_of_hanging(
    nc: Client,
) -> None:
    js = nc.jetstream()
    await bus.ensure_topology(js)
    first, second = await asyncio.gather(bus.acked_publisher(nc), bus.acked_publisher(nc))
    assert first is second  # one per connection, even when asked for at once
    publisher = first
    stored = await publisher.publish("mail.dlq.test", b"{}")
    assert await asyncio.wait_for(stored, 5) > 0
    # No stream takes the subject: the server answers 503 (no responders).
    unrouted = await publisher.publish("nowhere.at.all", b"{}")
    with pytest.raises(nats.errors.NoRespondersError):
        await asyncio.wait_for(unrouted, 5)
    # The stream refuses it (wrong expected stream): an API error, raised on the future.
    refused = await publisher.publish(
        "mail.dlq.test", b"{}", {"Nats-Expected-Stream": "NOT_THIS_ONE"}
    )
    with pytest.raises(APIError) as caught:
        await asyncio.wait_for(refused, 5)
    assert caught.value.err_code


async def test_events_are_published_once_per_event_id_and_a_batch_reports_each_outcome(
    nc: Client,
) -> None:
    js = nc.jetstream()
    events = [_composed(), _composed("other")]
    before = await bus.publish_batch(js, events, ack_timeout_s=5)  # no stream yet
    assert all(isinstance(o, nats.errors.NoRespondersError) for o in before), before
    with pytest.raises(nats.errors.NoRespondersError):
        await bus.publish_event(js, events[0])

    await bus.ensure_topology(js)
    assert await bus.publish_batch(js, events, ack_timeout_s=5) == [None, None]
    event = _composed()
    seq = await bus.publish_event(js, event)
    assert await bus.publish_event(js, event) == seq  # the same Nats-Msg-Id: stored once
    assert decode((await js.get_msg(STREAM, seq=seq)).data or b"") == event
    assert (await js.stream_info(STREAM)).state.messages == 3


async def test_publishes_awaiting_acknowledgement_are_bounded(nc: Client) -> None:

    async def never_answer(msg: Msg) -> None:
        return None

    await nc.subscribe("held.>", cb=never_answer)  # takes every message, answers none
    publisher = bus.AckedPublisher(nc, max_pending=2)
    await publisher.ready
    first = await publisher.publish("held.1", b"")
    await publisher.publish("held.2", b"")
    third = asyncio.ensure_future(publisher.publish("held.3", b""))
    await asyncio.sleep(0.2)
    assert not third.done()  # waits for a slot
    first.cancel()  # the caller gave up on it: its slot is free
    sent = await asyncio.wait_for(third, 5)
    assert not sent.done()


async def test_kv_create_writes_only_an_absent_key_and_a_deleted_one_counts_as_absent(
    nc: Client,
) -> None:
    kv = await bus.kv(nc.jetstream(), "test_create", ttl_s=60)
    first = await bus.kv_create(kv, "k", b"one")
    with pytest.raises(KeyWrongLastSequenceError):
        await bus.kv_create(kv, "k", b"two")  # it holds a value
    await kv.delete("k")
    again = await bus.kv_create(kv, "k", b"three")
    await kv.purge("k")
    last = await bus.kv_create(kv, "k", b"four")
    entry = await kv.get("k")
    assert first < again < last
    assert (entry.value, entry.revision) == (b"four", last)
