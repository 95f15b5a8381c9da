"""Versioned SQL migrations (`migrations/NNNN_name.sql`), applied once each, under an advisory lock."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Final

from mailfold.projector.adapters.sql import Connection, quote_ident

# Two-key advisory locks of the projector use this first key ("mail"); the second says what for.
LOCK_CLASS: Final = 0x6D61696C
MIGRATION_LOCK: Final = 1
_NAME: Final = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    """One versioned SQL file."""

    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    """Every migration shipped with the package, in version order."""
    found = []
    for entry in resources.files("mailfold.projector").joinpath("migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), entry.name, entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"two migrations share a version: {[m.name for m in found]}")
    return found


async def migrate(conn: Connection) -> list[str]:
    """Apply the migrations not applied yet; returns their names. Safe to run concurrently."""
    applied_now: list[str] = []
    async with conn.transaction():
        # Concurrent migrators wait here, then find the work done.
        await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", LOCK_CLASS, MIGRATION_LOCK)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for migration in migrations():
            if migration.version in done:
                continue
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                migration.version,
                migration.name,
            )
            applied_now.append(migration.name)
    return applied_now


async def create_schema_copy(conn: Connection, schema: str) -> None:
    """A fresh, unlogged copy of the projection's tables in `schema` (for replay)."""
    async with conn.transaction():
        await conn.execute(f"CREATE SCHEMA {quote_ident(schema)}")
        await conn.execute(f"SET LOCAL search_path TO {quote_ident(schema)}")
        for migration in migrations():
            await conn.execute(migration.sql)
        # A scratch copy needs no crash safety: skipping the WAL makes the rebuild faster.
        for table in ("events", "emails", "email_records", "consumer_positions"):
            await conn.execute(f"ALTER TABLE {quote_ident(schema)}.{table} SET UNLOGGED")


async def drop_schema(conn: Connection, schema: str) -> None:
    """Drop a scratch schema and everything in it."""
    await conn.execute(f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE")
