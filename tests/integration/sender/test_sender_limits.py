"""The mass-email daily limit and "never twice to one address", with real sender copies racing."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from mailfold.events import AnyEvent, EmailRejected, EmailSent, Source

if TYPE_CHECKING:
    from tests.integration.sender.conftest import Bus, MxFactory, SenderFactory


def _only(events: list[AnyEvent], kind: type[Any]) -> list[Any]:
    return [e for e in events if isinstance(e, kind)]


def _rejected(events: list[AnyEvent], reason: str) -> list[EmailRejected]:
    return [e for e in _only(events, EmailRejected) if e.reason == reason]


async def test_two_sender_copies_racing_send_exactly_the_daily_limit(
    nats_bus: Bus, mx: MxFactory, sender: SenderFactory, org_id: str
) -> None:
    limit, extra = 6, 9
    server = await mx()
    await nats_bus.settings(org_id, mass_email_daily_limit=limit, time_zone="Europe/Paris")
    noon = datetime(2026, 6, 15, 10, 0, tzinfo=UTC)
    for _ in range(2):
        await sender({"example.org": server.port}, clock=lambda: noon, concurrency=4)
    sources = [Source.MASS_EMAIL, Source.AUTORESPONDER, Source.MASS_EMAIL_SCHEDULER]
    await asyncio.gather(
        *(
            nats_bus.compose(
                org_id,
                to=(f"lead{i}@example.org",),
                source=sources[i % len(sources)],
                template_id=f"tpl-{i % len(sources)}",
            )
            for i in range(limit + extra)
        )
    )

    def settled(events: list[AnyEvent]) -> bool:
        return len(_only(events, EmailSent)) + len(_only(events, EmailRejected)) >= limit + extra

    events = await nats_bus.events(org_id, settled, timeout=60, settle=1.5)

    assert len(_only(events, EmailSent)) == limit
    over = _rejected(events, "daily_limit_reached")
    assert len(over) == extra
    assert all("2026-06-15" in e.detail and "Europe/Paris" in e.detail for e in over)
    assert len(server.handler.received) == limit


async def test_individual_mail_does_not_count_toward_the_daily_limit(
    nats_bus: Bus, mx: MxFactory, sender: SenderFactory, org_id: str
) -> None:
    server = await mx()
    await nats_bus.settings(org_id, mass_email_daily_limit=0)
    await sender({"example.org": server.port})
    await nats_bus.compose(org_id, to=("ann@example.org",), source=Source.WORKFLOW_ALERT)
    await nats_bus.compose(org_id, to=("bob@example.org",), source=Source.MASS_EMAIL)

    events = await nats_bus.events(
        org_id, lambda es: len(_only(es, EmailSent)) + len(_only(es, EmailRejected)) == 2
    )

    (sent,) = _only(events, EmailSent)
    assert sent.recipients == ("ann@example.org",)
    (rejected,) = _rejected(events, "daily_limit_reached")
    assert rejected.recipient == "bob@example.org"


async def test_the_daily_limit_resets_at_midnight_in_the_orgs_time_zone(
    nats_bus: Bus, mx: MxFactory, sender: SenderFactory, org_id: str
) -> None:
    server = await mx()
    await nats_bus.settings(org_id, mass_email_daily_limit=2, time_zone="America/New_York")
    # 23:58 on 10 March in New York is already 11 March in UTC.
    now = [datetime(2026, 3, 11, 3, 58, tzinfo=UTC)]
    await sender({"example.org": server.port}, clock=lambda: now[0])

    async def mass(i: int) -> None:
        await nats_bus.compose(
            org_id, to=(f"m{i}@example.org",), source=Source.MASS_EMAIL, template_id="spring"
        )

    def outcomes(n: int) -> Any:
        return lambda es: len(_only(es, EmailSent)) + len(_only(es, EmailRejected)) >= n

    for i in range(3):
        await mass(i)
    events = await nats_bus.events(org_id, outcomes(3), settle=0.5)
    assert len(_only(events, EmailSent)) == 2
    (late,) = _rejected(events, "daily_limit_reached")
    assert "2026-03-10" in late.detail

    now[0] = datetime(2026, 3, 11, 4, 1, tzinfo=UTC)  # 00:01 on 11 March in New York
    for i in range(3, 6):
        await mass(i)
    events = await nats_bus.events(org_id, outcomes(6), settle=0.5)
    assert len(_only(events, EmailSent)) == 4
    second_day = [e for e in _rejected(events, "daily_limit_reached") if "2026-03-11" in e.detail]
    assert len(second_day) == 1
    assert len(server.handler.received) == 4


async def test_a_mass_email_goes_once_per_address_whatever_its_case(
    nats_bus: Bus, mx: MxFactory, sender: SenderFactory, org_id: str
) -> None:
    server = await mx()
    await nats_bus.settings(org_id)
    await sender({"example.org": server.port})
    for address in ("ann@example.org", "ANN@Example.org", "bob@example.org"):
        await nats_bus.compose(
            org_id, to=(address,), source=Source.MASS_EMAIL, template_id="launch"
        )
    # Another campaign (another template) and an individual email may reach Ann again.
    await nats_bus.compose(
        org_id, to=("ann@example.org",), source=Source.MASS_EMAIL, template_id="newsletter"
    )
    await nats_bus.compose(org_id, to=("ann@example.org",), source=Source.INDIVIDUAL)

    events = await nats_bus.events(
        org_id,
        lambda es: len(_only(es, EmailSent)) + len(_only(es, EmailRejected)) >= 5,
        settle=1.0,
    )

    (duplicate,) = _rejected(events, "duplicate_recipient")
    assert duplicate.recipient is not None
    assert duplicate.recipient.lower() == "ann@example.org"
    assert duplicate.recipient in duplicate.detail
    assert len(_only(events, EmailSent)) == 4
    assert server.handler.count_for("ann@example.org") == 3
    assert server.handler.count_for("bob@example.org") == 1


async def test_a_mass_email_without_a_template_is_one_campaign_per_subject_and_sender(
    nats_bus: Bus, mx: MxFactory, sender: SenderFactory, org_id: str
) -> None:
    server = await mx()
    await nats_bus.settings(org_id)
    await sender({"example.org": server.port})
    await nats_bus.compose(
        org_id, to=("ann@example.org",), source=Source.MASS_EMAIL, subject="Spring sale"
    )
    await nats_bus.compose(
        org_id, to=("ann@example.org",), source=Source.MASS_EMAIL, subject="Spring sale"
    )
    await nats_bus.compose(
        org_id, to=("ann@example.org",), source=Source.MASS_EMAIL, subject="Summer sale"
    )

    events = await nats_bus.events(
        org_id,
        lambda es: len(_only(es, EmailSent)) + len(_only(es, EmailRejected)) >= 3,
        settle=1.0,
    )

    assert len(_rejected(events, "duplicate_recipient")) == 1
    assert len(_only(events, EmailSent)) == 2
    assert server.handler.count_for("ann@example.org") == 2
