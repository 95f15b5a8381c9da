"""Partition leases in PostgreSQL: session advisory locks held by one connection per process.

A process holds, on its own lease session, a shared membership lock of the projection (one per
schema and consumer base name; every live process holds it, so counting its holders counts the
live processes) and the exclusive writer lock of each partition it runs (per schema and partition
consumer, the same key a single projector always used). A process that dies loses its session,
and PostgreSQL frees every lock it held: its partitions are free for the others at once.
`pg_locks` is readable by every role, so no privilege beyond connecting is needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import asyncpg

from mailfold.projector.adapters.migrations import LOCK_CLASS
from mailfold.projector.domain.partitions import Partition

MEMBER_CLASS: Final = 0x6D656D62  # "memb": the membership lock's first key

_PICTURE_SQL: Final = """
SELECT pid, classid::bigint AS k1, objid::bigint AS k2, mode FROM pg_locks
WHERE locktype = 'advisory' AND granted AND objsubid = 2
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND classid::bigint = ANY($1::bigint[])
"""


def writer_lock_key(schema: str, consumer: str) -> str:
    """The text hashed into a partition's writer lock (unchanged from the single projector)."""
    return f"{schema}/{consumer}"


@dataclass(frozen=True, slots=True)
class Picture:
    """Who is alive and who holds which partition, as the lease session sees it now."""

    me: int
    members: list[int] = field(default_factory=list)
    holders: dict[int, int] = field(default_factory=dict)  # partition index -> holder


class PgLeases:
    """The lease session of one process."""

    def __init__(
        self, conn: asyncpg.Connection, *, schema: str, base: str, partitions: Sequence[Partition]
    ) -> None:
        self._conn = conn
        self._schema = schema
        self._base = base
        self._partitions = list(partitions)
        self._keys: dict[int, int] = {}  # partition index -> hashtext of its key
        self._member_key = 0
        self.me = 0

    @property
    def connection(self) -> asyncpg.Connection:
        """The lease session (closing it gives every lease back)."""
        return self._conn

    async def join(self) -> None:
        """Hold the membership lock; learn the lock keys and this session's id."""
        texts = [writer_lock_key(self._schema, p.consumer) for p in self._partitions]
        member_text = f"{self._schema}/{self._base}/members"
        rows = await self._conn.fetch(
            "SELECT i, hashtext(t) AS h FROM unnest($1::text[]) WITH ORDINALITY AS u(t, i)",
            [*texts, member_text],
        )
        hashes = [int(r["h"]) for r in sorted(rows, key=lambda r: int(r["i"]))]
        self._keys = {p.index: h for p, h in zip(self._partitions, hashes, strict=False)}
        self._member_key = hashes[-1]
        await self._conn.execute(
            "SELECT pg_advisory_lock_shared($1, $2)", MEMBER_CLASS, self._member_key
        )
        self.me = int(await self._conn.fetchval("SELECT pg_backend_pid()"))

    async def picture(self) -> Picture:
        """The live processes (their lease sessions) and the holders of the partitions."""
        rows = await self._conn.fetch(_PICTURE_SQL, [LOCK_CLASS, MEMBER_CLASS])
        by_key = {h & 0xFFFFFFFF: i for i, h in self._keys.items()}
        member = self._member_key & 0xFFFFFFFF
        picture = Picture(me=self.me)
        for row in rows:
            if row["k1"] == MEMBER_CLASS and row["k2"] == member and row["mode"] == "ShareLock":
                picture.members.append(int(row["pid"]))
            elif row["k1"] == LOCK_CLASS and row["mode"] == "ExclusiveLock":
                index = by_key.get(int(row["k2"]))
                if index is not None:
                    picture.holders[index] = int(row["pid"])
        picture.members.sort()
        return picture

    async def try_take(self, index: int) -> bool:
        """Take a partition's writer lock if nobody holds it."""
        taken = await self._conn.fetchval(
            "SELECT pg_try_advisory_lock($1, $2)", LOCK_CLASS, self._keys[index]
        )
        return bool(taken)

    async def give_back(self, index: int) -> None:
        """Free a partition's writer lock (its worker has stopped)."""
        await self._conn.execute("SELECT pg_advisory_unlock($1, $2)", LOCK_CLASS, self._keys[index])
