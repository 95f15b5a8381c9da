"""The projector's operator commands: `mailfold migrate | replay | audit | export`.

The root CLI parses the arguments and calls these with its argparse.Namespace; each returns an
exit code. NATS and PostgreSQL are found in MAILFOLD_NATS_URL / MAILFOLD_DATABASE_URL, else in the
runtime file a running `mailfold dev` wrote, else at the defaults.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import os
import secrets
import sys
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TextIO

import asyncpg
from nats.aio.client import Client
from nats.js.errors import NotFoundError
from nats.js.object_store import ObjectStore
from tqdm import tqdm

from mailfold.events import STREAM, EmailComposed, Origin
from mailfold.events.fold import decode_state
from mailfold.projector.adapters import jetstream, postgres
from mailfold.projector.adapters.leases import MEMBER_CLASS, writer_lock_key
from mailfold.projector.adapters.migrations import (
    LOCK_CLASS,
    create_schema_copy,
    drop_schema,
    migrate,
)
from mailfold.projector.adapters.queries import ProjectionQueries, table_rows
from mailfold.projector.bootstrap import tune_gc
from mailfold.projector.domain.messages import RawMessage
from mailfold.projector.domain.partitions import (
    Bounds,
    MixedLayouts,
    committed_bounds,
    layout,
    parse_consumer,
)
from mailfold.projector.domain.verify import Difference
from mailfold.projector.entrypoints.consumer import FILTER_SUBJECT
from mailfold.projector.entrypoints.render import render_audit
from mailfold.projector.service_layer import views
from mailfold.projector.service_layer.ports import DuplicateEventIds
from mailfold.projector.service_layer.replay import REPLAY_BATCH, ReplayReport, rebuild
from mailfold.projector.service_layer.verify import TableSpec, compare
from mailfold.runtime import bus
from mailfold.runtime.attachments import mime_attachments
from mailfold.runtime.content import get_content
from mailfold.runtime.settings import DEFAULT_DATABASE_URL, DEFAULT_NATS_URL, NatsAuth

LIVE_SCHEMA: Final = "public"
LIVE_CONSUMER: Final = "projector"
REPLAY_CONSUMER: Final = "replay"


# --- where things are ----------------------------------------------------------------------------


def _runtime() -> dict[str, Any]:
    path = Path(os.environ.get("MAILFOLD_DATA_DIR", ".data")) / "runtime.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def nats_url() -> str:
    """MAILFOLD_NATS_URL, else the dev stack's, else the default."""
    return os.environ.get("MAILFOLD_NATS_URL") or _runtime().get("nats_url") or DEFAULT_NATS_URL


def database_url() -> str:
    """MAILFOLD_DATABASE_URL, else the dev stack's, else the default."""
    return (
        os.environ.get("MAILFOLD_DATABASE_URL")
        or _runtime().get("database_url")
        or DEFAULT_DATABASE_URL
    )


def _fail(message: str, code: int = 1) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


# --- migrate -------------------------------------------------------------------------------------


async def _migrate(dsn: str) -> list[str]:
    conn = await postgres.connect(dsn)
    try:
        return await migrate(conn)
    finally:
        await conn.close()


def migrate_command(args: argparse.Namespace) -> int:
    """Apply the projection's migrations (idempotent)."""
    try:
        applied = asyncio.run(_migrate(database_url()))
    except (OSError, asyncpg.PostgresError) as exc:
        return _fail(f"cannot migrate: {exc}")
    if applied:
        for name in applied:
            print(f"applied {name}")
    else:
        print("the database is up to date")
    return 0


# --- replay and verify ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReplayOutcome:
    """A replay's report, and with --verify, every difference found."""

    report: ReplayReport
    schema: str
    differences: list[Difference] | None


def live_consumer() -> str:
    """The live projector's consumer base name (MAILFOLD_PROJECTOR_CONSUMER)."""
    return os.environ.get("MAILFOLD_PROJECTOR_CONSUMER") or LIVE_CONSUMER


async def _within(
    source: AsyncIterable[list[RawMessage]], bounds: Bounds
) -> AsyncIterator[list[RawMessage]]:
    """The messages each partition has committed: every email as far as its partition is."""
    async for messages in source:
        kept = [m for m in messages if bounds.keep(m[0], m[2])]
        if kept:
            yield kept


def scratch_name() -> str:
    """A fresh scratch schema name: `replay_<UTC time>_<random>`."""
    return f"replay_{datetime.now(UTC):%Y%m%d%H%M%S}_{secrets.token_hex(3)}"


