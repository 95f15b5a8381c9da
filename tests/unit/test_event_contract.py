"""The wire contract: stored JSON of every event type keeps decoding; schema and subjects hold."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from mailfold.events import (
    EVENT_CLASSES,
    EVENT_TYPES,
    EmailOpened,
    decode,
    encode,
    event_subject,
    json_schema,
    new_id,
    publish_headers,
)
from mailfold.events.ids import id_time_ms

FIXTURES = Path(__file__).parent.parent / "fixtures" / "events"
STORED = sorted(FIXTURES.glob("v*/*.json"))


def test_there_is_a_stored_fixture_for_every_event_type() -> None:
    assert {p.stem for p in FIXTURES.glob("v1/*.json")} == set(EVENT_TYPES)


@pytest.mark.parametrize("path", STORED, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_stored_event_json_keeps_decoding(path: Path) -> None:
    raw = path.read_bytes()
    event = decode(raw)
    assert event.event_type == path.stem
    # Re-encoding keeps every stored field with its value: fields are never renamed or retyped.
    again = json.loads(encode(event))
    stored = json.loads(raw)
    assert {k: again[k] for k in stored} == stored


def test_an_event_without_fields_added_later_still_decodes_with_defaults() -> None:
    minimal = {
        "type": "email_opened",
        "event_id": "e1",
        "org_id": "acme",
        "email_id": "m1",
        "occurred_at": "2026-03-01T09:00:00Z",
        "producer": "old",
        "recipient": "ann@example.org",
    }
    event = decode(json.dumps(minimal))
    assert isinstance(event, EmailOpened)
    assert event.verdict == "human"
    assert event.label == ""


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"occurred_at": "2026-03-01T09:00:00"}, "occurred_at"),
        ({"org_id": "Acme Corp"}, "org_id"),
        ({"type": "email_teleported"}, "type"),
        ({"reply_code": 999}, "reply_code"),
    ],
)
def test_invalid_events_are_refused_naming_the_field(patch: dict[str, object], field: str) -> None:
    stored = json.loads((FIXTURES / "v1" / "email_delivered.json").read_text())
    stored.update(patch)
    with pytest.raises(msgspec.ValidationError, match=field):
        decode(json.dumps(stored))


def test_the_json_schema_covers_every_event_type() -> None:
    schema = json_schema()
    defs = schema["$defs"]
    assert isinstance(defs, dict)
    assert {c.__name__ for c in EVENT_CLASSES} <= set(defs)


def test_subjects_and_dedup_headers_follow_the_contract() -> None:
    event = decode((FIXTURES / "v1" / "email_opened.json").read_bytes())
    assert event_subject(event) == "mail.events.acme.email_opened"
    assert publish_headers(event) == {"Nats-Msg-Id": event.event_id}


def test_new_ids_are_uuid7_and_sort_by_time() -> None:
    a, b = new_id(1_700_000_000_000), new_id(1_700_000_000_001)
    assert a[14] == "7"
    assert a < b
    assert id_time_ms(a) == 1_700_000_000_000
    assert len({new_id() for _ in range(1000)}) == 1000


def test_strings_on_the_wire_never_hold_nul_or_lone_surrogates() -> None:
    minimal = {
        "type": "email_opened",
        "event_id": "e1",
        "org_id": "acme",
        "email_id": "m1",
        "occurred_at": "2026-03-01T09:00:00Z",
        "producer": "old",
        "recipient": "ann@example.org",
    }
    event = decode(json.dumps(minimal))
    assert isinstance(event, EmailOpened)
    with_nul = msgspec.structs.replace(event, label="a\x00b", user_agent="x\udc80y")

    data = encode(with_nul)

    assert b"\\u0000" not in data
    again = decode(data)
    assert isinstance(again, EmailOpened)
    assert again.label == "a\ufffdb"
    assert again.user_agent == "x?y"
    # a backslash followed by "u0000" is text, not a NUL, and stays as it was
    kept = decode(encode(msgspec.structs.replace(event, label="C:\\u0000")))
    assert isinstance(kept, EmailOpened)
    assert kept.label == "C:\\u0000"
