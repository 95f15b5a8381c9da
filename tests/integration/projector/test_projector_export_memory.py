"""`mailfold export` streams: its memory stays flat from 10k to 100k emails (a bounded measurement)."""

from __future__ import annotations

import tracemalloc
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from nats.aio.client import Client

from mailfold.events import EmailComposed, Module, RecordRef, Source, new_id
from mailfold.events.fold import apply, empty, encode_state
from mailfold.projector.adapters import migrations
from mailfold.projector.cli import export

pytestmark = pytest.mark.timeout(300)


async def _fill(database_url: str, org_id: str, count: int) -> None:
    """`count` emails of the org, written straight into the projection (the fold is not what
    is measured here), each with a state holding its origin as the projector stores it."""
    email_id = new_id()
    origin = EmailComposed(
        event_id=new_id(),
        org_id=org_id,
        email_id=email_id,
        occurred_at=datetime(2026, 6, 1, tzinfo=UTC),
        producer="test",
        source=Source.MASS_EMAIL,
        from_addr="rep@crm.example",
        to=("ann@example.org",),
        subject="Spring newsletter",
        records=(RecordRef(record_id="lead-1", module=Module.LEADS),),
    )
    state = encode_state(apply(empty(email_id), origin))
    conn = await asyncpg.connect(database_url)
    try:
        await migrations.migrate(conn)
        await conn.execute(
            "INSERT INTO emails (email_id, org_id, subject, source, source_display, status,"
            " from_addr, to_addrs, email_at, state, updated_seq)"
            " SELECT $1 || '-' || n, $1, 'Spring newsletter', 'mass_email', 'Mass Email',"
            " 'Delivered', 'rep@crm.example', ARRAY['ann@example.org'],"
            " '2026-06-01'::timestamptz + n * interval '1 second', $2, n"
            " FROM generate_series(1, $3) AS n",
            org_id,
            state,
            count,
        )
    finally:
        await conn.close()


def _rows(csv_file: Path) -> int:
    with csv_file.open(encoding="utf-8") as handle:
        return sum(1 for _ in handle) - 1  # less the header


async def _peak(nc: Client, database_url: str, org_id: str, out: Path) -> tuple[int, int]:
    tracemalloc.start()
    try:
        emails, _, problems = await export(nc, database_url, org_id, out)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert problems == []
    return emails, peak


async def test_export_memory_stays_flat_from_10k_to_100k_emails(
    nc: Client, database_url: str, tmp_path: Path
) -> None:
    small, large = f"s{new_id()[-8:]}", f"l{new_id()[-8:]}"
    await _fill(database_url, small, 10_000)
    await _fill(database_url, large, 100_000)

    for folder in ("small", "large"):
        (tmp_path / folder).mkdir()
    small_count, small_peak = await _peak(nc, database_url, small, tmp_path / "small")
    large_count, large_peak = await _peak(nc, database_url, large, tmp_path / "large")

    assert (small_count, large_count) == (10_000, 100_000)
    assert _rows(tmp_path / "large" / "emails.csv") == 100_000
    print(f"export peak memory: 10k emails {small_peak} B, 100k emails {large_peak} B")

    # Ten times the emails, not ten times the memory: both peaks are the cursor's prefetch and
    # one email's work, whatever the count.
    assert large_peak < 1.5 * small_peak + 1024 * 1024
    assert large_peak < 64 * 1024 * 1024


async def test_export_shows_a_progress_bar_only_when_asked(
    nc: Client, database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    org = f"p{new_id()[-8:]}"
    await _fill(database_url, org, 40)
    for folder in ("bar", "quiet"):
        (tmp_path / folder).mkdir()

    await export(nc, database_url, org, tmp_path / "bar", progress=True)
    shown = capsys.readouterr().err
    await export(nc, database_url, org, tmp_path / "quiet")
    quiet = capsys.readouterr()

    assert "40/40" in shown
    assert "email" in shown
    assert quiet.err == ""
    assert quiet.out == ""
