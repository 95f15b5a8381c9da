"""The mailbox's pure decisions: reading headers, recognising mail, deriving ids."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from mailfold.events import RecordRef, Source
from mailfold.events.headers import summarise
from mailfold.events.ids import new_id
from mailfold.events.model import Module
from mailfold.mailbox.adapters.imap import compact
from mailfold.mailbox.domain import events as ev
from mailfold.mailbox.domain.messages import looks_like_bounce

AT = datetime(2026, 11, 29, tzinfo=UTC)
RAW = (
    b"From: Bob <BOB@customer.example>\r\nTo: ann@acme.example, Carol <carol@x.example>\r\n"
    b"Subject: =?utf-8?q?Caf=C3=A9?=\r\nMessage-ID: <Abc@Mail.Example>\r\n"
    b"Date: Sun, 29 Nov 2026 10:00:00 +0000\r\n\r\nbody\r\n"
)


def test_headers_are_read_into_a_summary() -> None:
    summary = summarise(RAW)
    assert summary.from_addr == "BOB@customer.example"
    assert summary.to == ("ann@acme.example", "carol@x.example")
    assert summary.subject == "Café"
    assert summary.date_ms == int(datetime(2026, 11, 29, 10, tzinfo=UTC).timestamp() * 1000)
    assert not looks_like_bounce(summary)


def test_garbage_reads_as_an_empty_summary_without_raising() -> None:
    assert summarise(b"\x00\xff no headers at all").from_addr == ""


def test_reports_and_mailer_daemons_look_like_bounces() -> None:
    report = (
        b"From: x@y.example\r\nContent-Type: multipart/report; report-type=delivery-status\r\n\r\n"
    )
    daemon = b"From: MAILER-DAEMON@mx.example\r\nSubject: hi\r\n\r\n"
    assert looks_like_bounce(summarise(report))
    assert looks_like_bounce(summarise(daemon))


def test_the_crm_message_id_names_the_crm_email_only_on_the_org_mail_domain() -> None:
    email_id = new_id()
    assert ev.crm_email_id(f"<{email_id}@mailfold.localhost>", "mailfold.localhost") == email_id
    assert ev.crm_email_id(f"{email_id}@Mailfold.Localhost", "mailfold.localhost") == email_id
    assert ev.crm_email_id(f"<{email_id}@elsewhere.example>", "mailfold.localhost") is None
    assert ev.crm_email_id("<not-a-uuid@mailfold.localhost>", "mailfold.localhost") is None


def test_a_message_is_keyed_by_its_message_id_as_bounces_quote_it() -> None:
    summary = summarise(RAW)
    assert ev.message_key(summary, RAW) == "abc@mail.example"
    bare = summarise(b"From: a@b.example\r\n\r\nx")
    assert ev.message_key(bare, b"x").startswith("sha256:")


@given(st.text(min_size=1, max_size=40), st.sampled_from(list(ev.Role)))
def test_email_ids_depend_on_the_message_not_on_where_it_was_read(key: str, role: ev.Role) -> None:
    a = ev.email_id_for("acme", "ann", role, key, 1_700_000_000_000)
    assert a == ev.email_id_for("acme", "ann", role, key, 1_700_000_000_000)
    assert a != ev.email_id_for("acme", "bob", role, key, 1_700_000_000_000)


def test_event_ids_derive_from_the_email_so_a_reread_publishes_the_same_events() -> None:
    summary = summarise(RAW)
    records = (RecordRef(record_id="c1", module=Module.CONTACTS),)
    email_id = ev.email_id_for("acme", "ann", ev.Role.INBOX, "k", summary.date_ms)
    first = ev.received(
        org_id="acme", user="ann", source=Source.POP3, email_id=email_id,
        summary=summary, records=records, occurred_at=AT,
    )  # fmt: skip
    again = ev.received(
        org_id="acme", user="ann", source=Source.POP3, email_id=email_id,
        summary=summary, records=records, occurred_at=datetime.now(UTC),
    )  # fmt: skip
    assert first.event_id == again.event_id
    assert first.source is Source.POP3
    captured, sent = ev.captured(
        org_id="acme", user="ann", email_id=email_id, summary=summary, records=records,
        occurred_at=AT,
    )  # fmt: skip
    assert captured.source is Source.IMAP
    assert sent.recipients == summary.recipients
    assert len({first.event_id, captured.event_id, sent.event_id}) == 3
    one = ev.deleted(org_id="acme", user="ann", email_id=email_id, reason="x", occurred_at=AT)
    two = ev.deleted(org_id="acme", user="ann", email_id=email_id, reason="y", occurred_at=AT)
    assert one.event_id == two.event_id  # deleted on either side: one deletion


@given(st.sets(st.integers(min_value=1, max_value=5000), min_size=1, max_size=200))
def test_compact_uid_sets_cover_exactly_the_uids(uids: set[int]) -> None:
    covered: set[int] = set()
    for part in compact(sorted(uids)).split(","):
        low, _, high = part.partition(":")
        covered.update(range(int(low), int(high or low) + 1))
    assert covered == uids