async def replay(
    nc: Client,
    dsn: str,
    *,
    from_seq: int = 1,
    to_seq: int | None = None,
    verify: bool = False,
    batch: int = REPLAY_BATCH,
) -> ReplayOutcome:
    """Rebuild into a scratch schema (dropped afterwards); with `verify`, compare with live.

    Verify holds one repeatable-read snapshot of the live projection open: the rebuild stops at
    the position of that snapshot, and the live rows compared are the snapshot's. With several
    partitions, each at its own position, the rebuild folds each message only if its partition
    had committed it in that snapshot.
    """
    schema = scratch_name()
    pool = await postgres.create_pool(dsn, max_size=3)
    live = await postgres.connect(dsn)
    writer_conn = await postgres.connect(dsn)

    bounds: Bounds | None = None

    async def rebuild_into(look_up_ids: bool) -> ReplayReport:
        await create_schema_copy(writer_conn, schema)
        writer = postgres.PgBatchWriter(
            writer_conn, schema=schema, consumer=REPLAY_CONSUMER, stream=STREAM
        )
        await writer.prepare(start=from_seq - 1)
        source = jetstream.ReplaySource(
            nc,
            stream=STREAM,
            filter_subject=FILTER_SUBJECT,
            from_seq=from_seq,
            to_seq=to_seq if to_seq is not None else 2**63 - 1,
            batch=batch,
        )
        async with source:
            return await rebuild(
                source if bounds is None or bounds.count == 1 else _within(source, bounds),
                postgres.PgStateReader(pool, schema),
                writer,
                start_seq=from_seq - 1,
                look_up_ids=look_up_ids,
            )

    try:
        if verify:
            await live.transaction(isolation="repeatable_read", readonly=True).start()
            bounds = committed_bounds(live_consumer(), await postgres.positions(live))
            to_seq = bounds.last
        try:
            report = await rebuild_into(look_up_ids=False)
        except DuplicateEventIds:
            await drop_schema(writer_conn, schema)
            report = await rebuild_into(look_up_ids=True)
        differences = None
        if verify:
            async with pool.acquire() as scratch, scratch.transaction():

                def live_rows(spec: TableSpec) -> AsyncIterator[Any]:
                    return table_rows(live, LIVE_SCHEMA, spec.name, spec.key, spec.columns)

                def rebuilt_rows(spec: TableSpec) -> AsyncIterator[Any]:
                    return table_rows(scratch, schema, spec.name, spec.key, spec.columns)

                differences = await compare(live_rows, rebuilt_rows)
        return ReplayOutcome(report=report, schema=schema, differences=differences)
    finally:
        await live.close()  # ends the snapshot with it
        try:
            await drop_schema(writer_conn, schema)
        finally:
            await writer_conn.close()
            await pool.close()


async def _replay_main(args: argparse.Namespace, out: TextIO) -> int:
    if args.verify and args.from_seq != 1:
        print("error: --verify compares a full rebuild: use --from-seq 1", file=sys.stderr)
        return 2
    nc = await bus.connect(nats_url(), "mailfold-replay", reconnect=False, auth=NatsAuth.from_env())
    try:
        outcome = await replay(
            nc, database_url(), from_seq=args.from_seq, to_seq=args.to_seq, verify=args.verify
        )
    finally:
        await bus.close(nc)
    report = outcome.report
    rate = report.messages / report.seconds if report.seconds else 0.0
    print(
        f"replayed {report.messages} messages up to sequence {report.last_seq} into "
        f"{outcome.schema} in {report.seconds:.2f}s ({rate:,.0f}/s): {report.events} events, "
        f"{report.poison} unusable",
        file=out,
    )
    if outcome.differences is None:
        return 0
    if not outcome.differences:
        print("verify: the live projection equals the rebuild", file=out)
        return 0
    print(f"verify: {len(outcome.differences)} differences", file=out)
    for difference in outcome.differences:
        print(f"  {difference.describe()}", file=out)
    return 1


def replay_command(args: argparse.Namespace) -> int:
    """Rebuild the projection from the stream; `--verify` compares it with the live one."""
    tune_gc()
    try:
        return asyncio.run(_replay_main(args, sys.stdout))
    except (OSError, asyncpg.PostgresError, MixedLayouts) as exc:
        return _fail(f"replay failed: {exc}")


# --- repartition ---------------------------------------------------------------------------------


class ProjectorsRunning(RuntimeError):
    """A projector process holds a lease: the layout cannot change under it."""


@dataclass(frozen=True, slots=True)
class Repartitioned:
    """What `repartition` did: the rows it replaced and where the new partitions start."""

    old: list[str]
    new: list[str]
    position: int


