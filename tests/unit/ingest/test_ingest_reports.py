"""Bounce and feedback reports to events: one event per recipient entry, ids derived, fields kept."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from mailfold.bounces import ParsedRecipient, ParsedReport
from mailfold.events import (
    BounceKind,
    ContentRef,
    EmailBounced,
    EmailComplained,
    EmailDeferred,
    EmailDelivered,
    TokenKind,
    TrackingClaims,
    decode,
    encode,
    new_id,
)
from mailfold.ingest.domain.reports import report_events

RAW = ContentRef(sha256="a" * 64, size=100, content_type="message/rfc822")
NOW = datetime(2024, 1, 1, tzinfo=UTC)
EMAIL_ID = new_id()
CLAIMS = TrackingClaims(TokenKind.BOUNCE, "acme", EMAIL_ID, "bob@x.example")


def entry(**change: object) -> ParsedRecipient:
    fields: dict[str, object] = {
        "recipient": "bob@x.example",
        "action": "failed",
        "status": "5.1.1",
        "reply_code": "550",
        "reason": "userunknown",
        "hard": True,
        "kind": "hard",
        "diagnostic": "550 5.1.1 no such user",
        "reporting_mta": "mx.x.example",
        "feedback_type": "",
        "original_message_id": "",
        "original_return_path": "",
    }
    fields.update(change)
    return ParsedRecipient(**fields)  # type: ignore[arg-type]


def events_for(*entries: ParsedRecipient) -> list[object]:
    report = ParsedReport(format="rfc3464", recipients=entries)
    return list(report_events(report, CLAIMS, raw=RAW, occurred_at=NOW))


def test_a_failure_becomes_email_bounced_with_the_parsed_fields() -> None:
    (event,) = events_for(entry())
    assert isinstance(event, EmailBounced)
    assert (event.org_id, event.email_id, event.recipient) == ("acme", EMAIL_ID, "bob@x.example")
    assert event.kind is BounceKind.HARD
    assert (event.status, event.reply_code, event.reason) == ("5.1.1", 550, "userunknown")
    assert event.diagnostic == "550 5.1.1 no such user"
    assert event.reporting_mta == "mx.x.example"
    assert event.report == RAW
    assert event.producer == "ingest"


def test_delays_successes_and_complaints_become_their_own_events() -> None:
    deferred, delivered, complained = events_for(
        entry(action="delayed", status="4.2.2", reply_code="452", kind="soft"),
        entry(action="delivered", status="2.0.0", reply_code="250", diagnostic="ok"),
        entry(action="complained", recipient="redacted@x.example", feedback_type="abuse"),
    )
    assert isinstance(deferred, EmailDeferred)
    assert (deferred.status, deferred.reply_code) == ("4.2.2", 452)
    assert isinstance(delivered, EmailDelivered)
    assert delivered.reply == "ok"
    assert isinstance(complained, EmailComplained)
    assert complained.feedback_type == "abuse"
    # feedback reports redact the recipient; the token knows who it was
    assert complained.recipient == "bob@x.example"


def test_the_token_recipient_stands_in_for_a_missing_or_unparseable_one() -> None:
    first, second = events_for(entry(recipient=""), entry(recipient="not an address"))
    assert isinstance(first, EmailBounced)
    assert isinstance(second, EmailBounced)
    assert first.recipient == second.recipient == "bob@x.example"


def test_a_report_to_one_recipients_verp_address_cannot_speak_for_another_address() -> None:
    # bob's VERP address names eve (another recipient of the email, or an address the email
    # never went to): nothing is said about eve, and only bob's own entry counts.
    (event,) = events_for(
        entry(recipient="eve@x.example"), entry(recipient="BOB@x.example", action="delayed")
    )
    assert isinstance(event, EmailDeferred)
    assert event.recipient == "bob@x.example"
    assert events_for(entry(recipient="eve@x.example")) == []


def test_entries_without_any_recipient_are_skipped() -> None:
    claims = TrackingClaims(TokenKind.BOUNCE, "acme", EMAIL_ID, "")
    report = ParsedReport(format="unknown", recipients=(entry(recipient=""),))
    assert report_events(report, claims, raw=RAW, occurred_at=NOW) == []


def test_odd_reply_codes_become_none() -> None:
    (event,) = events_for(entry(reply_code="999"))
    assert isinstance(event, EmailBounced)
    assert event.reply_code is None


def test_the_same_report_yields_the_same_event_ids() -> None:
    first = events_for(entry(), entry(action="delayed"))
    again = events_for(entry(), entry(action="delayed"))
    assert [e.event_id for e in first] == [e.event_id for e in again]  # type: ignore[attr-defined]
    assert len({e.event_id for e in first}) == 2  # type: ignore[attr-defined]


ACTIONS = st.sampled_from(
    ["failed", "delayed", "delivered", "relayed", "expanded", "complained", "?"]
)


@given(
    st.text(max_size=400),
    ACTIONS,
    st.text(max_size=8),
    st.text(max_size=5000),
    st.sampled_from(["hard", "soft", "undetermined"]),
)
def test_events_built_from_any_parse_result_pass_the_contract(
    recipient: str, action: str, reply_code: str, diagnostic: str, kind: str
) -> None:
    report = ParsedReport(
        format="x",
        recipients=(
            entry(
                recipient=recipient,
                action=action,
                reply_code=reply_code,
                diagnostic=diagnostic,
                kind=kind,
                status=diagnostic[:300],
                reporting_mta=diagnostic,
            ),
        ),
    )
    for event in report_events(report, CLAIMS, raw=RAW, occurred_at=NOW):
        wire = encode(event)
        # the wire form decodes, is stable, and holds no NUL for PostgreSQL to refuse
        assert encode(decode(wire)) == wire
        assert b"\\u0000" not in wire


def test_a_reply_code_of_non_ascii_digits_becomes_none() -> None:
    (event,) = events_for(entry(reply_code="\u00b9\u00b2\u00b3"))  # superscript digits
    assert isinstance(event, EmailBounced)
    assert event.reply_code is None
