"""Pure decisions of the ingest service: addresses, routes, derived ids, message headers."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from mailfold.events.addresses import domain_listed, is_address, is_domain
from mailfold.events.headers import summarise
from mailfold.events.ids import derived_id, id_time_ms
from mailfold.ingest.domain.captures import (
    blacklisted,
    dropbox_events,
    dropbox_refusal,
    envelope_sender,
)
from mailfold.ingest.domain.replies import SENDER_BLACKLISTED, SENDER_NOT_APPROVED
from mailfold.ingest.domain.routes import RouteKind, route_for
from mailfold.runtime.directory import OrgSettings

LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)


def test_plain_addresses_are_addresses_and_display_forms_are_not() -> None:
    assert is_address("alice@example.com")
    assert is_address("a.b+tag@sub.example.co.uk")
    assert is_address("josé@exämple.com")
    for bad in (
        "alice",
        "@example.com",
        "alice@",
        "alice@localhost",
        "a b@example.com",
        "Alice <alice@example.com>",
        "alice@@example.com",
        ".a@example.com",
        "a..b@example.com",
        "alice@-example.com",
        "a\r\nb@example.com",
        "x" * 65 + "@e.com",
    ):
        assert not is_address(bad), bad


def test_domains_need_two_labels() -> None:
    assert is_domain("example.com")
    assert not is_domain("localhost")
    assert not is_domain("exa mple.com")


@given(LABEL, st.lists(LABEL, min_size=0, max_size=3))
def test_a_blacklisted_domain_covers_its_subdomains_and_nothing_else(
    name: str, subdomains: list[str]
) -> None:
    listed = [f"{name}.com"]
    host = ".".join([*subdomains, f"{name}.com"])
    assert domain_listed(host, listed)
    assert domain_listed(host.upper(), listed)
    assert not domain_listed(f"not{name}.com", listed)
    assert not domain_listed(f"{name}.com.evil.org", listed)


def test_routes_are_read_from_the_local_part_on_any_domain() -> None:
    bounce = route_for("bounce+Dev-ABC-def@anything.example")
    assert bounce is not None
    assert bounce.kind is RouteKind.BOUNCE
    assert bounce.token == "Dev-ABC-def"
    dropbox = route_for("Dropbox+Acme@mail.example.com")
    assert dropbox is not None
    assert (dropbox.kind, dropbox.org_id) == (RouteKind.DROPBOX, "acme")
    inbound = route_for("in+acme+alice@x.example")
    assert inbound is not None
    assert (inbound.kind, inbound.org_id, inbound.user) == (RouteKind.INBOUND, "acme", "alice")
    plain = route_for("in+acme@x.example")
    assert plain is not None
    assert plain.user is None


def test_unknown_local_parts_and_bad_org_ids_have_no_route() -> None:
    for address in (
        "postmaster@x.example",
        "in@x.example",
        "dropbox+@x.example",
        "in+bad!org@x.example",
        "sales+acme@x.example",
        "no-at-sign",
    ):
        assert route_for(address) is None, address


def test_recipients_of_one_org_and_kind_share_a_destination() -> None:
    a, b = route_for("in+acme+alice@x.example"), route_for("in+acme+bob@y.example")
    c = route_for("dropbox+acme@x.example")
    assert a is not None
    assert b is not None
    assert c is not None
    assert a.destination == b.destination
    assert a.destination != c.destination


@given(st.lists(st.text(max_size=20), min_size=1, max_size=4), st.integers(0, 2**48 - 1))
def test_derived_ids_are_deterministic_uuid7s_with_the_given_time(
    parts: list[str], ms: int
) -> None:
    first = derived_id(*parts, unix_ms=ms)
    assert first == derived_id(*parts, unix_ms=ms)
    parsed = uuid.UUID(first)
    assert parsed.version == 7
    assert id_time_ms(first) == ms
    assert derived_id(*parts, "other", unix_ms=ms) != first


def test_summary_reads_addresses_encoded_subjects_and_date() -> None:
    raw = (
        b"From: =?utf-8?q?Jos=C3=A9?= <Jose@Example.com>\r\n"
        b"To: a@x.example, B <b@y.example>, not-an-address\r\n"
        b"Cc: c@z.example\r\n"
        b"Subject: =?utf-8?b?SMOpbGxv?= world\r\n"
        b"Message-ID: <abc@x.example>\r\n"
        b"Date: Tue, 02 Jan 2024 03:04:05 +0000\r\n\r\nbody\r\n"
    )
    s = summarise(raw)
    assert s.from_addr == "Jose@Example.com"
    assert s.to == ("a@x.example", "b@y.example")
    assert s.cc == ("c@z.example",)
    assert s.subject == "Héllo world"
    assert s.message_id == "<abc@x.example>"
    assert s.date_ms == 1704164645000


@given(st.binary(max_size=2000))
def test_summary_never_raises_on_arbitrary_bytes(raw: bytes) -> None:
    summary = summarise(raw)
    assert all(is_address(a) for a in summary.recipients)


def test_null_sender_has_no_address() -> None:
    assert envelope_sender("<>") == ""
    assert envelope_sender(None) == ""
    assert envelope_sender("bob@example.com") == "bob@example.com"


def test_blacklist_applies_to_envelope_and_header_senders() -> None:
    settings = OrgSettings(blacklisted_domains=("spam.example",))
    assert blacklisted(settings, "", "x@mx.spam.example") is SENDER_BLACKLISTED
    assert blacklisted(settings, "x@spam.example") is SENDER_BLACKLISTED
    assert blacklisted(settings, "x@ham.example", "") is None


def test_dropbox_takes_approved_from_headers_case_insensitively() -> None:
    settings = OrgSettings(dropbox_senders=("rep@acme.example",))
    approved = summarise(b"From: Rep <REP@Acme.Example>\r\n\r\n")
    stranger = summarise(b"From: x@acme.example\r\n\r\n")
    nobody = summarise(b"Subject: no sender\r\n\r\n")
    assert dropbox_refusal(settings, approved) is None
    assert dropbox_refusal(settings, stranger) is SENDER_NOT_APPROVED
    assert dropbox_refusal(settings, nobody) is SENDER_NOT_APPROVED


def test_dropbox_copies_leave_the_dropbox_address_out_of_the_recipients() -> None:
    from datetime import UTC, datetime

    from mailfold.events import ContentRef

    summary = summarise(
        b"From: rep@acme.example\r\nTo: c@x.example\r\nCc: Dropbox+Acme@in.example\r\n\r\n"
    )
    captured, sent = dropbox_events(
        org_id="acme",
        summary=summary,
        raw=ContentRef(sha256="0" * 64, size=1),
        records=(),
        own=["dropbox+acme@in.example"],
        occurred_at=datetime.now(UTC),
    )
    assert captured.cc == ()
    assert sent.recipients == ("c@x.example",)
    assert captured.email_id == sent.email_id
    assert captured.event_id != sent.event_id
