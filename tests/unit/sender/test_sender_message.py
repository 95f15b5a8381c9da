"""The MIME message: headers, parts, attachments, Message-ID and the VERP return path."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailfold.events import (
    AttachmentRef,
    EmailComposed,
    Keyring,
    Source,
    TokenKind,
    VerpRecord,
    new_id,
)
from mailfold.sender.domain.message import (
    Body,
    build,
    decode_text,
    message_id,
    verp_return_path,
)

WHEN = datetime(2026, 4, 1, 12, 0, tzinfo=UTC)


def _composed(**fields: Any) -> EmailComposed:
    return EmailComposed(
        event_id=new_id(),
        org_id="acme",
        email_id="0190f000-0000-7000-8000-000000000001",
        occurred_at=WHEN,
        producer="test",
        source=Source.INDIVIDUAL,
        from_addr="sales@crm.example.com",
        **({"subject": "Prices for 2026 — ready"} | fields),
    )


def _parse(data: bytes) -> EmailMessage:
    parsed = message_from_bytes(data, policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def test_headers_name_the_email_and_leave_bcc_out() -> None:
    email = _composed(to=("ann@example.org",), cc=("bob@example.org",), bcc=("cat@example.org",))
    raw = build(email, Body(html=None, text="Hello"), mail_domain="mail.acme.test", date=WHEN)
    msg = _parse(raw)
    assert msg["Message-ID"] == "<0190f000-0000-7000-8000-000000000001@mail.acme.test>"
    assert msg["From"] == "sales@crm.example.com"
    assert msg["To"] == "ann@example.org"
    assert msg["Cc"] == "bob@example.org"
    assert msg["Bcc"] is None
    assert msg["Subject"] == "Prices for 2026 — ready"
    assert msg["Date"] == "Wed, 01 Apr 2026 12:00:00 +0000"
    assert b"cat@example.org" not in raw


def test_the_wire_form_is_seven_bit_with_crlf_line_ends() -> None:
    raw = build(
        _composed(to=("ann@example.org",)),
        Body(html="<p>Grüße</p>", text="Grüße"),
        mail_domain="m.test",
        date=WHEN,
    )
    assert all(b < 128 for b in raw)
    assert b"\r\n" in raw
    assert b"\n" not in raw.replace(b"\r\n", b"")


def test_html_and_text_make_an_alternative_with_attachments_beside_it() -> None:
    pdf = b"%PDF-1.4 not really"
    ref = AttachmentRef(
        sha256=hashlib.sha256(pdf).hexdigest(), size=len(pdf), name="quote.pdf",
        content_type="application/pdf",
    )  # fmt: skip
    raw = build(
        _composed(to=("ann@example.org",), attachments=(ref,)),
        Body(html="<p>Hi</p>", text="Hi", attachments=((ref, pdf),)),
        mail_domain="m.test",
        date=WHEN,
    )
    msg = _parse(raw)
    assert msg.get_content_type() == "multipart/mixed"
    body = msg.get_body(("html", "plain"))
    assert body is not None
    assert str(msg.get_body(("html",)).get_content()).strip() == "<p>Hi</p>"  # type: ignore[union-attr]
    assert str(msg.get_body(("plain",)).get_content()).strip() == "Hi"  # type: ignore[union-attr]
    (attachment,) = list(msg.iter_attachments())
    assert attachment.get_filename() == "quote.pdf"
    assert attachment.get_content_type() == "application/pdf"
    assert attachment.get_content() == pdf


def test_an_html_only_or_empty_email_still_has_one_body() -> None:
    html_only = _parse(
        build(
            _composed(to=("a@b.test",)),
            Body(html="<b>x</b>", text=None),
            mail_domain="m.test",
            date=WHEN,
        )
    )
    assert html_only.get_content_type() == "text/html"
    empty = _parse(
        build(
            _composed(to=("a@b.test",)), Body(html=None, text=None), mail_domain="m.test", date=WHEN
        )
    )
    assert empty.get_content_type() == "text/plain"  # fmt: skip


def test_a_composite_attachment_type_travels_as_opaque_data() -> None:
    ref = AttachmentRef(sha256="0" * 64, size=3, name="fwd.eml", content_type="message/rfc822")
    msg = _parse(
        build(
            _composed(to=("a@b.test",)),
            Body(html=None, text="x", attachments=((ref, b"abc"),)),
            mail_domain="m.test",
            date=WHEN,
        )
    )
    (attachment,) = list(msg.iter_attachments())
    assert attachment.get_content_type() == "application/octet-stream"


def test_the_verp_return_path_carries_a_verifiable_token() -> None:
    keys = Keyring.parse("k1:unit-test-signing-key-0001")
    record = VerpRecord(org_id="acme", email_id="e-1", recipients=("x@y.test", "Ann@Example.org"))
    path = verp_return_path(
        keys,
        org_id="acme",
        email_id="e-1",
        recipient="Ann@Example.org",
        index=1,
        mail_domain="m.test",
    )
    local, domain = path.split("@")
    assert domain == "m.test"
    assert local.startswith("bounce+")
    assert len(local) <= 64
    ticket = keys.open_verp(local.removeprefix("bounce+").upper())
    assert ticket is not None
    claims = keys.verify_verp_ticket(ticket, record)
    assert (claims.kind, claims.org_id, claims.email_id, claims.recipient) == (
        TokenKind.BOUNCE, "acme", "e-1", "Ann@Example.org",
    )  # fmt: skip


def test_message_id_and_body_charsets() -> None:
    assert message_id("e-1", "m.test") == "<e-1@m.test>"
    assert decode_text("é".encode("latin-1"), "text/plain; charset=ISO-8859-1") == "é"
    assert decode_text("é".encode(), "text/html") == "é"
    assert decode_text(b"\xff", "text/plain; charset=klingon") == "\ufffd"


def _unix(content: object) -> str:
    """Parsed text with the wire's CRLF line ends read as newlines."""
    return str(content).replace("\r\n", "\n")


