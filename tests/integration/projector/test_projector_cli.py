"""The operator's commands through the real `mailfold` CLI: migrate, replay --verify, audit, export."""

from __future__ import annotations

import asyncio
import csv
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg
import pytest
from nats.aio.client import Client

from mailfold.cli.embedded import EmbeddedNats
from mailfold.cli.main import main as mailfold
from mailfold.events import AnyEvent, AttachmentRef, EmailComposed, new_id
from mailfold.projector.adapters.migrations import migrations
from mailfold.projector.entrypoints.consumer import ConsumerSettings
from mailfold.runtime import bus
from mailfold.runtime.content import put_content

if TYPE_CHECKING:
    from tests.integration.projector.conftest import Mail, StartProjector

from tests.integration.projector.conftest import last_seq, publish, wait_for_position


@pytest.fixture(autouse=True)
def environment(
    monkeypatch: pytest.MonkeyPatch, fresh_nats: EmbeddedNats, database_url: str, tmp_path: Path
) -> None:
    """The CLI finds the test's servers in the environment (and no dev stack's runtime file)."""
    monkeypatch.setenv("MAILFOLD_NATS_URL", fresh_nats.url)
    monkeypatch.setenv("MAILFOLD_DATABASE_URL", database_url)
    monkeypatch.setenv("MAILFOLD_DATA_DIR", str(tmp_path / "no-dev-stack"))


async def run(*argv: str) -> int:
    """`mailfold <argv>` in a thread (the commands run their own event loop)."""
    return await asyncio.to_thread(mailfold, list(argv))


async def projected(
    nc: Client, mail: Mail, database_url: str, start_projector: StartProjector, emails: int = 12
) -> list[AnyEvent]:
    """Emails of every kind published and folded by a projector that is stopped again."""
    events: list[AnyEvent] = []
    for n in range(emails):
        events.extend(mail.life(new_id(), n))
    # One email whose facts come before its origin.
    late = new_id()
    origin, *facts = mail.life(late, 0)
    events.extend([*facts, origin])
    js = nc.jetstream()
    async with start_projector(consumer=ConsumerSettings(max_batch=7, cache_size=5)):
        await publish(js, events)
        await js.publish(f"mail.events.{mail.org_id}.email_sent", b"poison")
        await wait_for_position(database_url, await last_seq(js))
    return events


