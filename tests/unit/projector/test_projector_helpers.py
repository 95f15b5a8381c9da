"""Cursors, row comparison, migrations, token owners, attachment names, the audit text."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailfold.projector.adapters.migrations import migrations
from mailfold.projector.bootstrap import Settings
from mailfold.projector.cli import attachment_name, database_url, nats_url, scratch_name
from mailfold.projector.domain.cursor import InvalidCursor, decode_cursor, encode_cursor
from mailfold.projector.domain.rows import EMAIL_COLUMNS
from mailfold.projector.domain.verify import Difference, diff_row
from mailfold.projector.entrypoints.render import render_audit
from mailfold.runtime.orgs import token_orgs
from mailfold.runtime.settings import DEFAULT_DATABASE_URL, DEFAULT_NATS_URL, ConfigError


@given(
    at=st.datetimes(timezones=st.just(UTC)),
    email_id=st.text(st.characters(exclude_categories=("Cc", "Cs")), min_size=1, max_size=40),
)
def test_a_cursor_gives_back_the_position_it_was_made_from(at: datetime, email_id: str) -> None:
    cursor = encode_cursor(at, email_id)

    assert decode_cursor(cursor) == (at, email_id)
    assert cursor.isascii()


def _forged(document: str) -> str:
    return base64.urlsafe_b64encode(document.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "document",
    [
        '["0001-01-01T00:00:00+14:00","x"]',  # before year 1 once in UTC
        '["9999-12-31T23:00:00-14:00","x"]',  # after year 9999 once in UTC
        '["2026-01-01T00:00:00Z","a\u0000b"]',  # a NUL PostgreSQL cannot compare
    ],
)
def test_a_forged_cursor_out_of_range_is_refused(document: str) -> None:
    with pytest.raises(InvalidCursor):
        decode_cursor(_forged(document))


@pytest.mark.parametrize("cursor", ["", "not-a-cursor", "W10", "!!!!", "eyJhIjoxfQ"])
def test_anything_else_is_not_a_cursor(cursor: str) -> None:
    with pytest.raises(InvalidCursor):
        decode_cursor(cursor)


def test_rows_differ_cell_by_cell_and_a_missing_row_is_one_difference() -> None:
    live = {"status": "Opened", "opens_human": 2, "subject": "Hi"}
    rebuilt = {"status": "Opened", "opens_human": 3, "subject": "Hi"}

    assert diff_row("emails", "e1", live, rebuilt, ["status", "opens_human", "subject"]) == [
        Difference("emails", "e1", "opens_human", 2, 3)
    ]
    assert diff_row("emails", "e1", live, None, ["status"]) == [
        Difference("emails", "e1", "*", "present", "<missing>")
    ]
    assert diff_row("emails", "e1", None, None, ["status"]) == []
    assert Difference("emails", "e1", "opens_human", 2, 3).describe() == (
        "emails e1 opens_human: live=2 rebuilt=3"
    )


def test_migrations_are_numbered_sql_files_in_order_and_create_the_email_columns() -> None:
    found = migrations()

    assert [m.version for m in found] == sorted(m.version for m in found)
    assert found[0].name == "0001_projection.sql"
    every = "\n".join(m.sql for m in found)
    for column in EMAIL_COLUMNS:
        assert f"    {column} " in every or f"ADD COLUMN {column} " in every


def test_a_token_names_the_orgs_it_could_belong_to() -> None:
    assert token_orgs("mf_acme_abc_def") == ["acme", "acme_abc"]
    assert token_orgs("mf_my-org_xyz") == ["my-org"]
    assert token_orgs("Bearer nothing") == []
    assert token_orgs("mf_") == []


def test_attachment_names_stay_inside_their_folder_and_unique() -> None:
    taken: set[str] = set()

    assert attachment_name("../../etc/passwd", taken) == "passwd"
    assert attachment_name("C:\\temp\\report.pdf", taken) == "report.pdf"
    assert attachment_name("report.pdf", taken) == "report-2.pdf"
    assert attachment_name(".hidden", taken) == "hidden"
    assert attachment_name("", taken) == "attachment"
    assert attachment_name("tab\there", taken) == "tab_here"


def test_scratch_schemas_get_fresh_valid_names() -> None:
    first, second = scratch_name(), scratch_name()

    assert first != second
    assert first.startswith("replay_")
    assert first.replace("_", "").isalnum()


def test_settings_come_from_the_environment_with_safe_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("MAILFOLD_PROJECTOR_PORT", "MAILFOLD_PROJECTOR_MAX_BATCH", "MAILFOLD_HTTP_HOST"):
        monkeypatch.delenv(name, raising=False)
    defaults = Settings.from_env()
    assert (defaults.host, defaults.port, defaults.consumer.max_batch) == ("127.0.0.1", 8003, 2000)

    monkeypatch.setenv("MAILFOLD_PROJECTOR_PORT", "9100")
    monkeypatch.setenv("MAILFOLD_PROJECTOR_MAX_BATCH", "500")
    monkeypatch.setenv("MAILFOLD_PROJECTOR_LINGER_S", "0.002")
    configured = Settings.from_env()
    assert configured.port == 9100
    assert configured.consumer.max_batch == 500
    assert configured.consumer.linger == pytest.approx(0.002)

    monkeypatch.setenv("MAILFOLD_PROJECTOR_MAX_BATCH", "many")
    with pytest.raises(ConfigError, match="MAILFOLD_PROJECTOR_MAX_BATCH"):
        Settings.from_env()


def test_the_audit_reads_as_a_table_then_the_state() -> None:
    at = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    email = {
        "email_id": "e1",
        "org_id": "acme",
        "status": "Delivered",
        "subject": "Quarterly review",
        "source": "Individual",
        "direction": "outgoing",
        "from": "rep@crm.example",
        "to": ["ann@example.org"],
        "sent_at": at,
        "delivered_at": at,
        "bounced_at": None,
        "opened_at": None,
        "opens": {"human": 0, "machine": 1},
        "clicked_at": None,
        "clicks": {"human": 0, "machine": 0},
        "received_at": None,
        "deleted_at": None,
        "records": [{"module": "Leads", "record_id": "lead-1"}],
        "events": 3,
        "waiting": 0,
        "violations": 1,
        "bounce": None,
    }
    history = [
        {
            "seq": 1,
            "occurred_at": at,
            "type": "email_composed",
            "decision": "applied",
            "reason": None,
            "detail": "",
        },
        {
            "seq": 12,
            "occurred_at": at,
            "type": "email_opened",
            "decision": "violation",
            "reason": "unreachable_status",
            "detail": "Opened is not reachable",
        },
    ]

    text = render_audit(email, history)
    lines = text.splitlines()

    assert lines[0] == "email e1 (org acme)"
    assert lines[2].split() == ["seq", "time", "(UTC)", "type", "decision", "detail"]
    assert lines[5].split() == [
        "12",
        "2026-03-02",
        "09:00:00",
        "email_opened",
        "violation",
        "(unreachable_status)",
        "Opened",
        "is",
        "not",
        "reachable",
    ]
    assert "  status     Delivered" in text
    assert "  records    Leads:lead-1" in text
    assert "(human 0, machine 1)" in text


def test_commands_find_the_servers_in_the_environment_then_the_dev_stack_then_defaults(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("MAILFOLD_NATS_URL", raising=False)
    monkeypatch.delenv("MAILFOLD_DATABASE_URL", raising=False)
    monkeypatch.setenv("MAILFOLD_DATA_DIR", str(tmp_path))
    assert (nats_url(), database_url()) == (DEFAULT_NATS_URL, DEFAULT_DATABASE_URL)

    (tmp_path / "runtime.json").write_text(
        json.dumps({"nats_url": "nats://127.0.0.1:14222", "database_url": "postgresql://dev/db"})
    )
    assert (nats_url(), database_url()) == ("nats://127.0.0.1:14222", "postgresql://dev/db")

    monkeypatch.setenv("MAILFOLD_NATS_URL", "nats://10.0.0.1:4222")
    monkeypatch.setenv("MAILFOLD_DATABASE_URL", "postgresql://prod/db")
    assert (nats_url(), database_url()) == ("nats://10.0.0.1:4222", "postgresql://prod/db")
