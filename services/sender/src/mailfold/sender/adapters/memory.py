"""An in-process Ledger with the same compare-and-set contract as the KV one, for tests.

It keeps the values it would store in KV, encoded the same way, so the contract suite can run the
same cases against it and against the real bucket.
"""

from __future__ import annotations

from datetime import date

from mailfold.events import VerpRecord
from mailfold.sender.adapters.ledger import (
    admission_key,
    campaign_key,
    counter_key,
    mark_key,
    slot_key,
)
from mailfold.sender.domain import rules
from mailfold.sender.domain.state import Admission, RecipientMark


class MemoryLedger:
    """The Ledger port in a dict; single event loop, so each method is atomic."""

    def __init__(self) -> None:
        self.values: dict[str, tuple[object, int]] = {}
        self.verp: dict[str, VerpRecord] = {}
        self._revision = 0

    def _write(self, key: str, value: object, last: int | None) -> int | None:
        current = self.values.get(key)
        if (current is None) != (last is None):
            return None
        if current is not None and current[1] != last:
            return None
        self._revision += 1
        self.values[key] = (value, self._revision)
        return self._revision

    async def remember_verp(self, record: VerpRecord) -> None:
        self.verp[record.ref] = record

    async def mark(
        self, org_id: str, email_id: str, recipient: str
    ) -> tuple[RecipientMark, int] | None:
        found = self.values.get(mark_key(org_id, email_id, recipient))
        if found is None:
            return None
        value, revision = found
        assert isinstance(value, RecipientMark)
        return value, revision

    async def put_mark(
        self, org_id: str, email_id: str, recipient: str, mark: RecipientMark, *, last: int | None
    ) -> int | None:
        return self._write(mark_key(org_id, email_id, recipient), mark, last)

    async def admission(self, org_id: str, email_id: str) -> tuple[Admission, int] | None:
        found = self.values.get(admission_key(org_id, email_id))
        if found is None:
            return None
        value, revision = found
        assert isinstance(value, Admission)
        return value, revision

    async def pin_admission(
        self, org_id: str, email_id: str, admission: Admission
    ) -> tuple[Admission, int]:
        revision = self._write(admission_key(org_id, email_id), admission, None)
        if revision is not None:
            return admission, revision
        found = await self.admission(org_id, email_id)
        assert found is not None
        return found

    async def decide_admission(
        self, org_id: str, email_id: str, admission: Admission, *, last: int
    ) -> bool:
        return self._write(admission_key(org_id, email_id), admission, last) is not None

    async def claim_address(self, org_id: str, campaign: str, address: str, email_id: str) -> bool:
        key = campaign_key(org_id, campaign, address)
        if self._write(key, email_id, None) is not None:
            return True
        return self.values[key][0] == email_id

    async def release_address(
        self, org_id: str, campaign: str, address: str, email_id: str
    ) -> None:
        key = campaign_key(org_id, campaign, address)
        found = self.values.get(key)
        if found is not None and found[0] == email_id:
            del self.values[key]

    async def reserve_slot(self, org_id: str, day: date, email_id: str, limit: int) -> bool:
        mine = slot_key(org_id, day, email_id)
        if mine in self.values:
            return True
        counter = counter_key(org_id, day)
        taken = self.values.get(counter, (0, 0))[0]
        assert isinstance(taken, int)
        if not rules.within_daily_limit(taken, limit):
            return False
        self._revision += 1
        self.values[counter] = (taken + 1, self._revision)
        self.values[mine] = (True, self._revision)
        return True

    async def slots_taken(self, org_id: str, day: date) -> int:
        """How many of the day's slots are taken."""
        taken = self.values.get(counter_key(org_id, day), (0, 0))[0]
        assert isinstance(taken, int)
        return taken
