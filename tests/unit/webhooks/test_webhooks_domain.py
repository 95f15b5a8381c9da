"""Pure decisions of webhook delivery: signatures, retries, addresses, the per-email sequence."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks import Webhook

from mailfold.events import EmailComposed, EmailSent, RecordRef, new_id
from mailfold.events.model import Module, Source
from mailfold.webhooks.adapters.http import UnreachableAddress, checked_address
from mailfold.webhooks.domain import signing
from mailfold.webhooks.domain.addresses import first_refusal
from mailfold.webhooks.domain.endpoints import InvalidField, check_url_shape, new_secret, secret_key
from mailfold.webhooks.domain.payload import fold_in
from mailfold.webhooks.domain.retries import (
    DEFAULT_SCHEDULE_S,
    Outcome,
    classify,
    next_delay,
    parse_retry_after,
    parse_schedule,
)

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def test_signatures_verify_with_the_standardwebhooks_package() -> None:
    old, new = new_secret(), new_secret()
    body = b'{"type":"email_sent"}'
    ts = int(datetime.now(UTC).timestamp())
    headers = signing.headers([secret_key(new), secret_key(old)], "msg_1", ts, body)
    assert len(headers["webhook-signature"].split(" ")) == 2
    assert Webhook(old).verify(body, headers) == {"type": "email_sent"}
    assert Webhook(new).verify(body, headers) == {"type": "email_sent"}


def test_a_changed_body_fails_verification() -> None:
    secret = new_secret()
    ts = int(datetime.now(UTC).timestamp())
    headers = signing.headers([secret_key(secret)], "msg_1", ts, b"{}")
    with pytest.raises(Exception, match="signature"):
        Webhook(secret).verify(b'{"x":1}', headers)


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, Outcome.DELIVERED),
        (204, Outcome.DELIVERED),
        (301, Outcome.RETRYING),
        (410, Outcome.DISABLED),
        (500, Outcome.RETRYING),
        (None, Outcome.RETRYING),
    ],
)
def test_only_2xx_delivers(status: int | None, outcome: Outcome) -> None:
    assert classify(status) is outcome


def test_schedule_has_jitter_and_ends() -> None:
    rng = random.Random(7)
    delays = [
        next_delay(n, DEFAULT_SCHEDULE_S, status=500, retry_after=None, rng=rng)
        for n in range(1, 11)
    ]
    for delay, base in zip(delays, DEFAULT_SCHEDULE_S, strict=False):
        assert delay is not None
        assert base * 0.9 <= delay <= base * 1.1
    assert delays[-1] is None  # the tenth attempt was the last


def test_retry_after_is_honoured_on_429_and_503_only() -> None:
    rng = random.Random(1)
    assert next_delay(1, (1.0,), status=429, retry_after=120.0, rng=rng) == 120.0
    assert next_delay(1, (1.0,), status=503, retry_after=60.0, rng=rng) == 60.0
    delay = next_delay(1, (1.0,), status=500, retry_after=120.0, rng=rng)
    assert delay is not None
    assert delay < 2


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert parse_retry_after("30", NOW) == 30.0
    later = (NOW + timedelta(seconds=90)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert parse_retry_after(later, NOW) == 90.0
    assert parse_retry_after("soon", NOW) is None
    assert parse_retry_after("\u00b9", NOW) is None  # a digit to str.isdigit, not a number


def test_schedule_text_parses_units() -> None:
    assert parse_schedule("5s, 5m,2h,1d, 0.5") == (5.0, 300.0, 7200.0, 86400.0, 0.5)
    with pytest.raises(ValueError, match="bad delay"):
        parse_schedule("5x")


@pytest.mark.parametrize(
    "address",
    [
        "10.1.2.3",
        "172.16.0.1",
        "192.168.0.1",
        "127.0.0.1",
        "169.254.169.254",
        "::1",
        "fe80::1",
        "fc00::1",
        "::ffff:10.0.0.1",
        "0.0.0.0",
        "100.64.0.1",
        "224.0.0.1",
    ],
)
def test_private_loopback_and_link_local_addresses_are_refused(address: str) -> None:
    assert first_refusal([address], allow_loopback=False) is not None


def test_public_addresses_pass_and_loopback_only_in_development() -> None:
    assert first_refusal(["93.184.216.34", "2606:2800:220:1::1"], allow_loopback=False) is None
    assert first_refusal(["127.0.0.1"], allow_loopback=True) is None
    assert first_refusal(["93.184.216.34", "10.0.0.1"], allow_loopback=False) is not None


def test_url_shape_requires_https_without_credentials() -> None:
    assert check_url_shape("https://hooks.example.org/x", allow_http=False)
    for url in ("http://hooks.example.org", "https://u:p@hooks.example.org", "ftp://x", "https://"):
        with pytest.raises(InvalidField) as info:
            check_url_shape(url, allow_http=False)
        assert info.value.field == "url"


def _event(email_id: str) -> EmailSent:
    return EmailSent(
        event_id=new_id(),
        org_id="acme",
        email_id=email_id,
        occurred_at=NOW,
        producer="t",
        recipients=("a@example.org",),
    )


def test_per_email_sequence_counts_distinct_events_and_keeps_a_repeat_number() -> None:
    origin = EmailComposed(
        event_id=new_id(),
        org_id="acme",
        email_id="e1",
        occurred_at=NOW,
        producer="t",
        source=Source.INDIVIDUAL,
        from_addr="rep@x.example",
        to=("a@example.org",),
        subject="s",
        records=(RecordRef(record_id="r1", module=Module.LEADS),),
    )
    sent = _event("e1")
    fold, first = fold_in(None, sent)
    fold, second = fold_in(fold, origin)
    again, repeat = fold_in(fold, sent)
    assert (first, second, repeat) == (1, 2, 1)
    assert again is fold
    assert str(fold.state.status) == "Sent"


async def test_plain_http_goes_only_to_loopback_even_in_development() -> None:
    async def public(host: str, port: int) -> list[str]:
        return ["93.184.216.34"]

    async def local(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    with pytest.raises(UnreachableAddress, match="loopback"):
        await checked_address("http://hooks.example.org/x", allow_loopback=True, resolver=public)
    _, address = await checked_address("http://localhost:9/x", allow_loopback=True, resolver=local)
    assert address == "127.0.0.1"
    _, address = await checked_address(
        "https://hooks.example.org/", allow_loopback=False, resolver=public
    )
    assert address == "93.184.216.34"


async def test_a_name_resolving_to_any_private_address_is_refused() -> None:
    async def mixed(host: str, port: int) -> list[str]:
        return ["93.184.216.34", "10.0.0.5"]

    with pytest.raises(UnreachableAddress, match="private"):
        await checked_address("https://rebind.example.org/", allow_loopback=False, resolver=mixed)
