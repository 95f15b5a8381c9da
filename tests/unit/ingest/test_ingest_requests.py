"""Reading API requests: every field at fault is named, limits give 413, valid input is typed."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailfold.events import Module, Source, Transport
from mailfold.ingest.domain import requests as req
from mailfold.ingest.domain.validation import Invalid, Refused, TooLarge

GOOD: dict[str, Any] = {
    "source": "individual",
    "from": "rep@acme.example",
    "to": ["a@x.example"],
    "subject": "Hello",
    "html": "<p>Hi</p>",
}


def fields_at_fault(exc: Refused) -> set[str]:
    return {e.field for e in exc.errors}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_a_valid_compose_request_is_read_into_a_command() -> None:
    cmd = req.compose_from_json(
        {
            **GOOD,
            "cc": ["c@x.example"],
            "attachments": [{"name": "a.txt", "content_base64": b64(b"hello")}],
            "record_ids": ["r1", "r1", "r2"],
        }
    )
    assert cmd.source is Source.INDIVIDUAL
    assert cmd.transport is Transport.CRM_SERVERS
    assert cmd.recipients == ("a@x.example", "c@x.example")
    assert cmd.attachments[0].data == b"hello"
    assert cmd.attachments[0].content_type == "application/octet-stream"
    assert cmd.record_ids == ("r1", "r2")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"source": "carrier_pigeon"}, "source"),
        ({"source": "imap"}, "source"),
        ({"source": "bcc_dropbox"}, "source"),
        ({"source": None}, "source"),
        ({"transport": "fax"}, "transport"),
        ({"from": "not an address"}, "from"),
        ({"from": None}, "from"),
        ({"to": ["ok@x.example", "bad@"]}, "to[1]"),
        ({"to": "a@x.example"}, "to"),
        ({"cc": [42]}, "cc[0]"),
        ({"to": [], "cc": [], "bcc": []}, "to"),
        ({"subject": "two\r\nlines"}, "subject"),
        ({"html": None}, "html"),
        ({"html": 5}, "html"),
        (
            {"attachments": [{"name": "a.txt", "content_base64": "!!"}]},
            "attachments[0].content_base64",
        ),
        ({"attachments": [{"content_base64": "aGk="}]}, "attachments[0].name"),
        (
            {"attachments": [{"name": "../etc/passwd", "content_base64": "aGk="}]},
            "attachments[0].name",
        ),
        (
            {"attachments": [{"name": "a", "content_type": "nonsense", "content_base64": "aGk="}]},
            "attachments[0].content_type",
        ),
        ({"attachments": [{"name": "a", "content_base64": "aGk=", "x": 1}]}, "attachments[0].x"),
        ({"template_id": "has space"}, "template_id"),
        ({"record_ids": ["ok", "not ok"]}, "record_ids[1]"),
        ({"transport": "integrated_mailbox"}, "mailbox_user"),
        ({"form": "typo@x.example"}, "form"),
    ],
)
def test_each_invalid_compose_field_is_named(change: dict[str, Any], field: str) -> None:
    with pytest.raises(Invalid) as caught:
        req.compose_from_json({**GOOD, **change})
    assert field in fields_at_fault(caught.value)
    assert caught.value.status == 422


def test_a_body_that_is_not_an_object_is_named_body() -> None:
    with pytest.raises(Invalid) as caught:
        req.compose_from_json(["not", "an", "object"])
    assert fields_at_fault(caught.value) == {"body"}


def test_malformed_json_is_named_body() -> None:
    with pytest.raises(Invalid) as caught:
        req.decode_json(b'{"source": ')
    assert fields_at_fault(caught.value) == {"body"}


def test_invalid_utf8_is_422_naming_its_offset_in_the_body() -> None:
    body = b'{"subject": "caf\xc3\xa9", "html": "ok \xff"}'

    offset = body.index(b"\xff")

    with pytest.raises(Invalid) as caught:
        req.decode_json(body)

    assert fields_at_fault(caught.value) == {"body"}
    assert f"(byte {offset})" in str(caught.value)


def test_a_template_alone_is_content_enough() -> None:
    body = {k: v for k, v in GOOD.items() if k != "html"}
    cmd = req.compose_from_json({**body, "template_id": "welcome"})
    assert cmd.html is None
    assert cmd.template_id == "welcome"


def test_over_ten_mib_of_attachments_is_413() -> None:
    chunk = b64(b"x" * (6 * req.MIB))
    with pytest.raises(TooLarge) as caught:
        req.compose_from_json({**GOOD, "attachments": [{"name": "a", "content_base64": chunk}] * 2})
    assert caught.value.status == 413
    assert fields_at_fault(caught.value) == {"attachments"}


def test_a_template_attachment_over_three_mib_is_413_naming_it() -> None:
    big = b64(b"x" * (3 * req.MIB + 1))
    with pytest.raises(TooLarge) as caught:
        req.template_from_json(
            "t1",
            {
                "subject": "s",
                "attachments": [
                    {"name": "small", "content_base64": b64(b"ok")},
                    {"name": "big.pdf", "content_base64": big},
                ],
            },
        )
    assert fields_at_fault(caught.value) == {"attachments[1].content_base64"}
    assert "big.pdf" in caught.value.detail


def test_field_errors_come_before_size_limits() -> None:
    big = b64(b"x" * (3 * req.MIB + 1))
    with pytest.raises(Invalid):
        req.template_from_json(
            "t1", {"subject": 1, "attachments": [{"name": "a", "content_base64": big}]}
        )


def test_records_take_a_module_and_up_to_five_addresses() -> None:
    record = req.record_from_json("r1", {"module": "Contacts", "addresses": ["A@x.example"]})
    assert record.module is Module.CONTACTS
    with pytest.raises(Invalid) as caught:
        req.record_from_json(
            "r1", {"module": "Cats", "addresses": [f"{i}@x.example" for i in range(6)]}
        )
    assert fields_at_fault(caught.value) == {"module", "addresses"}
    with pytest.raises(Invalid) as caught:
        req.record_from_json("r1", {"module": "Leads", "addresses": ["ok@x.example", "nope"]})
    assert fields_at_fault(caught.value) == {"addresses[1]"}


def test_settings_are_validated_and_normalised() -> None:
    settings = req.settings_from_json(
        {
            "time_zone": "Europe/Paris",
            "mass_email_daily_limit": 50,
            "blacklisted_domains": ["@Spam.Example", "*.junk.example"],
            "dropbox_senders": ["Rep@Acme.Example"],
            "mail_domain": "Mail.Acme.Example",
        }
    )
    assert settings.blacklisted_domains == ("spam.example", "junk.example")
    assert settings.dropbox_senders == ("rep@acme.example",)
    assert settings.mail_domain == "mail.acme.example"
    with pytest.raises(Invalid) as caught:
        req.settings_from_json(
            {
                "time_zone": "Mars/Olympus_Mons",
                "mass_email_daily_limit": -1,
                "blacklisted_domains": ["not a domain"],
                "dropbox_senders": [f"s{i}@x.example" for i in range(11)],
                "mail_domain": "localhost",
            }
        )
    assert fields_at_fault(caught.value) == {
        "time_zone",
        "mass_email_daily_limit",
        "blacklisted_domains[0]",
        "dropbox_senders",
        "mail_domain",
    }


def test_a_limit_given_as_a_boolean_is_not_an_integer() -> None:
    with pytest.raises(Invalid) as caught:
        req.settings_from_json({"mass_email_daily_limit": True})
    assert fields_at_fault(caught.value) == {"mass_email_daily_limit"}


def test_mailboxes_need_host_username_and_secret() -> None:
    mailbox = req.mailbox_from_json({"smtp_host": "smtp.x.example", "username": "u", "secret": "s"})
    assert (mailbox.smtp_port, mailbox.security) == (587, "starttls")
    with pytest.raises(Invalid) as caught:
        req.mailbox_from_json({"smtp_port": 0, "security": "rot13", "email": "nope"})
    assert fields_at_fault(caught.value) == {
        "smtp_host",
        "username",
        "secret",
        "smtp_port",
        "security",
        "email",
    }


def test_path_identifiers_are_checked() -> None:
    assert req.valid_ident("record_id", "crm:123") == "crm:123"
    with pytest.raises(Invalid):
        req.valid_ident("record_id", "a b")
    with pytest.raises(Invalid):
        req.valid_user("has space")


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)


@given(st.dictionaries(st.text(max_size=5), JSON, max_size=5))
def test_fingerprints_ignore_key_order(document: dict[str, Any]) -> None:
    reordered = dict(reversed(list(document.items())))
    assert req.fingerprint(document) == req.fingerprint(reordered)


KNOWN = {
    "source",
    "transport",
    "from",
    "to",
    "cc",
    "bcc",
    "subject",
    "html",
    "text",
    "attachments",
    "template_id",
    "record_ids",
    "mailbox_user",
    "body",
}


@given(JSON | st.fixed_dictionaries({}, optional=dict.fromkeys(KNOWN, JSON)))
def test_reading_any_json_gives_a_command_or_errors_naming_real_fields(document: object) -> None:
    try:
        req.compose_from_json(document)
    except Refused as exc:
        errors = exc.errors
    else:
        return
    assert errors
    given = set(document) if isinstance(document, dict) else set()
    for error in errors:
        top = error.field.split("[")[0].split(".")[0]
        assert error.field in given or top in KNOWN, error


def test_a_mailbox_gains_an_incoming_side_with_protocol_defaults() -> None:
    mailbox = req.mailbox_from_json(
        {
            "smtp_host": "smtp.x.example",
            "username": "u",
            "secret": "s",
            "incoming": {
                "protocol": "imap",
                "host": "imap.x.example",
                "username": "ann",
                "secret": "pw",
                "folders": ["INBOX", "Sent", "INBOX"],
            },
        }
    )
    assert mailbox.incoming is not None
    assert (mailbox.incoming.port, mailbox.incoming.security) == (993, "tls")
    assert mailbox.incoming.folders == ("INBOX", "Sent")
    assert "pw" not in repr(mailbox.incoming)


def test_a_bad_incoming_side_names_each_field_under_incoming() -> None:
    with pytest.raises(Invalid) as caught:
        req.mailbox_from_json(
            {
                "smtp_host": "smtp.x.example",
                "username": "u",
                "secret": "s",
                "incoming": {
                    "protocol": "pop3",
                    "host": "bad host!",
                    "port": 70000,
                    "security": "maybe",
                    "folders": ["Sent"],
                    "colour": "blue",
                },
            }
        )
    assert fields_at_fault(caught.value) == {
        "incoming.host",
        "incoming.port",
        "incoming.security",
        "incoming.username",
        "incoming.secret",
        "incoming.folders",
        "incoming.colour",
    }


def test_the_pop3_deletion_setting_must_be_a_boolean() -> None:
    assert req.settings_from_json({"pop3_vanished_is_deleted": True}).pop3_vanished_is_deleted
    with pytest.raises(Invalid) as caught:
        req.settings_from_json({"pop3_vanished_is_deleted": "yes"})
    assert fields_at_fault(caught.value) == {"pop3_vanished_is_deleted"}
