"""The record attachment usage port: one contract for the in-memory fake and the KV adapter."""

from __future__ import annotations

import asyncio

import pytest
from nats.js import JetStreamContext

from mailfold.ingest.adapters.usage import KvAttachmentUsage, MemoryAttachmentUsage
from mailfold.ingest.domain.quota import Charge
from mailfold.ingest.service_layer.ports import UsageLedger
from mailfold.runtime import bus

MIB = 1024 * 1024
QUOTA = 100 * MIB


@pytest.fixture(params=["memory", "nats"])
async def usage(request: pytest.FixtureRequest, js: JetStreamContext) -> UsageLedger:
    if request.param == "memory":
        return MemoryAttachmentUsage()
    return KvAttachmentUsage(await bus.kv(js, bus.BUCKET_DIRECTORY))


async def test_a_charge_counts_once_and_a_template_file_once_per_record(
    usage: UsageLedger, org_id: str
) -> None:
    template = (("a" * 64, 2 * MIB),)
    for n in range(3):
        result = await usage.charge(
            org_id, "c1", Charge(key=f"e{n}", own_bytes=0, templates=template), limit=QUOTA
        )
        assert result is not None
        first_stored = (template[0][0],) if n == 0 else ()
        assert result[1] == first_stored
    own = Charge(key="e9", own_bytes=MIB)
    for _ in range(2):
        assert await usage.charge(org_id, "c1", own, limit=QUOTA) is not None
    assert (await usage.usage(org_id, "c1")).total == 3 * MIB
    assert (await usage.usage(org_id, "c2")).total == 0


async def test_a_charge_past_the_limit_is_refused_and_a_refund_takes_it_back(
    usage: UsageLedger, org_id: str
) -> None:
    assert await usage.charge(org_id, "c1", Charge(key="big", own_bytes=QUOTA), limit=QUOTA)
    assert await usage.charge(org_id, "c1", Charge(key="one", own_bytes=1), limit=QUOTA) is None
    # Counting without a limit (received and dropbox mail) is never refused.
    assert await usage.charge(org_id, "c1", Charge(key="raw:x", own_bytes=5), limit=None)
    assert (await usage.usage(org_id, "c1")).total == QUOTA + 5
    await usage.refund(org_id, "c1", Charge(key="big", own_bytes=QUOTA), ())
    assert (await usage.usage(org_id, "c1")).total == 5


async def test_racing_charges_never_take_a_record_past_its_limit(
    usage: UsageLedger, org_id: str
) -> None:
    tenth = QUOTA // 10
    results = await asyncio.gather(
        *(
            usage.charge(org_id, "c1", Charge(key=f"e{n}", own_bytes=tenth), limit=QUOTA)
            for n in range(15)
        )
    )
    assert sum(r is not None for r in results) == 10
    assert (await usage.usage(org_id, "c1")).total == 10 * tenth