_text = st.text(alphabet=st.characters(exclude_categories=["Cs", "Cc"]), max_size=300)


@settings(max_examples=150, deadline=None)
@given(
    subject=_text,
    text=st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=400),
    html=st.one_of(st.none(), _text.map(lambda t: f"<p>{t}</p>")),
    names=st.lists(_text.filter(lambda n: n.strip() != ""), max_size=2),
    to=st.integers(1, 12),
)
def test_any_email_parses_back_to_what_was_built(
    subject: str, text: str, html: str | None, names: list[str], to: int
) -> None:
    blobs = [(name, name.encode() * 3 + bytes(range(256))) for name in names]
    refs = tuple(
        AttachmentRef(sha256="0" * 64, size=len(data), name=name, content_type="application/pdf")
        for name, data in blobs
    )
    recipients = tuple(f"person{i}.with.a.longish.name@example{i}.org" for i in range(to))
    email = _composed(to=recipients, attachments=refs, subject=subject)
    raw = build(
        email,
        Body(
            html=html, text=text, attachments=tuple(zip(refs, (d for _, d in blobs), strict=True))
        ),
        mail_domain="m.test",
        date=WHEN,
    )
    assert all(b < 128 for b in raw)
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    msg = _parse(raw)
    assert msg.defects == []
    assert " ".join(str(msg["Subject"]).split()) == " ".join(subject.split())
    assert [a.addr_spec for a in msg["To"].addresses] == list(recipients)
    plain = msg.get_body(("plain",))
    assert plain is not None
    expected = text.replace("\r\n", "\n").replace("\r", "\n")
    assert _unix(plain.get_content()).rstrip("\n") == expected.rstrip("\n")
    if html is not None:
        part = msg.get_body(("html",))
        assert part is not None
        assert _unix(part.get_content()).rstrip("\n") == html.replace("\r", "\n").rstrip("\n")
    found = [
        (" ".join(str(a.get_filename()).split()), a.get_content()) for a in msg.iter_attachments()
    ]
    assert found == [(" ".join(name.split()), data) for name, data in blobs]


def test_long_lines_are_encoded_and_line_breaks_cannot_inject_headers() -> None:
    long_line = "word " * 400
    raw = build(
        _composed(to=("a@b.test",), subject="Hi\r\nBcc: victim@example.org"),
        Body(html=None, text=long_line),
        mail_domain="m.test",
        date=WHEN,
    )
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    msg = _parse(raw)
    assert msg["Bcc"] is None
    assert msg["Subject"] == "Hi Bcc: victim@example.org"
    assert msg["Content-Transfer-Encoding"] == "quoted-printable"
    assert _unix(msg.get_content()).rstrip("\n") == long_line


@pytest.mark.parametrize(
    "name",
    [
        "quarterly report " * 40 + ".pdf",
        "0,,,," + "0" * 27 + "\xa0" * 70 + "¤įįİİİİİııııĲĲĲĲĲĲĲĳĳĳĳĳĳ̴̵̶̷̹ĺĺĺĺĺĺĻĻĻĻļļļļļļŅŅŅŅŇŇŇŇ",
        "отчёт-" * 60 + ".xlsx",
    ],
)
def test_a_long_attachment_name_is_split_into_continuations_that_parse_back(name: str) -> None:
    data = b"%PDF-1.7 example"
    ref = AttachmentRef(sha256="0" * 64, size=len(data), name=name, content_type="application/pdf")
    raw = build(
        _composed(attachments=(ref,)),
        Body(html=None, text="see attached", attachments=((ref, data),)),
        mail_domain="m.test",
        date=WHEN,
    )
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    (attachment,) = _parse(raw).iter_attachments()
    assert attachment.get_filename() == name
    assert attachment.get_content() == data
