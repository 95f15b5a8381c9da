"""The AsyncAPI document is FastStream's, generated from the services' declared brokers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mailfold.cli.asyncapi import asyncapi_document
from mailfold.events import EVENT_TYPES
from mailfold.sender.entrypoints import consumer

COMMITTED = Path(__file__).parents[2] / "docs" / "asyncapi.json"


def _operations(doc: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """operation name -> (action, subject)."""
    out = {}
    for name, op in doc["operations"].items():
        channel = doc["channels"][op["channel"]["$ref"].rsplit("/", 1)[1]]
        out[name] = (op["action"], channel["address"])
    return out


def test_the_generated_document_is_the_committed_one() -> None:
    # A changed subscriber or publisher changes the document: regenerate and commit it with
    # `mailfold schema --asyncapi > docs/asyncapi.json`.
    assert asyncapi_document() == json.loads(COMMITTED.read_text())


def test_each_channel_names_who_publishes_and_who_consumes_it() -> None:
    ops = _operations(asyncapi_document())
    assert ops["sender:email_composed"] == ("receive", "mail.events.*.email_composed")
    assert ops["ingest:email_composed"] == ("send", "mail.events.*.email_composed")
    assert ops["tracker:email_opened"] == ("send", "mail.events.*.email_opened")
    assert ops["projector:projector"] == ("receive", "mail.events.>")
    assert ops["webhooks:webhooks"] == ("receive", "mail.events.>")
    assert ops["webhooks:jobs"] == ("send", "webhooks.jobs.*.*")
    assert ops["mailbox:email_received"] == ("send", "mail.events.*.email_received")
    assert ops["mailbox:email_deleted"] == ("send", "mail.events.*.email_deleted")
    assert {op for op, (action, _) in ops.items() if action == "send"} >= {
        f"sender:{t}" for t in ("email_sent", "email_delivered", "email_deferred", "email_bounced")
    }
    published = {
        subject.rsplit(".", 1)[1]
        for action, subject in ops.values()
        if action == "send" and subject.startswith("mail.events.")
    }
    # Every event type has a producer (deletions come from the mailbox sync).
    assert published == set(EVENT_TYPES)


def test_a_changed_subscription_no_longer_matches_the_committed_document(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(consumer, "FILTER_SUBJECT", "mail.events.*.email_received")
    changed = asyncapi_document()
    assert changed != json.loads(COMMITTED.read_text())
    assert _operations(changed)["sender:email_composed"] == (
        "receive",
        "mail.events.*.email_received",
    )
