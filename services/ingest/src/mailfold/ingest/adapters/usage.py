"""The record attachment usage port: on the NATS KV directory bucket, and in memory for tests.

Key `<org>.usage.<record_id>` in `mailfold_directory` holds a record's RecordUsage as JSON; every
write is a compare-and-set on the revision read, so racing composes never both take the last
bytes of a quota.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import msgspec
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from mailfold.ingest.domain.quota import (
    Charge,
    RecordUsage,
    added_templates,
    apply_charge,
    refund,
)
from mailfold.runtime.bus import key_token

_MAX_RACES: Final = 200
_dec: Final = msgspec.json.Decoder(RecordUsage)
_enc: Final = msgspec.json.Encoder()


def usage_key(org_id: str, record_id: str) -> str:
    """`<org>.usage.<record_id>` in mailfold_directory."""
    return f"{org_id}.usage.{key_token(record_id)}"


def _charged(
    usage: RecordUsage, charge: Charge, limit: int | None
) -> tuple[RecordUsage, tuple[str, ...]] | None:
    updated = apply_charge(usage, charge)
    if limit is not None and updated.total > limit and updated.total > usage.total:
        return None
    return updated, added_templates(usage, charge)


class KvAttachmentUsage:
    """The UsageLedger port on the directory KV bucket."""

    def __init__(self, bucket: KeyValue) -> None:
        self._kv = bucket

    async def _read(self, key: str) -> tuple[RecordUsage, int | None]:
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError:
            return RecordUsage(), None
        if not entry.value or entry.revision is None:
            return RecordUsage(), entry.revision
        return _dec.decode(entry.value), entry.revision

    async def _write(self, key: str, usage: RecordUsage, revision: int | None) -> bool:
        try:
            if revision is None:
                await self._kv.create(key, _enc.encode(usage))
            else:
                await self._kv.update(key, _enc.encode(usage), last=revision)
        except KeyWrongLastSequenceError:
            return False
        except Exception:  # create() on a key another writer just made: read it again
            if revision is None:
                return False
            raise
        return True

    async def usage(self, org_id: str, record_id: str) -> RecordUsage:
        return (await self._read(usage_key(org_id, record_id)))[0]

    async def charge(
        self, org_id: str, record_id: str, charge: Charge, *, limit: int | None
    ) -> tuple[RecordUsage, tuple[str, ...]] | None:
        key = usage_key(org_id, record_id)
        for _ in range(_MAX_RACES):
            usage, revision = await self._read(key)
            result = _charged(usage, charge, limit)
            if result is None:
                return None
            if result[0] == usage or await self._write(key, result[0], revision):
                return result
        raise RuntimeError(f"attachment usage of {record_id!r} kept changing; giving up")

    async def refund(
        self, org_id: str, record_id: str, charge: Charge, added: Sequence[str]
    ) -> None:
        key = usage_key(org_id, record_id)
        for _ in range(_MAX_RACES):
            usage, revision = await self._read(key)
            updated = refund(usage, charge, added)
            if updated == usage or await self._write(key, updated, revision):
                return
        raise RuntimeError(f"attachment usage of {record_id!r} kept changing; giving up")


class MemoryAttachmentUsage:
    """The same behaviour in a dict."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], RecordUsage] = {}

    async def usage(self, org_id: str, record_id: str) -> RecordUsage:
        return self.records.get((org_id, record_id), RecordUsage())

    async def charge(
        self, org_id: str, record_id: str, charge: Charge, *, limit: int | None
    ) -> tuple[RecordUsage, tuple[str, ...]] | None:
        result = _charged(await self.usage(org_id, record_id), charge, limit)
        if result is not None:
            self.records[(org_id, record_id)] = result[0]
        return result

    async def refund(
        self, org_id: str, record_id: str, charge: Charge, added: Sequence[str]
    ) -> None:
        usage = await self.usage(org_id, record_id)
        self.records[(org_id, record_id)] = refund(usage, charge, added)
