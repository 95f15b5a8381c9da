"""Replay's wire-protocol reader cutting deliveries out of the byte stream, however it is split."""

from __future__ import annotations

import collections

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nats.aio.client import Client

from mailfold.projector.adapters.raw_replay import RawPullReader
from mailfold.projector.domain.messages import RawMessage

INBOX = b"_INBOX.replay"


def reply(seq: int, pending: int) -> bytes:
    return b"$JS.ACK.MAIL_EVENTS.replay_x.1.%d.%d.1700000000000000000.%d" % (seq, seq, pending)


def hmsg(subject: bytes, seq: int, pending: int, data: bytes) -> bytes:
    header = b"NATS/1.0\r\nNats-Msg-Id: id-%d\r\n\r\n" % seq
    return b"HMSG %s 1 %s %d %d\r\n%s%s\r\n" % (
        subject,
        reply(seq, pending),
        len(header),
        len(header) + len(data),
        header,
        data,
    )


def msg(subject: bytes, seq: int, pending: int, data: bytes) -> bytes:
    return b"MSG %s 1 %s %d\r\n%s\r\n" % (subject, reply(seq, pending), len(data), data)


def status(code: bytes, text: bytes) -> bytes:
    header = b"NATS/1.0 " + code + b" " + text + b"\r\n\r\n"
    return b"HMSG %s 1 %d %d\r\n%s\r\n" % (INBOX, len(header), len(header), header)


def reader(*, to_seq: int = 10**9, batch: int = 100, open_requests: int = 2) -> RawPullReader:
    raw = RawPullReader(
        Client(), stream="MAIL_EVENTS", consumer="replay_x", from_seq=1, to_seq=to_seq, batch=batch
    )
    raw._open = collections.deque([batch, batch] for _ in range(open_requests))
    return raw


def feed(raw: RawPullReader, wire: bytes, cuts: list[int]) -> list[RawMessage]:
    out: list[RawMessage] = []
    start = 0
    for cut in [*sorted(set(cuts)), len(wire)]:
        if cut > start:
            raw._parse(wire[start:cut], out)
            start = cut
    return out


WIRE = b"".join(
    [
        b"+OK\r\n",
        hmsg(b"mail.events.o.email_sent", 3, 3, b'{"a":"x y\\r\\n"}'),
        msg(b"mail.events.o.email_opened", 4, 2, b""),
        b"PONG\r\n",
        hmsg(b"mail.events.o.email_clicked", 7, 1, b"HMSG not a header\r\n"),
        hmsg(b"mail.events.o.email_delivered", 8, 0, b"{}"),
    ]
)
EXPECTED = [
    (3, "mail.events.o.email_sent", b'{"a":"x y\\r\\n"}'),
    (4, "mail.events.o.email_opened", b""),
    (7, "mail.events.o.email_clicked", b"HMSG not a header\r\n"),
    (8, "mail.events.o.email_delivered", b"{}"),
]


@given(cuts=st.lists(st.integers(min_value=0, max_value=len(WIRE)), max_size=12))
def test_deliveries_come_out_whole_and_in_order_wherever_the_reads_split_them(
    cuts: list[int],
) -> None:
    raw = reader()

    assert feed(raw, WIRE, cuts) == EXPECTED
    assert raw._done  # the last one had nothing pending after it
    assert raw._buf == b""


def test_every_split_point_of_a_delivery_gives_the_same_messages() -> None:
    for cut in range(len(WIRE) + 1):
        assert feed(reader(), WIRE, [cut]) == EXPECTED


def test_reading_stops_at_the_end_of_the_range() -> None:
    raw = reader(to_seq=7)

    assert [m[0] for m in feed(raw, WIRE, [])] == [3, 4, 7]
    assert raw._done


def test_a_delivery_beyond_the_range_is_not_handed_over() -> None:
    raw = reader(to_seq=5)
    wire = hmsg(b"mail.events.o.email_sent", 3, 5, b"a") + hmsg(
        b"mail.events.o.email_sent", 9, 4, b"b"
    )

    assert [m[0] for m in feed(raw, wire, [])] == [3]
    assert raw._done


def test_each_request_is_counted_down_by_its_deliveries() -> None:
    raw = reader(batch=2)
    wire = b"".join(hmsg(b"mail.events.o.email_sent", seq, 9, b"x") for seq in (1, 2, 3))

    feed(raw, wire, [])

    assert list(raw._open) == [[1, 2]]  # the first request is complete, the second has one to go


def test_a_request_that_expires_empty_handed_ends_the_replay() -> None:
    raw = reader(batch=5, open_requests=1)

    assert feed(raw, status(b"408", b"Request Timeout"), []) == []
    assert raw._done


def test_a_request_that_expires_after_deliveries_only_closes_that_request() -> None:
    raw = reader(batch=5)
    wire = hmsg(b"mail.events.o.email_sent", 1, 9, b"x") + status(b"408", b"Request Timeout")

    feed(raw, wire, [])

    assert not raw._done
    assert list(raw._open) == [[5, 5]]


def test_a_refused_request_is_reported_with_the_servers_reason() -> None:
    raw = reader()

    feed(raw, status(b"409", b"Consumer Deleted"), [])

    assert raw.conflict == "Consumer Deleted"


def test_a_server_error_fails_the_read() -> None:
    with pytest.raises(ConnectionError, match="Authorization Violation"):
        feed(reader(), b"-ERR 'Authorization Violation'\r\n", [])


class Wire:
    """Collects what the reader writes to the server."""

    def __init__(self) -> None:
        self.sent = b""

    def write(self, data: bytes) -> None:
        self.sent += data


def test_pull_requests_ask_for_no_more_than_the_range_holds() -> None:
    raw = RawPullReader(
        Client(), stream="MAIL_EVENTS", consumer="replay_x", from_seq=3, to_seq=9, batch=5
    )
    wire = Wire()
    raw._writer = wire  # type: ignore[assignment]

    raw._top_up()

    assert wire.sent.count(b"PUB $JS.API.CONSUMER.MSG.NEXT.MAIL_EVENTS.replay_x ") == 2
    assert b'"batch": 5' in wire.sent
    assert b'"batch": 2' in wire.sent  # the range's last two, not another 5
    feed(raw, b"".join(hmsg(b"mail.events.o.email_sent", s, 9, b"x") for s in range(3, 8)), [])
    raw._top_up()
    assert not raw._done
    assert wire.sent.count(b"PUB ") == 2  # the first request is served; nothing more to ask
    feed(raw, status(b"408", b"Request Timeout"), [])  # the rest of the range was deleted
    assert raw._done