async def repartition(nc: Client, dsn: str, count: int, base: str) -> Repartitioned:
    """Replace the position rows of `base` by those of a layout of `count` partitions.

    The tables do not depend on the layout (each email is folded by whichever partition owns
    it, to the same state), only the positions do. Every new partition starts at the lowest
    old position: every email is folded at least that far, and what a partition reads again
    is a repeat its emails' states already hold (the fold drops it). Refused while any
    projector process holds a lease.
    """
    conn = await postgres.connect(dsn)
    try:
        await migrate(conn)
        stored = await postgres.positions(conn)
        old = sorted(n for n in stored if parse_consumer(base, n) is not None)
        new = [p.consumer for p in layout(base, count)]
        async with conn.transaction():
            # Transaction-scoped copies of every lease: held here, nobody can lead meanwhile.
            busy = await conn.fetchval(
                "SELECT NOT pg_try_advisory_xact_lock($1, hashtext($2))",
                MEMBER_CLASS,
                f"public/{base}/members",
            )
            for name in sorted({*old, *new}):
                busy = busy or await conn.fetchval(
                    "SELECT NOT pg_try_advisory_xact_lock($1, hashtext($2))",
                    LOCK_CLASS,
                    writer_lock_key("public", name),
                )
            if busy:
                raise ProjectorsRunning("a projector is running: stop every projector first")
            position = min((stored[n] for n in old), default=0)
            await conn.execute("DELETE FROM consumer_positions WHERE consumer = ANY($1)", old)
            await conn.executemany(
                "INSERT INTO consumer_positions (consumer, stream, last_seq) VALUES ($1, $2, $3)",
                [(name, STREAM, position) for name in new],
            )
    finally:
        await conn.close()
    js = nc.jetstream()
    for name in old:
        if name not in new:
            with contextlib.suppress(NotFoundError):
                await js.delete_consumer(STREAM, name)
    return Repartitioned(old=old, new=new, position=position)


async def _repartition_main(args: argparse.Namespace, out: TextIO) -> int:
    nc = await bus.connect(
        nats_url(), "mailfold-repartition", reconnect=False, auth=NatsAuth.from_env()
    )
    try:
        done = await repartition(nc, database_url(), args.partitions, live_consumer())
    finally:
        await bus.close(nc)
    print(
        f"repartitioned {', '.join(done.old) or '(no positions yet)'} into {len(done.new)} "
        f"partitions ({', '.join(done.new)}), each starting after sequence {done.position}",
        file=out,
    )
    return 0


def repartition_command(args: argparse.Namespace) -> int:
    """Change the number of projector partitions (every projector stopped)."""
    if args.partitions < 1:
        return _fail("the number of partitions must be at least 1", 2)
    try:
        return asyncio.run(_repartition_main(args, sys.stdout))
    except ProjectorsRunning as exc:
        return _fail(str(exc))
    except (OSError, asyncpg.PostgresError) as exc:
        return _fail(f"repartition failed: {exc}")


# --- audit ---------------------------------------------------------------------------------------


async def _audit(dsn: str, email_id: str, out: TextIO) -> int:
    pool = await postgres.create_pool(dsn, max_size=2)
    try:
        queries = ProjectionQueries(pool)
        row = await queries.email(email_id)
        if row is None:
            return _fail(f"no email {email_id} in the projection")
        detail = views.email_detail(row, await queries.links(email_id))
        history = [views.history_entry(h) for h in await queries.history(email_id)]
    finally:
        await pool.close()
    out.write(render_audit(detail, history))
    return 0


def audit_command(args: argparse.Namespace) -> int:
    """An email's history and state, for a person."""
    try:
        return asyncio.run(_audit(database_url(), args.email_id, sys.stdout))
    except (OSError, asyncpg.PostgresError) as exc:
        return _fail(f"audit failed: {exc}")


# --- export --------------------------------------------------------------------------------------

EXPORT_COLUMNS: Final = (
    "email_id",
    "subject",
    "direction",
    "source",
    "status",
    "from",
    "to",
    "cc",
    "composed_at",
    "sent_at",
    "delivered_at",
    "bounced_at",
    "opened_at",
    "clicked_at",
    "received_at",
    "rejected_at",
    "deleted_at",
    "opens_human",
    "opens_machine",
    "clicks_human",
    "clicks_machine",
    "bounce_kind",
    "bounce_reason",
    "violations",
    "records",
    "attachments",
)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return ";".join(str(v) for v in value)
    return str(value)