async def test_migrate_applies_once_and_again_is_a_no_op(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await run("migrate") == 0
    assert "applied 0001_projection.sql" in capsys.readouterr().out
    results = await asyncio.gather(run("migrate"), run("migrate"))
    assert list(results) == [0, 0]
    assert capsys.readouterr().out.count("the database is up to date") == 2
    conn = await asyncpg.connect(database_url)
    try:
        applied = await conn.fetchval("SELECT count(*) FROM schema_migrations")
        assert applied == len(migrations())
    finally:
        await conn.close()


async def test_replay_verify_passes_on_the_live_projection_and_leaves_nothing_behind(
    nc: Client,
    mail: Mail,
    database_url: str,
    start_projector: StartProjector,
    capsys: pytest.CaptureFixture[str],
) -> None:
    events = await projected(nc, mail, database_url, start_projector)

    assert await run("replay", "--verify") == 0

    out = capsys.readouterr().out
    assert f"replayed {len(events) + 1} messages up to sequence {len(events) + 1}" in out
    assert "1 unusable" in out
    assert "verify: the live projection equals the rebuild" in out
    conn = await asyncpg.connect(database_url)
    try:
        schemas = await conn.fetch("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'replay_%'")
        assert schemas == []
    finally:
        await conn.close()


async def test_replay_verify_fails_naming_every_altered_row(
    nc: Client,
    mail: Mail,
    database_url: str,
    start_projector: StartProjector,
    capsys: pytest.CaptureFixture[str],
) -> None:
    events = await projected(nc, mail, database_url, start_projector)
    email_id = events[0].email_id
    opened = next(e for e in events if e.event_type == "email_opened")
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("UPDATE emails SET subject = 'tampered' WHERE email_id = $1", email_id)
        await conn.execute(
            "UPDATE events SET decision = 'waiting' WHERE event_id = $1", opened.event_id
        )
        await conn.execute("DELETE FROM email_records WHERE email_id = $1", email_id)
    finally:
        await conn.close()

    assert await run("replay", "--verify") == 1

    out = capsys.readouterr().out
    assert "verify: 3 differences" in out
    assert f"emails {email_id} subject: live='tampered' rebuilt='Quarterly review'" in out
    assert f"events {opened.event_id} decision: live='waiting' rebuilt='applied'" in out
    assert f"email_records {email_id}/Leads/lead-1 *: live='<missing>' rebuilt='present'" in out


async def test_replay_rebuilds_a_range_of_the_stream(
    nc: Client,
    mail: Mail,
    database_url: str,
    start_projector: StartProjector,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await projected(nc, mail, database_url, start_projector, emails=4)

    assert await run("replay", "--from-seq", "3", "--to-seq", "9") == 0
    assert "replayed 7 messages up to sequence 9" in capsys.readouterr().out
    assert await run("replay", "--from-seq", "2", "--verify") == 2
    assert "--from-seq 1" in capsys.readouterr().err


async def test_audit_prints_the_history_and_the_state_for_a_person(
    nc: Client,
    mail: Mail,
    database_url: str,
    start_projector: StartProjector,
    capsys: pytest.CaptureFixture[str],
) -> None:
    events = await projected(nc, mail, database_url, start_projector)
    multi = next(e for e in events if isinstance(e, EmailComposed) and len(e.to) > 1)
    capsys.readouterr()  # the projector's own log lines

    assert await run("audit", multi.email_id) == 0

    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"email {multi.email_id} (org {mail.org_id})"
    assert lines[2].split()[:5] == ["seq", "time", "(UTC)", "type", "decision"]
    rows = [line.split() for line in lines[4:8]]
    assert [row[3] for row in rows] == [
        "email_composed",
        "email_sent",
        "email_delivered",
        "email_opened",
    ]
    assert rows[3][4:6] == ["violation", "(unreachable_status)"]
    assert "  status     Delivered" in lines
    assert await run("audit", "no-such-email") == 1


async def test_export_writes_the_orgs_emails_and_their_attachments(
    nc: Client,
    mail: Mail,
    database_url: str,
    start_projector: StartProjector,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    store = await bus.objects(nc.jetstream())
    report = await put_content(store, b"%PDF-1.7 quarterly numbers", "application/pdf")
    logo = await put_content(store, b"\x89PNG logo", "image/png")
    attachments = (
        AttachmentRef(sha256=report.sha256, size=report.size, name="report.pdf"),
        AttachmentRef(sha256=logo.sha256, size=logo.size, name="../logo.png", from_template=True),
    )
    with_files = new_id()
    events = await projected(nc, mail, database_url, start_projector, emails=3)
    async with start_projector():
        await publish(nc.jetstream(), [mail.composed(with_files, attachments=attachments)])
        await wait_for_position(database_url, await last_seq(nc.jetstream()))
    out = tmp_path / "export"

    assert await run("export", mail.org_id, "--out", str(out)) == 0

    with (out / "emails.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {r["email_id"] for r in rows} == {e.email_id for e in events} | {with_files}
    row = next(r for r in rows if r["email_id"] == with_files)
    assert row["attachments"] == (
        f"attachments/{with_files}/report.pdf;attachments/{with_files}/logo.png"
    )
    assert row["records"] == "Leads:lead-1"
    assert row["source"] == "Individual"
    assert (out / "attachments" / with_files / "report.pdf").read_bytes() == (
        b"%PDF-1.7 quarterly numbers"
    )
    assert (out / "attachments" / with_files / "logo.png").read_bytes() == b"\x89PNG logo"
    assert "exported 5 emails and 2 attachments" in capsys.readouterr().out


async def test_export_reports_an_attachment_missing_from_the_store_and_keeps_going(
    nc: Client,
    mail: Mail,
    database_url: str,
    start_projector: StartProjector,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    missing = AttachmentRef(sha256="0" * 64, size=3, name="gone.txt")
    email_id = new_id()
    async with start_projector():
        await publish(nc.jetstream(), [mail.composed(email_id, attachments=(missing,))])
        await wait_for_position(database_url, 1)

    assert await run("export", mail.org_id, "--out", str(tmp_path / "out")) == 1

    captured = capsys.readouterr()
    assert "exported 1 emails and 0 attachments" in captured.out
    assert f"warning: {email_id}: attachment 'gone.txt'" in captured.err
    assert (tmp_path / "out" / "emails.csv").exists()
