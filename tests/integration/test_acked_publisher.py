"""bus.AckedPublisher and kv_put against a real nats-server: stored, refused, compare-and-set."""

from __future__ import annotations

import asyncio

import nats.errors
import pytest
from nats.js.errors import APIError, KeyWrongLastSequenceError

from mailfold.cli.embedded import EmbeddedNats
from mailfold.runtime import bus


async def test_kv_put_writes_and_compare_and_set_fails_with_its_own_error(
    fresh_nats: EmbeddedNats,
) -> None:
    nc = await bus.connect(fresh_nats.url, "test-acked", reconnect=False)
    try:
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
    finally:
        await bus.close(nc)


async def test_a_refused_or_unrouted_publish_raises_instead_of_hanging(
    fresh_nats: EmbeddedNats,
) -> None:
    nc = await bus.connect(fresh_nats.url, "test-acked-refused", reconnect=False)
    try:
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
    finally:
        await bus.close(nc)
