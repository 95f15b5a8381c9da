"""The logs of the whole e2e run: no line holds a token, a secret, a client's address or > 8 KB.

The conftest runs this module last, after every other test of the run has driven the stack
(bad input, fuzzing, secrets written through the API).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

MAX_LINE = 8 * 1024
SERVICES = {"ingest", "sender", "tracker", "projector"}
TOKEN = re.compile(r"mf_[a-z0-9][a-z0-9_-]*_[A-Za-z0-9_-]{16,}")
FULL_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w.])")
# Secrets the tests write through the API (ingest mailboxes).
SECRETS = ("hunter2-mailbox-secret-0f9c", "not-a-real-secret")


def _lines(path: Path) -> list[tuple[int, bytes]]:
    return list(enumerate(path.read_bytes().split(b"\n"), start=1))


def test_no_log_line_holds_a_token_a_secret_a_client_address_or_more_than_8_kb(
    stack: Any,
) -> None:
    service_logs = sorted((stack.data / "logs").glob("*.log"))
    assert {p.stem for p in service_logs} >= SERVICES
    checked = 0
    for path in [*service_logs, stack.data / "dev.out"]:
        for number, raw in _lines(path):
            where = f"{path.name}:{number}"
            assert len(raw) <= MAX_LINE, f"{where} is {len(raw)} bytes"
            line = raw.decode("utf-8", "replace")
            assert stack.token not in line, where
            assert not TOKEN.search(line), f"{where}: {line[:200]}"
            assert not any(secret in line for secret in SECRETS), where
            if path.stem in SERVICES:
                # The supervisor and the dev MX name where they listen; services name no address.
                assert not FULL_IPV4.search(line), f"{where}: {line[:200]}"
            checked += 1
    assert checked > 0
