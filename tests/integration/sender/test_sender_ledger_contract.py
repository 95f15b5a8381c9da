"""The delivery ledger's contract, run against the in-memory ledger and the real KV bucket."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

import msgspec
import pytest

from mailfold.events import new_id
from mailfold.runtime import bus
from mailfold.sender.adapters.ledger import KvLedger, counter_key, slot_key
from mailfold.sender.adapters.memory import MemoryLedger
from mailfold.sender.domain.state import Admission, MarkState, RecipientMark

if TYPE_CHECKING:
    from tests.integration.sender.conftest import Bus

DAY = date(2026, 5, 4)
T0 = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)


@pytest.fixture(params=["memory", "kv"])
async def ledger(request: pytest.FixtureRequest, nats_bus: Bus) -> AsyncIterator[Any]:
    if request.param == "memory":
        yield MemoryLedger()
    else:
        yield KvLedger(await bus.kv(nats_bus.js, bus.BUCKET_SENDER))


def _mark(state: MarkState, attempt: int = 1) -> RecipientMark:
    return RecipientMark(state=state, attempt=attempt, first_attempt_at=T0)


async def test_a_mark_is_created_once_and_updated_only_from_its_current_revision(
    ledger: Any, org_id: str
) -> None:
    email = new_id()
    assert await ledger.mark(org_id, email, "ann@example.org") is None
    first = await ledger.put_mark(
        org_id, email, "ann@example.org", _mark(MarkState.ATTEMPTING), last=None
    )
    assert first is not None
    again = await ledger.put_mark(
        org_id, email, "ann@example.org", _mark(MarkState.ATTEMPTING), last=None
    )
    assert again is None
    done = await ledger.put_mark(
        org_id, email, "ann@example.org", _mark(MarkState.DONE), last=first
    )
    assert done is not None
    stale = await ledger.put_mark(
        org_id, email, "ann@example.org", _mark(MarkState.DEFERRED), last=first
    )
    assert stale is None
    assert await ledger.mark(org_id, email, "ann@example.org") == (_mark(MarkState.DONE), done)
    assert await ledger.mark(org_id, email, "bob@example.org") is None  # fmt: skip


async def test_marks_of_emails_with_unusual_ids_are_kept_apart(ledger: Any, org_id: str) -> None:
    for email in ("a.b", "a:b", "a_b"):
        await ledger.put_mark(org_id, email, "ann@example.org", _mark(MarkState.DONE, 1), last=None)
    assert (
        await ledger.put_mark(org_id, "a.b", "ann@example.org", _mark(MarkState.DONE), last=None)
        is None
    )
    found = await ledger.mark(org_id, "a:b", "ann@example.org")
    assert found is not None
    assert found[0].state is MarkState.DONE


async def test_an_admission_is_pinned_once_and_decided_from_its_revision(
    ledger: Any, org_id: str
) -> None:
    email = new_id()
    pinned, revision = await ledger.pin_admission(org_id, email, Admission(day=DAY))
    again, same = await ledger.pin_admission(org_id, email, Admission(day=date(2026, 5, 5)))
    assert (again, same) == (pinned, revision)
    decided = Admission(day=DAY, decided=True, recipients=("ann@example.org",))
    assert await ledger.decide_admission(org_id, email, decided, last=revision)
    assert not await ledger.decide_admission(org_id, email, decided, last=revision)
    found = await ledger.admission(org_id, email)
    assert found is not None
    assert found[0] == decided


async def test_an_address_is_claimed_by_one_email_per_campaign(ledger: Any, org_id: str) -> None:
    first, second = new_id(), new_id()
    assert await ledger.claim_address(org_id, "c1", "ann@example.org", first)
    assert await ledger.claim_address(org_id, "c1", "ann@example.org", first)
    assert not await ledger.claim_address(org_id, "c1", "ann@example.org", second)
    assert await ledger.claim_address(org_id, "c2", "ann@example.org", second)
    await ledger.release_address(org_id, "c1", "ann@example.org", second)  # not its claim
    assert not await ledger.claim_address(org_id, "c1", "ann@example.org", second)
    await ledger.release_address(org_id, "c1", "ann@example.org", first)
    assert await ledger.claim_address(org_id, "c1", "ann@example.org", second)


async def test_slots_are_limited_per_day_and_idempotent_per_email(ledger: Any, org_id: str) -> None:
    emails = [new_id() for _ in range(5)]
    granted = [await ledger.reserve_slot(org_id, DAY, e, 3) for e in emails]
    assert granted == [True, True, True, False, False]
    assert [await ledger.reserve_slot(org_id, DAY, e, 3) for e in emails] == granted
    assert await ledger.slots_taken(org_id, DAY) == 3
    assert await ledger.reserve_slot(org_id, date(2026, 5, 5), emails[4], 3)
    assert not await ledger.reserve_slot(org_id, DAY, new_id(), 0)


async def test_racing_ledgers_on_separate_connections_grant_exactly_the_limit(
    nats_bus: Bus, org_id: str
) -> None:
    other = await bus.connect(nats_bus.url, "racer")
    try:
        ledgers = [
            KvLedger(await bus.kv(nats_bus.js, bus.BUCKET_SENDER)),
            KvLedger(await bus.kv(other.jetstream(), bus.BUCKET_SENDER)),
        ]
        emails = [new_id() for _ in range(40)]
        granted = await asyncio.gather(
            *(ledgers[i % 2].reserve_slot(org_id, DAY, e, 15) for i, e in enumerate(emails))
        )
        # Each email asks again on the other connection, as a redelivery would.
        again = await asyncio.gather(
            *(ledgers[(i + 1) % 2].reserve_slot(org_id, DAY, e, 15) for i, e in enumerate(emails))
        )
    finally:
        await bus.close(other)
    assert sum(granted) == 15
    assert again == granted
    assert await ledgers[0].slots_taken(org_id, DAY) == 15


async def test_an_email_that_died_between_its_two_writes_keeps_its_one_slot(
    nats_bus: Bus, org_id: str
) -> None:
    bucket = await bus.kv(nats_bus.js, bus.BUCKET_SENDER)
    ledger = KvLedger(bucket)
    dead, next_one = new_id(), new_id()
    # The counter moved for `dead`, which died before writing its own key.
    await bucket.create(counter_key(org_id, DAY), msgspec.json.encode({"n": 1, "last": dead}))

    assert await ledger.reserve_slot(org_id, DAY, dead, 2)
    assert await ledger.slots_taken(org_id, DAY) == 1

    await bucket.put(counter_key(org_id, DAY), msgspec.json.encode({"n": 1, "last": dead}))
    await bucket.delete(slot_key(org_id, DAY, dead))
    assert await ledger.reserve_slot(org_id, DAY, next_one, 2)  # writes dead's key first
    assert await ledger.reserve_slot(org_id, DAY, dead, 2)
    assert await ledger.slots_taken(org_id, DAY) == 2
    assert not await ledger.reserve_slot(org_id, DAY, new_id(), 2)
