"""Every log line, ours and the libraries', is scrubbed: no secret, no full IP, nothing unbounded."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator

import pytest
import structlog

from mailfold.runtime.logging import configure_logging, get_logger


@pytest.fixture
def logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """JSON logs into a buffer (the configuration binds the stderr it finds)."""
    buffer = io.StringIO()
    monkeypatch.setattr(sys, "stderr", buffer)
    structlog.reset_defaults()
    configure_logging("test", level="info", json=True)
    yield buffer
    logging.basicConfig(force=True, handlers=[logging.NullHandler()])
    structlog.reset_defaults()


def lines(buffer: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines() if line]


def test_aiosmtpd_style_records_lose_the_client_address(logs: io.StringIO) -> None:
    logging.getLogger("mail.log").warning("%r unrecognised: %s", ("203.0.113.77", 37670), "FOO bar")
    logging.getLogger("mail.log").warning("peer %r", ("2001:db8:aa:bb::17", 25, 0, 0))
    first, second = lines(logs)
    assert "203.0.113.77" not in json.dumps(first)
    assert "203.0.113.x" in str(first["event"])
    assert "2001:db8:aa:bb::17" not in json.dumps(second)
    assert "2001:db8:aa::x" in str(second["event"])


def test_secret_keys_tokens_and_bodies_are_never_written(
    logs: io.StringIO,
) -> None:
    log = get_logger("t")
    log.warning(
        "request_failed",
        secret="hunter2",
        body=b'{"secret":"hunter2"}',
        error='UnicodeDecodeError: {"secret":"hunter2\xff"} Bearer mf_acme_abcdefghijklmnopqrstuvwx',
        nested={"password": "hunter2", "ok": 1},
    )
    (line,) = lines(logs)
    text = json.dumps(line)
    assert "hunter2" not in text
    assert "abcdefghijklmnop" not in text
    assert line["nested"] == {"password": "[redacted]", "ok": 1}


def test_every_field_is_bounded(logs: io.StringIO) -> None:
    get_logger("t").error("huge", field="x" * 1_000_000, items=list(range(10_000)))
    try:
        raise ValueError("y" * 100_000)
    except ValueError:
        get_logger("t").exception("boom")
    raw = logs.getvalue().splitlines()
    assert len(raw) == 2
    assert all(len(line.encode()) < 8192 for line in raw)


def test_times_of_day_and_versions_are_left_alone(logs: io.StringIO) -> None:
    get_logger("t").info("tick", at="14:44:50", version="1.2.3")
    (line,) = lines(logs)
    assert (line["at"], line["version"]) == ("14:44:50", "1.2.3")
