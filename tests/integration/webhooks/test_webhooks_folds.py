"""The per-email fold in KV: copies that remember their last write still number events once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from nats.js.kv import KeyValue
from tests.integration.webhooks.conftest import Org, make_org

from mailfold.cli.embedded import EmbeddedNats
from mailfold.runtime import bus
from mailfold.webhooks.adapters import kv


@pytest.fixture
async def fresh_org(fresh_nats: EmbeddedNats, org_id: str) -> Org:
    """An org on the test's own server (`org` is on the shared one)."""
    return await make_org(fresh_nats.url, org_id)


@pytest.fixture
async def bucket(fresh_nats: EmbeddedNats) -> AsyncIterator[KeyValue]:
    """The folds bucket, on a connection of the test's own."""
    nc = await bus.connect(fresh_nats.url, "webhooks-test-folds", reconnect=False)
    try:
        yield await bus.kv(nc.jetstream(), kv.BUCKET_FOLDS, ttl_s=kv.RECORD_TTL_S)
    finally:
        await bus.close(nc)


async def test_two_copies_folding_one_email_number_its_events_once_each(
    fresh_org: Org, bucket: KeyValue, org_id: str
) -> None:
    org = fresh_org
    first, second = kv.Folds(bucket), kv.Folds(bucket)
    composed, sent, delivered = org.composed("m1"), org.sent("m1"), org.delivered("m1")
    # Each copy remembers its own last write; the other copy's writes make that stale.
    assert (await first.apply(composed))[1] == 1
    assert (await second.apply(sent))[1] == 2
    assert (await first.apply(delivered))[1] == 3
    # A repeat keeps its number, whichever copy sees it, and writes nothing new.
    assert (await second.apply(composed))[1] == 1
    assert (await first.apply(sent))[1] == 2
    # A copy started later (nothing remembered) folds into what is stored.
    fold, number = await kv.Folds(bucket).apply(delivered)
    assert number == 3
    assert str(fold.state.status) == "Delivered"
    stored = await first.get(org_id, "m1")
    assert stored is not None
    assert stored.numbers == {composed.event_id: 1, sent.event_id: 2, delivered.event_id: 3}


async def test_an_email_whose_fold_was_deleted_is_folded_afresh(
    fresh_org: Org, bucket: KeyValue, org_id: str
) -> None:
    org = fresh_org
    folds = kv.Folds(bucket)
    composed, sent = org.composed("m2"), org.sent("m2")
    await folds.apply(composed)
    await bucket.delete(f"{org_id}.{bus.key_token('m2')}")  # a tombstone in its place
    async with asyncio.timeout(10):  # a write that keeps being refused would loop here
        fold, number = await kv.Folds(bucket).apply(sent)
    assert number == 1
    assert fold.numbers == {sent.event_id: 1}
