"""The projection store's contract against the in-memory store."""

from __future__ import annotations

from typing import Any

import pytest
from tests.unit.projector.conftest import FakeStore
from tests.unit.projector.store_contract import StoreContract

from mailfold.projector.domain.rows import EMAIL_COLUMNS


class MemoryStore(FakeStore):
    """The in-memory store, read back the way the query API reads PostgreSQL."""

    async def stored_email(self, email_id: str) -> dict[str, Any] | None:
        row = self.emails.get(email_id)
        return None if row is None else dict(zip(EMAIL_COLUMNS, row, strict=True))

    async def stored_links(self, email_id: str) -> list[dict[str, str]]:
        found = sorted((m, r) for e, m, r, _ in self.links if e == email_id)
        return [{"module": m, "record_id": r} for m, r in found]

    async def stored_decisions(self, email_id: str) -> list[tuple[str, str, str | None, str]]:
        rows = sorted((r for r in self.events.values() if r[5] == email_id), key=lambda r: r[1])
        return [(r[0], *self.decision(r[0])) for r in rows]

    async def committed_position(self) -> int:
        return self.position


class TestMemoryStore(StoreContract):
    @pytest.fixture
    def store(self) -> MemoryStore:
        return MemoryStore()