def attachment_name(name: str, taken: set[str]) -> str:
    """A safe file name for an attachment (no folders, no dot-files), unique within its email."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1].strip().lstrip(".") or "attachment"
    base = "".join(c if c.isprintable() else "_" for c in base)[:200]
    candidate, n = base, 1
    while candidate in taken:
        n += 1
        stem, dot, ext = base.rpartition(".")
        candidate = f"{stem}-{n}.{ext}" if dot and stem else f"{base}-{n}"
    taken.add(candidate)
    return candidate


def _export_row(row: Any, attachments: Sequence[str]) -> list[str]:
    values = {
        "from": row["from_addr"],
        "to": row["to_addrs"],
        "cc": row["cc_addrs"],
        "source": row["source_display"],
        "violations": row["violation_count"],
        "records": row["records"],
        "attachments": list(attachments),
    }
    return [_cell(values[c] if c in values else row[c]) for c in EXPORT_COLUMNS]


def _write_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


@dataclass(slots=True)
class ExportTally:
    """What an export wrote, and what it could not."""

    emails: int = 0
    files: int = 0
    problems: list[str] = field(default_factory=list)


async def _email_files(
    store: ObjectStore, origin: Origin | None, email_id: str, out: Path, tally: ExportTally
) -> list[str]:
    """Write one email's attachments under `attachments/<email_id>/`; their relative paths.

    A composed email's attachments are objects of their own; received and captured mail (BCC
    dropbox copies, mailbox mail) keeps only its raw message, and its attachments are taken out
    of that.
    """
    if origin is None:
        return []
    files: list[tuple[str, bytes]] = []
    if isinstance(origin, EmailComposed):
        for attachment in origin.attachments:
            try:
                files.append((attachment.name, await get_content(store, attachment.sha256)))
            except Exception as exc:  # missing or corrupt: say so, keep going
                tally.problems.append(
                    f"{email_id}: attachment {attachment.name!r} "
                    f"({attachment.sha256}): {exc or type(exc).__name__}"
                )
    elif origin.raw is not None:
        try:
            raw = await get_content(store, origin.raw.sha256)
        except Exception as exc:
            tally.problems.append(
                f"{email_id}: raw message ({origin.raw.sha256}): {exc or type(exc).__name__}"
            )
            raw = b""
        files.extend((a.name, a.data) for a in mime_attachments(raw))
    names: list[str] = []
    taken: set[str] = set()
    for name, data in files:
        safe = attachment_name(name, taken)
        _write_file(out / "attachments" / email_id / safe, data)
        names.append(f"attachments/{email_id}/{safe}")
        tally.files += 1
    return names


async def export(
    nc: Client, dsn: str, org_id: str, out: Path, *, progress: bool = False
) -> tuple[int, int, list[str]]:
    """Write the org's emails to `out/emails.csv` and their attachments beside it.

    Streams: one email at a time from a database cursor, so memory stays flat however large the
    org. Returns (emails, attachments written, problems): an attachment missing from the object
    store is a problem reported, not a reason to stop. `progress` shows a bar on stderr.
    """
    store = await bus.objects(nc.jetstream())
    pool = await postgres.create_pool(dsn, max_size=2)
    tally = ExportTally()
    try:
        queries = ProjectionQueries(pool)
        total = await queries.org_email_count(org_id) if progress else None
        with (
            (out / "emails.csv").open("w", newline="", encoding="utf-8") as handle,
            tqdm(total=total, unit="email", disable=not progress, file=sys.stderr) as bar,
        ):
            writer = csv.writer(handle)
            writer.writerow(EXPORT_COLUMNS)
            async for row in queries.org_emails(org_id):
                tally.emails += 1
                origin = decode_state(row["state"]).origin
                names = await _email_files(store, origin, row["email_id"], out, tally)
                writer.writerow(_export_row(row, names))
                bar.update(1)
    finally:
        await pool.close()
    return tally.emails, tally.files, tally.problems


async def _export_main(args: argparse.Namespace) -> int:
    nc = await bus.connect(nats_url(), "mailfold-export", reconnect=False, auth=NatsAuth.from_env())
    try:
        emails, files, problems = await export(
            nc, database_url(), args.org, Path(args.out), progress=sys.stderr.isatty()
        )
    finally:
        await bus.close(nc)
    print(f"exported {emails} emails and {files} attachments to {args.out}")
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)
    return 1 if problems else 0


def export_command(args: argparse.Namespace) -> int:
    """All emails of an org to emails.csv, attachments beside it."""
    try:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        return asyncio.run(_export_main(args))
    except (OSError, asyncpg.PostgresError) as exc:
        return _fail(f"export failed: {exc}")
