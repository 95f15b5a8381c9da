"""The batch handler: messages in, one WriteSet out, with a bounded cache of email states.

The cache lets the next batch continue the fold without reading states back. An entry written by
a batch that is not committed yet is pinned (never evicted): were it evicted and re-read, the read
would miss the uncommitted write. In write-behind mode (replay into a scratch schema, which nobody
reads while it is built) emails are written only when evicted and at the end.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice

from mailfold.events import EmailState, Ruling
from mailfold.events.fold import encode_state
from mailfold.projector.domain.batch import FoldedBatch, fold_email, group_by_email
from mailfold.projector.domain.messages import RawMessage, Unusable, ValidEvent, classify
from mailfold.projector.domain.rows import email_row, record_rows
from mailfold.projector.service_layer.ports import StateReader, WriteSet

# Folding a batch takes tens of milliseconds; yielding now and then lets the commit in flight
# send its next statement meanwhile, so PostgreSQL works while Python folds.
_YIELD_EVERY = 64
_YIELD_EVERY_EMAILS = 16


@dataclass(slots=True)
class Prepared:
    """A batch folded and ready to write; `number` orders batches of one projection."""

    number: int
    writes: WriteSet
    emails: list[str] = field(default_factory=list)
    rulings: list[tuple[str, Ruling]] = field(default_factory=list)
    # Each touched email's state before and after the batch (None: new), for the metrics.
    changed: list[tuple[EmailState | None, EmailState]] = field(default_factory=list)
    skipped: int = 0  # redeliveries at or below the position
    unowned: int = 0  # other partitions' messages: they only move the position
    duplicates: int = 0  # repeated event ids
    size: int = 0


class Projection:
    """Folds batches in stream order, continuing from cached or stored states."""

    def __init__(
        self,
        reader: StateReader,
        *,
        position: int,
        capacity: int,
        store_empty: bool = False,
        write_behind: bool = False,
        look_up_ids_until: int = 0,
        owns: Callable[[bytes], bool] | None = None,
    ) -> None:
        self._reader = reader
        # A partition folds only its own emails' messages; the others only move its position.
        self._owns = owns
        self._position = position  # the last sequence folded (committed or in flight)
        self._capacity = capacity
        # While nothing was ever evicted from a cache that started on an empty store, a miss is
        # a new email and needs no read.
        self._complete = store_empty
        self._write_behind = write_behind
        # Batches starting at or below this sequence look their event ids up in the store first
        # (after a DuplicateEventIds, the batch that raised it is folded again that way).
        self._look_up_until = look_up_ids_until
        self._cache: OrderedDict[str, EmailState] = OrderedDict()
        self._pinned: dict[str, int] = {}
        self._in_flight_ids: dict[int, list[str]] = {}
        self._dirty: set[str] = set()  # write-behind: states newer than their stored row
        self._relink: set[str] = set()  # write-behind: emails whose links must be written
        self._unlink: set[str] = set()  # write-behind: ... after deleting their old ones
        # Write-behind: evicted states not stored yet, with the batch that writes them (or None).
        self._spilled: dict[str, tuple[EmailState, int | None]] = {}
        self._number = 0

    @property
    def position(self) -> int:
        """The last stream sequence folded into the cache (committed or in flight)."""
        return self._position

    @property
    def cached(self) -> int:
        """How many email states the cache holds."""
        return len(self._cache)

    async def prepare(self, messages: Sequence[RawMessage]) -> Prepared:
        """Classify and fold one batch; the cache moves ahead, the store moves on write."""
        self._number += 1
        prepared = Prepared(number=self._number, writes=WriteSet(expected_seq=self._position))
        prepared.size = len(messages)
        accepted: list[ValidEvent] = []
        last = self._position
        for n, (seq, subject, data) in enumerate(messages, 1):
            if n % _YIELD_EVERY == 0:
                await asyncio.sleep(0)
            if seq <= last:
                prepared.skipped += 1
                continue
            last = seq
            if self._owns is not None and not self._owns(data):
                prepared.unowned += 1
                continue
            item = classify(seq, subject, data)
            if isinstance(item, Unusable):
                prepared.writes.poison.append(item)
            else:
                accepted.append(item)
        prepared.writes.last_seq = last
        self._position = last
        if accepted:
            await self._fold(prepared, accepted)
        if self._write_behind:
            self._write_spilled(prepared)
        return prepared

    def _write_spilled(self, prepared: Prepared) -> None:
        for email_id, (state, number) in self._spilled.items():
            if number is None:
                self._spilled[email_id] = (state, prepared.number)
                self._add_email(prepared.writes, email_id, state)

    def _add_email(self, writes: WriteSet, email_id: str, state: EmailState) -> None:
        writes.email_rows.append(email_row(state, encode_state(state), writes.last_seq))
        self._dirty.discard(email_id)
        if email_id in self._relink:
            self._relink.discard(email_id)
            if email_id in self._unlink:
                self._unlink.discard(email_id)
                writes.unlinked.append(email_id)
            writes.record_rows.extend(record_rows(state))

    async def _known_ids(self, accepted: list[ValidEvent]) -> frozenset[str]:
        """Ids of `accepted` already stored or in a batch not committed yet."""
        ids = [a.event.event_id for a in accepted]
        known = set(await self._reader.existing_event_ids(ids))
        wanted = set(ids)
        for pending in self._in_flight_ids.values():
            known.update(wanted.intersection(pending))
        return frozenset(known)

    async def _fold(self, prepared: Prepared, accepted: list[ValidEvent]) -> None:
        look_up = accepted[0].seq <= self._look_up_until
        known = await self._known_ids(accepted) if look_up else frozenset()
        by_email, duplicates = group_by_email(accepted, known)
        before: dict[str, EmailState] = {}
        missing: list[str] = []
        for email_id in by_email:
            state = self._cache.get(email_id)
            if state is None and email_id in self._spilled:
                state = self._spilled[email_id][0]
            if state is None:
                missing.append(email_id)
            else:
                before[email_id] = state
        if missing and not self._complete:
            before.update(await self._reader.load_states(missing))

        folded = FoldedBatch(duplicates=duplicates)
        for n, (email_id, items) in enumerate(by_email.items(), 1):
            if n % _YIELD_EVERY_EMAILS == 0:
                await asyncio.sleep(0)
            fold_email(folded, email_id, before.get(email_id), items)
        writes = prepared.writes
        writes.event_rows = folded.event_rows
        writes.decision_rows = folded.decision_rows
        prepared.rulings = folded.rulings
        prepared.duplicates = folded.duplicates
        if self._look_up_until:
            self._in_flight_ids[prepared.number] = [row[0] for row in folded.event_rows]
        number = prepared.number
        for n, (email_id, state) in enumerate(folded.states.items(), 1):
            if n % _YIELD_EVERY_EMAILS == 0:
                await asyncio.sleep(0)
            self._cache[email_id] = state
            self._cache.move_to_end(email_id)
            spilled = self._spilled.get(email_id)
            if spilled is not None and spilled[1] is None:
                del self._spilled[email_id]  # superseded before it was written
            self._pinned[email_id] = number
            prepared.emails.append(email_id)
            prepared.changed.append((before.get(email_id), state))
            if self._write_behind:
                self._dirty.add(email_id)
            else:
                writes.email_rows.append(email_row(state, encode_state(state), writes.last_seq))
        if self._write_behind:
            self._relink.update(folded.linked)
            self._unlink.update(folded.unlinked)
        else:
            writes.unlinked = sorted(folded.unlinked)
            for email_id in sorted(folded.linked):
                writes.record_rows.extend(record_rows(folded.states[email_id]))

    def committed(self, prepared: Prepared) -> None:
        """The batch is in the store: unpin its emails and keep the cache within capacity."""
        self._in_flight_ids.pop(prepared.number, None)
        for email_id in prepared.emails:
            if self._pinned.get(email_id) == prepared.number:
                del self._pinned[email_id]
        for email_id in [e for e, (_, n) in self._spilled.items() if n == prepared.number]:
            del self._spilled[email_id]
        excess = len(self._cache) - self._capacity
        if excess <= 0:
            return
        self._complete = False
        for email_id in list(islice(self._cache, excess + len(self._pinned))):
            if excess <= 0:
                break
            if email_id in self._pinned:
                continue
            state = self._cache.pop(email_id)
            excess -= 1
            if email_id in self._dirty:
                self._spilled[email_id] = (state, None)

    def flush(self) -> WriteSet:
        """Write-behind, once every batch is committed: the rows of every state not stored yet."""
        writes = WriteSet(expected_seq=self._position, last_seq=self._position)
        for chunk in self.flush_chunks(None):
            writes.email_rows.extend(chunk.email_rows)
            writes.unlinked.extend(chunk.unlinked)
            writes.record_rows.extend(chunk.record_rows)
            writes.emails_new = chunk.emails_new
        return writes

    def flush_chunks(self, size: int | None) -> Iterator[WriteSet]:
        """`flush` in WriteSets of at most `size` emails (all at once with None), so that one is
        written while the next is built."""
        # Nothing ever left the cache of a store that started empty: no email row exists yet.
        emails_new = self._complete and self._write_behind
        spilled, self._spilled = self._spilled, {}
        pending = [(e, state) for e, (state, _) in spilled.items()]
        pending.extend((e, self._cache[e]) for e in list(self._dirty) if e not in spilled)
        step = size or max(len(pending), 1)
        for start in range(0, len(pending), step):
            writes = WriteSet(
                expected_seq=self._position, last_seq=self._position, emails_new=emails_new
            )
            for email_id, state in pending[start : start + step]:
                self._add_email(writes, email_id, state)
            yield writes
