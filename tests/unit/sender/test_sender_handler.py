"""The handler with fakes for every port: what it sends, what it reports, what it remembers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from mailfold.events import (
    BounceKind,
    ContentRef,
    EmailBounced,
    EmailComposed,
    EmailDeferred,
    EmailDelivered,
    EmailRejected,
    EmailSent,
    Event,
    Keyring,
    Source,
    Transport,
    new_id,
    verp_ref,
)
from mailfold.runtime.directory import MailboxSettings, OrgSettings
from mailfold.sender.adapters.memory import MemoryLedger
from mailfold.sender.domain.addresses import Mailbox
from mailfold.sender.domain.delivery import (
    SKIPPED,
    AttemptVerdict,
    RetryPolicy,
    SmtpAttempt,
    failure,
    reply,
)
from mailfold.sender.domain.state import MarkState, RecipientMark, RecipientOutcome
from mailfold.sender.service_layer.handlers import (
    DONE,
    Disposition,
    Ports,
    Retry,
    handle_composed,
)
from mailfold.sender.service_layer.ports import (
    AfterAttempt,
    BeforeData,
    ContentMissing,
    Envelope,
)

KEYS = Keyring.parse("k1:unit-test-signing-key-0001")
OK = reply(250, "2.0.0 Ok", "DATA", "mx.test")
GREYLISTED = reply(451, "4.7.1 greylisted", "RCPT", "mx.test")
UNKNOWN_USER = reply(550, "5.1.1 user unknown", "RCPT", "mx.test")


class Crash(Exception):
    """The process dies while the server holds the message."""


@dataclass
class FakeDirect:
    """Answers per recipient from a script (the last answer repeats); records what was sent."""

    script: dict[str, list[SmtpAttempt]] = field(default_factory=dict)
    crash_on: set[str] = field(default_factory=set)
    sent: list[Envelope] = field(default_factory=list)

    def _next(self, key: str) -> SmtpAttempt:
        answers = self.script.get(key) or [OK]
        return answers.pop(0) if len(answers) > 1 else answers[0]

    async def deliver(
        self,
        domain: str,
        envelopes: Sequence[Envelope],
        before_data: BeforeData,
        after: AfterAttempt,
    ) -> None:
        for envelope in envelopes:
            attempt = self._next(envelope.recipient.key)
            if attempt.verdict is AttemptVerdict.DELIVERED or attempt.command == "DATA":
                if not await before_data([envelope.recipient]):
                    await after(envelope, SKIPPED)
                    continue
                self.sent.append(envelope)
                if envelope.recipient.key in self.crash_on:
                    self.crash_on.discard(envelope.recipient.key)
                    raise Crash
            await after(envelope, attempt)


@dataclass
class FakeSubmission:
    """One answer for the whole transaction, from a script."""

    script: list[SmtpAttempt] = field(default_factory=lambda: [OK])
    sent: list[tuple[str, list[str], bytes]] = field(default_factory=list)

    async def submit(
        self,
        mailbox: MailboxSettings,
        mail_from: str,
        recipients: Sequence[Mailbox],
        message: bytes,
        before_data: BeforeData,
    ) -> list[SmtpAttempt]:
        attempt = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if attempt.verdict is AttemptVerdict.DELIVERED:
            if not await before_data(recipients):
                return [SKIPPED] * len(recipients)  # as the real one: no DATA, nothing sent
            self.sent.append((mail_from, [r.address for r in recipients], message))
        return [attempt] * len(recipients)


@dataclass
class World:
    """Every port, faked, and what went through them."""

    now: datetime = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)
    settings: OrgSettings = field(default_factory=OrgSettings)
    ledger: MemoryLedger = field(default_factory=MemoryLedger)
    direct: FakeDirect = field(default_factory=FakeDirect)
    submission: FakeSubmission = field(default_factory=FakeSubmission)
    content: dict[str, bytes] = field(default_factory=dict)
    mailboxes: dict[str, MailboxSettings] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    retry: RetryPolicy = field(default_factory=lambda: RetryPolicy(base_s=60, max_age_s=3600))

    def ports(self) -> Ports:
        async def publish(event: Event) -> None:
            self.events.append(event)

        async def content(sha256: str) -> bytes:
            if sha256 not in self.content:
                raise ContentMissing(sha256)
            return self.content[sha256]

        async def settings(org_id: str) -> OrgSettings:
            return self.settings

        async def mailbox(org_id: str, user: str) -> MailboxSettings | None:
            return self.mailboxes.get(user)

        return Ports(
            publish=publish,
            ledger=self.ledger,
            content=content,
            settings=settings,
            mailbox=mailbox,
            direct=self.direct,
            submission=self.submission,
            keys=KEYS,
            tracker_url="https://t.test",
            retry=self.retry,
            clock=lambda: self.now,
        )

    async def handle(self, email: EmailComposed, *, redelivered: bool = False) -> Disposition:
        return await handle_composed(email, self.ports(), redelivered=redelivered)

    def of(self, kind: type[Any]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


def composed(**fields: Any) -> EmailComposed:
    fields.setdefault("source", Source.INDIVIDUAL)
    fields.setdefault("from_addr", "sales@crm.test")
    fields.setdefault("to", ("ann@example.org",))
    return EmailComposed(
        event_id=new_id(),
        org_id="acme",
        email_id=new_id(),
        occurred_at=datetime(2026, 5, 4, 8, 0, tzinfo=UTC),
        producer="test",
        **fields,
    )


async def test_a_first_delivery_reports_sent_then_delivered_and_marks_the_recipient_done() -> None:
    world = World()
    email = composed()

    assert await world.handle(email) == DONE

    assert [type(e) for e in world.events] == [EmailSent, EmailDelivered]
    found = await world.ledger.mark("acme", email.email_id, "ann@example.org")
    assert found is not None
    assert found[0].outcome is RecipientOutcome.DELIVERED


async def test_a_redelivered_email_already_done_sends_and_reports_nothing() -> None:
    world = World()
    email = composed(cc=("bob@example.org",))
    await world.handle(email)
    world.events.clear()

    assert await world.handle(email, redelivered=True) == DONE

    assert world.events == []
    assert len(world.direct.sent) == 2


async def test_a_crash_while_the_server_holds_the_message_never_sends_it_again() -> None:
    world = World(direct=FakeDirect(crash_on={"bob@example.org"}))
    email = composed(to=("ann@example.org", "bob@example.org", "cat@example.org"))

    with pytest.raises(Crash):
        await world.handle(email)
    assert await world.handle(email, redelivered=True) == DONE

    sent_to = [e.recipient.address for e in world.direct.sent]
    assert sent_to == ["ann@example.org", "bob@example.org", "cat@example.org"]
    assert sorted(e.recipient for e in world.of(EmailDelivered)) == [
        "ann@example.org",
        "cat@example.org",
    ]
    found = await world.ledger.mark("acme", email.email_id, "bob@example.org")
    assert found is not None
    assert found[0].outcome is RecipientOutcome.UNKNOWN
    # The same EmailSent is published again (same id), which JetStream and the fold drop.
    assert len({e.event_id for e in world.of(EmailSent)}) == 1


async def test_handling_the_same_email_twice_from_scratch_gives_the_same_event_ids() -> None:
    email = composed(cc=("bob@example.org",))
    first, second = World(), World()
    await first.handle(email)
    second.now += timedelta(minutes=5)
    await second.handle(email)
    assert [e.event_id for e in first.events] == [e.event_id for e in second.events]


async def test_a_deferred_recipient_waits_for_its_retry_then_tries_again() -> None:
    world = World(direct=FakeDirect(script={"ann@example.org": [GREYLISTED, OK]}))
    email = composed()

    assert await world.handle(email) == Retry(60.0)
    (deferred,) = world.of(EmailDeferred)
    assert (deferred.attempt, deferred.retry_at) == (1, world.now + timedelta(seconds=60))

    world.now += timedelta(seconds=20)
    assert await world.handle(email, redelivered=True) == Retry(40.0)
    assert len(world.direct.sent) == 0

    world.now += timedelta(seconds=40)
    assert await world.handle(email, redelivered=True) == DONE
    assert [type(e) for e in world.events] == [EmailSent, EmailDeferred, EmailDelivered]


async def test_a_recipient_still_failing_at_the_max_age_bounces_as_expired() -> None:
    world = World(
        direct=FakeDirect(script={"ann@example.org": [GREYLISTED]}),
        retry=RetryPolicy(base_s=60, factor=2, cap_s=600, max_age_s=100),
    )
    email = composed()
    disposition = await world.handle(email)
    while isinstance(disposition, Retry):
        world.now += timedelta(seconds=disposition.delay_s)
        disposition = await world.handle(email, redelivered=True)

    assert [d.attempt for d in world.of(EmailDeferred)] == [1, 2]
    (bounce,) = world.of(EmailBounced)
    assert (bounce.kind, bounce.reason, bounce.status) == (BounceKind.SOFT, "expired", "4.4.7")
    assert "3 attempts" in (bounce.diagnostic or "")


async def test_a_hard_bounce_is_final_and_classified() -> None:
    world = World(direct=FakeDirect(script={"ann@example.org": [UNKNOWN_USER]}))
    assert await world.handle(composed()) == DONE
    (bounce,) = world.of(EmailBounced)
    assert (bounce.kind, bounce.reason, bounce.reply_code) == (BounceKind.HARD, "userunknown", 550)


async def test_a_recipient_another_copy_holds_is_looked_at_again_later() -> None:
    world = World()
    email = composed()
    held = RecipientMark(state=MarkState.ATTEMPTING, attempt=1, first_attempt_at=world.now)
    await world.ledger.put_mark("acme", email.email_id, "ann@example.org", held, last=None)

    assert await world.handle(email) == Retry(60.0)
    assert world.direct.sent == []
    assert not world.of(EmailDelivered)


async def test_an_address_given_twice_gets_one_message() -> None:
    world = World()
    await world.handle(composed(to=("ann@example.org",), bcc=("ANN@example.org",)))
    assert len(world.direct.sent) == 1
    assert world.of(EmailSent)[0].recipients == ("ann@example.org",)


async def test_every_return_path_is_a_short_verp_address_its_record_resolves() -> None:
    world = World()
    email = composed(to=("ann@example.org",), cc=("Bob@Example.org",), bcc=("cat@example.org",))
    await world.handle(email)
    record = world.ledger.verp[verp_ref("acme", email.email_id)]
    assert record.recipients == ("ann@example.org", "Bob@Example.org", "cat@example.org")
    assert len(world.direct.sent) == 3
    for envelope in world.direct.sent:
        local = envelope.mail_from.partition("@")[0]
        assert len(local.encode()) <= 64
        ticket = KEYS.open_verp(local.removeprefix("bounce+").upper())
        assert ticket is not None
        claims = KEYS.verify_verp_ticket(ticket, record)
        assert (claims.org_id, claims.email_id) == ("acme", email.email_id)
        assert claims.recipient.lower() == envelope.recipient.address.lower()


async def test_only_one_recipient_crm_mail_gets_a_pixel() -> None:
    html = b"<html><body><a href='https://x.test'>x</a></body></html>"
    ref = ContentRef(sha256="a" * 64, size=len(html), content_type="text/html")
    single, multi = World(content={ref.sha256: html}), World(content={ref.sha256: html})
    await single.handle(composed(html=ref))
    await multi.handle(composed(html=ref, cc=("bob@example.org",)))
    assert b"/o/" in single.direct.sent[0].message
    assert all(
        b"/o/" not in e.message and b"https://x.test" in e.message for e in multi.direct.sent
    )


async def test_missing_content_rejects_the_email() -> None:
    world = World()
    ref = ContentRef(sha256="b" * 64, size=10, content_type="text/html")
    assert await world.handle(composed(html=ref)) == DONE
    (rejected,) = world.of(EmailRejected)
    assert rejected.reason == "content_missing"
    assert "HTML body" in rejected.detail
    assert world.direct.sent == []


async def test_the_daily_limit_resets_at_midnight_in_the_orgs_time_zone() -> None:
    world = World(settings=OrgSettings(mass_email_daily_limit=1, time_zone="Asia/Tokyo"))
    world.now = datetime(2026, 5, 4, 14, 59, tzinfo=UTC)  # 23:59 in Tokyo
    mass = [composed(source=Source.AUTORESPONDER, to=(f"m{i}@example.org",)) for i in range(4)]

    await world.handle(mass[0])
    await world.handle(mass[1])
    world.now = datetime(2026, 5, 4, 15, 0, tzinfo=UTC)  # midnight in Tokyo
    await world.handle(mass[2])
    await world.handle(mass[3])

    assert [e.recipients for e in world.of(EmailSent)] == [("m0@example.org",), ("m2@example.org",)]
    rejected = world.of(EmailRejected)
    assert [r.email_id for r in rejected] == [mass[1].email_id, mass[3].email_id]
    assert "2026-05-04" in rejected[0].detail
    assert "2026-05-05" in rejected[1].detail
    assert await world.ledger.slots_taken("acme", date(2026, 5, 4)) == 1
    assert await world.ledger.slots_taken("acme", date(2026, 5, 5)) == 1


async def test_a_redelivered_mass_email_keeps_its_day_and_its_one_slot() -> None:
    world = World(
        settings=OrgSettings(mass_email_daily_limit=5),
        direct=FakeDirect(script={"ann@example.org": [GREYLISTED, OK]}),
    )
    email = composed(source=Source.MASS_EMAIL, template_id="t")
    await world.handle(email)
    world.now += timedelta(days=1)
    assert await world.handle(email, redelivered=True) == DONE
    assert await world.ledger.slots_taken("acme", date(2026, 5, 4)) == 1
    assert await world.ledger.slots_taken("acme", date(2026, 5, 5)) == 0
    assert len(world.of(EmailDelivered)) == 1


async def test_a_mass_email_refused_by_the_limit_gives_its_addresses_back() -> None:
    world = World(settings=OrgSettings(mass_email_daily_limit=0))
    first = composed(source=Source.MASS_EMAIL, template_id="t")
    await world.handle(first)
    world.settings = OrgSettings(mass_email_daily_limit=1)
    await world.handle(composed(source=Source.MASS_EMAIL, template_id="t"))

    assert [r.reason for r in world.of(EmailRejected)] == ["daily_limit_reached"]
    assert len(world.of(EmailDelivered)) == 1


async def test_a_mass_email_reaching_only_duplicates_is_rejected_per_address_and_not_counted() -> (
    None
):
    world = World(settings=OrgSettings(mass_email_daily_limit=1))
    await world.handle(composed(source=Source.MASS_EMAIL, template_id="t", to=("a@example.org",)))
    again = composed(source=Source.MASS_EMAIL, template_id="t", to=("A@example.org",))
    assert await world.handle(again) == DONE
    (duplicate,) = world.of(EmailRejected)
    assert (duplicate.reason, duplicate.recipient) == ("duplicate_recipient", "A@example.org")
    assert await world.ledger.slots_taken("acme", date(2026, 5, 4)) == 1


async def test_mailbox_mail_is_submitted_once_and_temporary_failures_stay_quiet() -> None:
    world = World(
        mailboxes={
            "ann": MailboxSettings(
                smtp_host="smtp.test", username="ann", secret="x", email="ann@corp.test"
            )
        },
        submission=FakeSubmission(script=[failure("refused", "CONN", "4.4.1"), OK]),
    )
    email = composed(transport=Transport.INTEGRATED_MAILBOX, mailbox_user="ann")

    assert await world.handle(email) == Retry(60.0)
    assert world.events == []
    world.now += timedelta(seconds=60)
    assert await world.handle(email, redelivered=True) == DONE

    (sent,) = world.of(EmailSent)
    assert sent.transport is Transport.INTEGRATED_MAILBOX
    assert [s[0] for s in world.submission.sent] == ["ann@corp.test"]
    assert await world.handle(email, redelivered=True) == DONE
    assert len(world.submission.sent) == 1


async def test_mailbox_mail_waits_whole_while_another_copy_holds_one_of_its_recipients() -> None:
    world = World(
        mailboxes={"ann": MailboxSettings(smtp_host="smtp.test", username="ann", secret="x")}
    )
    email = composed(
        transport=Transport.INTEGRATED_MAILBOX,
        mailbox_user="ann",
        to=("ann@example.org", "bob@example.org", "cat@example.org"),
    )
    held = RecipientMark(state=MarkState.ATTEMPTING, attempt=1, first_attempt_at=world.now)
    await world.ledger.put_mark("acme", email.email_id, "bob@example.org", held, last=None)

    assert await world.handle(email) == Retry(60.0)
    assert world.submission.sent == []
    assert world.events == []
    for free in ("ann@example.org", "cat@example.org"):
        found = await world.ledger.mark("acme", email.email_id, free)
        assert found is not None
        mark = found[0]
        assert (mark.state, mark.attempt, mark.retry_at) == (MarkState.DEFERRED, 0, world.now)
    still = await world.ledger.mark("acme", email.email_id, "bob@example.org")
    assert still is not None
    assert still[0] == held

    assert await world.handle(email, redelivered=True) == DONE
    ((_, submitted, _),) = world.submission.sent
    assert submitted == ["ann@example.org", "cat@example.org"]
    (sent,) = world.of(EmailSent)
    assert sent.recipients == ("ann@example.org", "cat@example.org")
