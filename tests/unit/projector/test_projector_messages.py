"""What the projector does with each message: an event on its own subject, or poison."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec
import pytest
from nats.aio.msg import Msg

from mailfold.events import encode
from mailfold.projector.adapters.jetstream import consumer_seq, delivery, stream_seq
from mailfold.projector.domain.messages import Unusable, ValidEvent, classify
from mailfold.projector.entrypoints.consumer import check_deliveries

if TYPE_CHECKING:
    from tests.unit.projector.conftest import Events


def test_an_event_on_its_own_subject_is_accepted_with_its_wire_form(events: Events) -> None:
    event = events.composed("e1")
    item = classify(7, "mail.events.acme.email_composed", encode(event))

    assert isinstance(item, ValidEvent)
    assert item.event == event
    assert item.seq == 7
    assert msgspec.json.decode(item.payload) == msgspec.json.decode(encode(event))


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"\x00\xffnot json", "undecodable: "),
        (b'{"type": "email_sent"}', "invalid event: "),
        (b'{"type": "email_teleported", "event_id": "x"}', "invalid event: "),
        (b"[1, 2, 3]", "invalid event: "),
    ],
)
def test_garbage_invalid_events_and_unknown_types_are_poison(data: bytes, error: str) -> None:
    item = classify(3, "mail.events.acme.email_sent", data)

    assert isinstance(item, Unusable)
    assert item.error.startswith(error)
    assert item.data == data
    assert item.seq == 3


def test_an_event_on_another_type_or_org_subject_is_poison(events: Events) -> None:
    data = encode(events.sent("e1"))

    wrong_type = classify(1, "mail.events.acme.email_opened", data)
    wrong_org = classify(2, "mail.events.other.email_sent", data)

    assert isinstance(wrong_type, Unusable)
    assert wrong_type.error == (
        "subject mismatch: email_sent of org acme belongs on mail.events.acme.email_sent"
    )
    assert isinstance(wrong_org, Unusable)
    assert wrong_org.error.startswith("subject mismatch")


def test_a_nul_character_postgresql_cannot_store_is_poison_but_an_escaped_backslash_is_not(
    events: Events,
) -> None:
    with_nul = msgspec.structs.replace(events.composed("e1"), subject="a\x00b")
    backslash = msgspec.structs.replace(events.composed("e2"), subject="C:\\u0000")

    # encode() never writes NUL; a producer that bypasses it could.
    refused = classify(1, "mail.events.acme.email_composed", msgspec.json.encode(with_nul))
    kept = classify(2, "mail.events.acme.email_composed", encode(backslash))

    assert isinstance(refused, Unusable)
    assert "NUL" in refused.error
    assert isinstance(kept, ValidEvent)


def test_the_stream_position_is_read_from_both_ack_subject_formats() -> None:
    assert stream_seq("$JS.ACK.MAIL_EVENTS.projector.1.42.40.1700000000000000000.7") == 42
    assert delivery("$JS.ACK.MAIL_EVENTS.projector.1.42.40.1700000000000000000.7") == (42, 7)
    v2 = "$JS.ACK.hub.ACCHASH.MAIL_EVENTS.projector.2.43.41.1700000000000000000.0.tok"
    assert delivery(v2) == (43, 0)
    assert consumer_seq("$JS.ACK.MAIL_EVENTS.projector.1.42.40.1700000000000000000.7") == 40
    assert consumer_seq(v2) == 41
    with pytest.raises(ValueError, match="not a JetStream ack subject"):
        stream_seq("_INBOX.abc")


def ack_reply(stream_seq: int, consumer_seq: int) -> Msg:
    return Msg(
        _client=None,  # type: ignore[arg-type]  # never acknowledged here
        subject="mail.events.acme.email_sent",
        reply=f"$JS.ACK.MAIL_EVENTS.projector.1.{stream_seq}.{consumer_seq}.1700000000000000000.0",
    )


def test_deliveries_in_sequence_pass_and_a_jump_ends_the_term() -> None:
    assert check_deliveries(0, [ack_reply(5, 1), ack_reply(6, 2)]) == 2
    assert check_deliveries(2, [ack_reply(6, 3)]) == 3  # a redelivery is a delivery too

    with pytest.raises(RuntimeError, match="deliveries lost: consumer sequence 5 after 2"):
        check_deliveries(2, [ack_reply(9, 5)])
