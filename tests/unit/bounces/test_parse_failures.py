"""A failure of the parser itself is never silent: reported with the message's digest."""

from __future__ import annotations

import hashlib
import logging

import pytest

from mailfold.bounces import ParseFailed, parse, parse_strict
from mailfold.bounces import parser as bounce_parser

RAW = b"From: MAILER-DAEMON@mx.example.net\nSubject: failure\n\n<a@example.com>: 550 no such user\n"


@pytest.fixture
def broken(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(raw: bytes, depth: int = 0) -> object:
        raise ValueError("a bug in a reader")

    monkeypatch.setattr(bounce_parser, "_parse", fail)


@pytest.mark.usefixtures("broken")
def test_parse_strict_raises_with_the_digest_of_the_message() -> None:
    with pytest.raises(ParseFailed) as caught:
        parse_strict(RAW)
    assert caught.value.digest == hashlib.sha256(RAW).hexdigest()
    assert isinstance(caught.value.error, ValueError)
    assert caught.value.digest in str(caught.value)


@pytest.mark.usefixtures("broken")
def test_parse_hands_the_failure_to_its_handler_and_reads_the_message_as_unknown() -> None:
    seen: list[ParseFailed] = []
    report = parse(RAW, on_error=seen.append)
    assert (report.format, report.recipients) == ("unknown", ())
    (failure,) = seen
    assert failure.digest == hashlib.sha256(RAW).hexdigest()


@pytest.mark.usefixtures("broken")
def test_without_a_handler_the_failure_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="mailfold.bounces"):
        report = parse(RAW)
    assert report.recipients == ()
    (record,) = caplog.records
    assert record.levelno == logging.ERROR
    assert getattr(record, "sha256", "") == hashlib.sha256(RAW).hexdigest()


def test_a_message_that_is_not_a_bounce_is_not_a_failure() -> None:
    seen: list[ParseFailed] = []
    report = parse(b"Subject: hello\n\njust a note\n", on_error=seen.append)
    assert report.recipients == ()
    assert seen == []
