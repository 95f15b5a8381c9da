"""The rules the sender applies before sending, and the keys of its limits."""

from __future__ import annotations

import hashlib
from datetime import UTC, date, datetime
from typing import Any

import pytest

from mailfold.events import SOURCES, AttachmentRef, EmailComposed, Source, Transport, new_id
from mailfold.sender.domain import rules
from mailfold.sender.domain.rules import MB, RejectReason


def _composed(**fields: Any) -> EmailComposed:
    fields.setdefault("source", Source.INDIVIDUAL)
    fields.setdefault("from_addr", "sales@crm.example.com")
    return EmailComposed(
        event_id=new_id(),
        org_id="acme",
        email_id=new_id(),
        occurred_at=datetime(2026, 1, 1, tzinfo=UTC),
        producer="test",
        **fields,
    )


def _attachment(size: int, *, template: bool = False, name: str = "f.pdf") -> AttachmentRef:
    return AttachmentRef(
        sha256=hashlib.sha256(name.encode()).hexdigest(),
        size=size,
        name=name,
        from_template=template,
    )


def test_a_plain_email_passes() -> None:
    assert rules.check(_composed(to=("ann@example.org",)), mailbox_configured=False) is None


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({}, RejectReason.NO_RECIPIENTS),
        ({"to": ("ann@example.org",), "bcc": ("nope",)}, RejectReason.INVALID_ADDRESS),
        ({"to": ("ann@example.org",), "from_addr": "x"}, RejectReason.INVALID_ADDRESS),
        (
            {"to": ("a@example.org",), "attachments": (_attachment(3 * MB + 1, template=True),)},
            RejectReason.TEMPLATE_ATTACHMENT_TOO_LARGE,
        ),
        (
            {
                "to": ("a@example.org",),
                "attachments": (_attachment(8 * MB), _attachment(2 * MB + 1, template=True)),
            },
            RejectReason.ATTACHMENTS_TOO_LARGE,
        ),
        (
            {"to": ("a@example.org",), "transport": Transport.INTEGRATED_MAILBOX},
            RejectReason.MAILBOX_NOT_CONFIGURED,
        ),
    ],
)
def test_each_rule_refuses_with_its_reason(fields: dict[str, Any], reason: RejectReason) -> None:
    rejection = rules.check(_composed(**fields), mailbox_configured=False)
    assert rejection is not None
    assert rejection.reason is reason
    assert rejection.detail


def test_the_invalid_recipient_is_named() -> None:
    rejection = rules.check(
        _composed(to=("ann@example.org",), cc=("bob@exa mple.org",)), mailbox_configured=False
    )
    assert rejection is not None
    assert rejection.recipient == "bob@exa mple.org"
    assert "'bob@exa mple.org'" in rejection.detail


def test_limits_hold_at_their_exact_boundaries() -> None:
    at_limit = _composed(
        to=("a@example.org",),
        attachments=(_attachment(3 * MB, template=True), _attachment(7 * MB)),
    )
    assert rules.check(at_limit, mailbox_configured=False) is None


def test_a_large_attachment_of_ones_own_is_only_bound_by_the_total() -> None:
    own = _composed(to=("a@example.org",), attachments=(_attachment(9 * MB),))
    assert rules.check(own, mailbox_configured=False) is None


def test_a_configured_mailbox_may_send() -> None:
    email = _composed(to=("a@example.org",), transport=Transport.INTEGRATED_MAILBOX)
    assert rules.check(email, mailbox_configured=True) is None


def test_recipients_are_each_taken_once_whatever_their_case() -> None:
    email = _composed(to=("Ann@example.org", "bob@example.org"), cc=("ann@EXAMPLE.org",))
    assert [m.address for m in rules.recipients(email)] == ["Ann@example.org", "bob@example.org"]


def test_the_sources_that_count_toward_the_limit_are_the_mass_ones() -> None:
    counted = {s for s in Source if rules.counts_toward_limit(s)}
    assert counted == {
        Source.MASS_EMAIL,
        Source.MASS_EMAIL_FOLLOW_UP,
        Source.MASS_EMAIL_SCHEDULER,
        Source.MULTIPLE,
        Source.AUTORESPONDER,
        Source.AUTORESPONDER_FOLLOW_UP,
    }
    assert counted == {s for s, info in SOURCES.items() if info.counts_toward_mass_limit}
    assert {s for s in Source if rules.is_deduplicated(s)} < counted


@pytest.mark.parametrize(
    ("utc", "zone", "day"),
    [
        (datetime(2026, 3, 11, 3, 59, tzinfo=UTC), "America/New_York", date(2026, 3, 10)),
        (datetime(2026, 3, 11, 4, 0, tzinfo=UTC), "America/New_York", date(2026, 3, 11)),
        (datetime(2026, 6, 30, 12, 30, tzinfo=UTC), "Pacific/Auckland", date(2026, 7, 1)),
        (datetime(2026, 6, 30, 23, 59, tzinfo=UTC), "UTC", date(2026, 6, 30)),
        (datetime(2026, 6, 30, 23, 59, tzinfo=UTC), "Not/AZone", date(2026, 6, 30)),
    ],
)
def test_the_day_is_the_calendar_day_in_the_orgs_time_zone(
    utc: datetime, zone: str, day: date
) -> None:
    assert rules.local_day(utc, zone) == day


def test_a_campaign_is_one_source_template_sender_and_day() -> None:
    day = date(2026, 5, 1)
    a = _composed(source=Source.MASS_EMAIL, template_id="t1", subject="x")
    same = _composed(
        source=Source.MASS_EMAIL, template_id="t1", subject="y", from_addr="SALES@crm.example.com"
    )
    assert rules.campaign_key(a, day) == rules.campaign_key(same, day)
    others = [
        _composed(source=Source.MASS_EMAIL, template_id="t2"),
        _composed(source=Source.MASS_EMAIL_FOLLOW_UP, template_id="t1"),
        _composed(source=Source.MASS_EMAIL, template_id="t1", from_addr="other@crm.example.com"),
    ]
    assert all(rules.campaign_key(o, day) != rules.campaign_key(a, day) for o in others)
    assert rules.campaign_key(a, date(2026, 5, 2)) != rules.campaign_key(a, day)
    by_subject = _composed(source=Source.MASS_EMAIL, subject="Spring")
    assert rules.campaign_key(by_subject, day) != rules.campaign_key(
        _composed(source=Source.MASS_EMAIL, subject="Summer"), day
    )


def test_an_email_marked_over_its_records_quota_is_refused_naming_the_record() -> None:
    email = _composed(
        to=("ann@example.org",), source=Source.MASS_EMAIL, over_quota_record="contact-7"
    )
    rejection = rules.check(email, mailbox_configured=False)
    assert rejection is not None
    assert rejection.reason is rules.RejectReason.RECORD_ATTACHMENT_QUOTA
    assert "'contact-7'" in rejection.detail
    assert rules.check(_composed(to=("ann@example.org",)), mailbox_configured=False) is None


def test_a_day_admits_mass_email_until_its_limit_is_taken() -> None:
    assert rules.within_daily_limit(0, 1)
    assert rules.within_daily_limit(499, 500)
    assert not rules.within_daily_limit(500, 500)
    assert not rules.within_daily_limit(0, 0)
