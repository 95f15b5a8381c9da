"""The delivery ledger in the NATS KV bucket `mailfold_sender`, every write a compare-and-set.

Keys (`<id>` is the email id, or `=` and its key_token when it holds characters a key may not):
- `<org>.sent.<id>.<addr>`: a recipient's mark (attempting, deferred, done)
- `<org>.admit.<id>`: a mass email's pinned day and admission decision
- `<org>.mass.<campaign>.<addr>`: the email that mails this address in this campaign
- `<org>.limit.<day>`: the day's mass-email counter, `{"n": taken, "last": email id}`
- `<org>.limit.<day>.<id>`: this email holds one of the day's slots
- `verp.<ref>`: what an email's VERP reference stands for (see mailfold.events.tokens)

The daily limit is exact and idempotent with several sender copies: a slot is taken by one
compare-and-set of the counter that also names the email taking it, and the email's own key is
written after. Whoever next moves the counter first writes the previous taker's key (it may have
died between the two writes), so every increment has exactly one email key, and an email with a
key never takes a second slot.
"""

from __future__ import annotations

import asyncio
import random
import re
from datetime import date
from typing import Final

import msgspec
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from mailfold.events import VerpRecord
from mailfold.runtime import bus
from mailfold.runtime.bus import key_token
from mailfold.runtime.directory import save_verp_record
from mailfold.sender.domain import rules
from mailfold.sender.domain.state import Admission, RecipientMark

_SAFE_ID: Final = re.compile(r"^[A-Za-z0-9_-]+$")
_MAX_RACES: Final = 1000


class _Counter(msgspec.Struct, frozen=True):
    n: int = 0
    last: str = ""


_enc = msgspec.json.Encoder()
_mark_dec = msgspec.json.Decoder(RecipientMark)
_admission_dec = msgspec.json.Decoder(Admission)
_counter_dec = msgspec.json.Decoder(_Counter)


def id_part(email_id: str) -> str:
    """An email id as one KV key token (ids may hold '.' and ':', which keys may not)."""
    return email_id if _SAFE_ID.match(email_id) else "=" + key_token(email_id)


def mark_key(org_id: str, email_id: str, recipient: str) -> str:
    return f"{org_id}.sent.{id_part(email_id)}.{key_token(recipient)}"


def admission_key(org_id: str, email_id: str) -> str:
    return f"{org_id}.admit.{id_part(email_id)}"


def campaign_key(org_id: str, campaign: str, address: str) -> str:
    return f"{org_id}.mass.{campaign}.{key_token(address)}"


def counter_key(org_id: str, day: date) -> str:
    return f"{org_id}.limit.{day.isoformat()}"


def slot_key(org_id: str, day: date, email_id: str) -> str:
    return f"{org_id}.limit.{day.isoformat()}.{id_part(email_id)}"


class KvLedger:
    """The Ledger port on a JetStream KV bucket."""

    def __init__(self, bucket: KeyValue) -> None:
        self._kv = bucket

    async def _get(self, key: str) -> tuple[bytes, int] | None:
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError:
            return None
        if entry.value is None or entry.revision is None:
            return None
        return entry.value, entry.revision

    async def _write(self, key: str, value: bytes, last: int | None) -> int | None:
        """Create (`last` None) or compare-and-set; None when another write came first. Sent
        through the connection's AckedPublisher: every email writes several keys."""
        try:
            if last is None:
                return await bus.kv_create(self._kv, key, value)
            return await bus.kv_put(self._kv, key, value, last=last)
        except KeyWrongLastSequenceError:
            return None

    async def remember_verp(self, record: VerpRecord) -> None:
        await save_verp_record(self._kv, record)

    async def mark(
        self, org_id: str, email_id: str, recipient: str
    ) -> tuple[RecipientMark, int] | None:
        found = await self._get(mark_key(org_id, email_id, recipient))
        return None if found is None else (_mark_dec.decode(found[0]), found[1])

    async def put_mark(
        self, org_id: str, email_id: str, recipient: str, mark: RecipientMark, *, last: int | None
    ) -> int | None:
        return await self._write(mark_key(org_id, email_id, recipient), _enc.encode(mark), last)

    async def admission(self, org_id: str, email_id: str) -> tuple[Admission, int] | None:
        found = await self._get(admission_key(org_id, email_id))
        return None if found is None else (_admission_dec.decode(found[0]), found[1])

    async def pin_admission(
        self, org_id: str, email_id: str, admission: Admission
    ) -> tuple[Admission, int]:
        key = admission_key(org_id, email_id)
        for _ in range(_MAX_RACES):
            revision = await self._write(key, _enc.encode(admission), None)
            if revision is not None:
                return admission, revision
            found = await self.admission(org_id, email_id)
            if found is not None:
                return found
        raise RuntimeError(f"admission of {email_id} kept changing")  # pragma: no cover

    async def decide_admission(
        self, org_id: str, email_id: str, admission: Admission, *, last: int
    ) -> bool:
        key = admission_key(org_id, email_id)
        return await self._write(key, _enc.encode(admission), last) is not None

    async def claim_address(self, org_id: str, campaign: str, address: str, email_id: str) -> bool:
        key = campaign_key(org_id, campaign, address)
        for _ in range(_MAX_RACES):
            if await self._write(key, email_id.encode(), None) is not None:
                return True
            found = await self._get(key)
            if found is not None:
                return found[0].decode() == email_id
        raise RuntimeError(f"claim of {address} kept changing")  # pragma: no cover

    async def release_address(
        self, org_id: str, campaign: str, address: str, email_id: str
    ) -> None:
        key = campaign_key(org_id, campaign, address)
        found = await self._get(key)
        if found is None or found[0].decode() != email_id:
            return
        try:
            await self._kv.delete(key, last=found[1])
        except KeyWrongLastSequenceError:
            return

    async def _ensure_slot_key(self, org_id: str, day: date, email_id: str) -> None:
        await self._write(slot_key(org_id, day, email_id), b"1", None)

    async def reserve_slot(self, org_id: str, day: date, email_id: str, limit: int) -> bool:
        key = counter_key(org_id, day)
        for _ in range(_MAX_RACES):
            found = await self._get(key)
            counter, revision = (
                (_counter_dec.decode(found[0]), found[1]) if found else (_Counter(), None)
            )
            if counter.last:
                # Finish the previous taker's second write before moving the counter on.
                await self._ensure_slot_key(org_id, day, counter.last)
            if await self._get(slot_key(org_id, day, email_id)) is not None:
                return True
            if not rules.within_daily_limit(counter.n, limit):
                return False
            taken = _enc.encode(_Counter(n=counter.n + 1, last=email_id))
            if await self._write(key, taken, revision) is None:
                await asyncio.sleep(random.uniform(0, 0.005))
                continue
            await self._ensure_slot_key(org_id, day, email_id)
            return True
        raise RuntimeError(f"the daily counter {key} kept changing")  # pragma: no cover

    async def slots_taken(self, org_id: str, day: date) -> int:
        """How many of the day's slots are taken."""
        found = await self._get(counter_key(org_id, day))
        return 0 if found is None else _counter_dec.decode(found[0]).n
