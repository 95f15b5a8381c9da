"""Keeping one mailbox in sync: folders over IMAP, the maildrop over POP3, reconnects and state.

A round reads what changed since the saved cursor, publishes the events, then saves the cursor:
a crash between the two re-reads the same messages next time, whose events carry the same ids,
so nothing is lost and nothing is doubled.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import msgspec

from mailfold.events import Event, RecordRef, Source
from mailfold.mailbox import metrics
from mailfold.mailbox.adapters.bounces import BounceFact
from mailfold.mailbox.adapters.imap import FETCH_BATCH, ImapSession
from mailfold.mailbox.adapters.pop3 import Pop3Session
from mailfold.mailbox.adapters.store import MailboxStore
from mailfold.mailbox.domain import events as ev
from mailfold.mailbox.domain.events import Role
from mailfold.mailbox.domain.state import FolderState
from mailfold.mailbox.domain.status import PERSISTENT, ErrorKind, MailboxError
from mailfold.mailbox.service_layer.messages import (
    MailboxRef,
    MessageOutcome,
    RecordsFor,
    outcomes_of,
)
from mailfold.runtime.directory import IncomingSettings, MailboxStatus, OrgSettings
from mailfold.runtime.logging import get_logger
from mailfold.runtime.service import wait_set

log = get_logger(__name__)
POP3_FOLDER = "POP3"
PROCESS_BATCH = 250  # messages decided, published and saved together


@dataclass
class Ports:
    """What a sync talks to."""

    store: MailboxStore
    publish: Callable[[Sequence[Event]], Awaitable[None]]
    records_for: RecordsFor
    org_settings: Callable[[str], Awaitable[OrgSettings]]
    save_status: Callable[[str, str, MailboxStatus], Awaitable[None]]
    parse_bounce: Callable[[bytes], list[BounceFact]]
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))


@dataclass(frozen=True, slots=True)
class Options:
    """How a sync behaves (see docs/mailbox.md for the environment variables)."""

    poll_s: float = 60.0
    idle_s: float = 25 * 60.0  # IDLE is re-issued before the 29 minutes of RFC 2177
    max_resets: int = 3
    timeout_s: float = 30.0
    backoff_min_s: float = 1.0
    backoff_max_s: float = 300.0
    rescan_days: float = 7.0
    use_condstore: bool = True
    tls_context: ssl.SSLContext | None = None


async def open_imap(
    incoming: IncomingSettings, options: Options, *, use_condstore: bool
) -> ImapSession:
    """A logged-in IMAP session to the mailbox's server; MailboxError says what failed."""
    return await ImapSession.open(
        host=incoming.host,
        port=incoming.port,
        security=incoming.security,
        username=incoming.username,
        secret=incoming.secret,
        timeout=options.timeout_s,
        tls_context=options.tls_context,
        use_condstore=use_condstore,
    )


async def open_pop3(incoming: IncomingSettings, options: Options) -> Pop3Session:
    """A logged-in POP3 session to the mailbox's server; MailboxError says what failed."""
    return await Pop3Session.open(
        host=incoming.host,
        port=incoming.port,
        security=incoming.security,
        username=incoming.username,
        secret=incoming.secret,
        timeout=options.timeout_s,
        tls_context=options.tls_context,
    )


async def publish(ports: Ports, events: Sequence[Event]) -> None:
    if not events:
        return
    await ports.publish(events)
    for event in events:
        metrics.EVENTS_PUBLISHED.labels(event.event_type).inc()


class MailboxSync:
    """One mailbox, held by this copy: connects, syncs, waits for change, reconnects."""

    def __init__(
        self,
        ports: Ports,
        org_id: str,
        user: str,
        incoming: IncomingSettings,
        options: Options,
        owner: str = "",
    ) -> None:
        self.ports = ports
        self.incoming = incoming
        self.options = options
        self.owner = owner
        source = Source.POP3 if incoming.protocol == "pop3" else Source.IMAP
        self.mailbox = MailboxRef(org_id, user, source)
        self.label = f"{org_id}/{user}"
        self._states: dict[str, FolderState] = {}
        self._status = MailboxStatus(state="pending", held_by=owner)
        self._wake = asyncio.Event()
        self._rescan = False
        self._records: dict[tuple[str, ...], asyncio.Future[tuple[RecordRef, ...]]] = {}
        self._settings: OrgSettings | None = None

    # --- status -------------------------------------------------------------------------------

    async def _set_status(self, **changes: str) -> None:
        now = self.ports.clock().isoformat()
        status = msgspec.structs.replace(self._status, updated_at=now, **changes)
        important = (status.state, status.error_kind, status.last_error) != (
            self._status.state,
            self._status.error_kind,
            self._status.last_error,
        )
        stale = self._status.updated_at[:16] != now[:16]  # at most one routine write a minute
        self._status = status
        metrics.BOARD.state(self.label, status.state)
        if important or stale:
            try:
                await self.ports.save_status(self.mailbox.org_id, self.mailbox.user, status)
            except Exception as exc:  # the status is advisory; the sync goes on
                log.warning("mailbox status not saved", mailbox=self.label, error=str(exc))

    def request_rescan(self) -> None:
        """Re-read recent mail soon (a record gained an address)."""
        self._rescan = True
        self._wake.set()

    # --- the loop -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Sync until cancelled; failures are reported and retried with backoff."""
        metrics.BOARD.held(self.label)
        backoff = self.options.backoff_min_s
        try:
            while True:
                try:
                    if self.incoming.protocol == "pop3":
                        await self._run_pop3()
                    else:
                        await self._run_imap()
                    backoff = self.options.backoff_min_s
                except MailboxError as exc:
                    metrics.ERRORS.labels(exc.kind.value).inc()
                    log.warning(
                        "mailbox sync failed",
                        mailbox=self.label,
                        kind=exc.kind.value,
                        error=exc.message,
                    )
                    await self._set_status(
                        state="failing", error_kind=exc.kind.value, last_error=exc.message
                    )
                    if exc.kind is ErrorKind.RESETS:
                        return  # looping would re-read the folder forever; settings restart it
                    wait = backoff * (4 if exc.kind in PERSISTENT else 1)
                    await asyncio.sleep(min(wait, self.options.backoff_max_s))
                    backoff = min(backoff * 2, self.options.backoff_max_s)
        finally:
            metrics.BOARD.dropped(self.label)

    async def _synced(self) -> None:
        metrics.BOARD.synced(self.label)
        await self._set_status(
            state="ok", error_kind="", last_error="", last_sync_at=self.ports.clock().isoformat()
        )

    # --- IMAP ---------------------------------------------------------------------------------

    async def _folders(self, session: ImapSession) -> list[tuple[str, Role]]:
        sent = await session.sent_folder()
        if self.incoming.folders:
            return [
                (name, Role.SENT if sent is not None and name == sent else Role.INBOX)
                for name in self.incoming.folders
            ]
        folders = [("INBOX", Role.INBOX)]
        if sent is not None:
            folders.append((sent, Role.SENT))
        return folders

    async def _run_imap(self) -> None:
        session = await open_imap(
            self.incoming, self.options, use_condstore=self.options.use_condstore
        )
        try:
            folders = await self._folders(session)
            await self._set_status(state="syncing")
            while True:
                for folder, role in folders:
                    await self.sync_folder(session, folder, role)
                if self._rescan:
                    self._rescan = False
                    for folder, role in folders:
                        await self.rescan_folder(session, folder, role)
                await self._synced()
                self._wake.clear()
                await self._wait_for_change(session, folders[0][0])
        finally:
            await session.close()

    async def _wait_for_change(self, session: ImapSession, folder: str) -> None:
        wait = min(self.options.poll_s, self.options.idle_s)
        if not session.idle_supported:
            await wait_set(self._wake, wait)
            return
        await session.select(folder)
        await session.idle(wait, wake=self._wake)

    async def _state(self, folder: str, *, hashed: bool = False) -> FolderState:
        state = self._states.get(folder)
        if state is None:
            state = await self.ports.store.load_folder(
                self.mailbox.org_id, self.mailbox.user, folder, hashed=hashed
            )
            self._states[folder] = state
        return state

    async def _save(self, folder: str, state: FolderState, *, hashed: bool = False) -> None:
        await self.ports.store.save_folder(
            self.mailbox.org_id, self.mailbox.user, folder, state, hashed=hashed
        )

    def _new_round(self) -> None:
        """Forget what the last round looked up: records and settings are read afresh."""
        self._records = {}
        self._settings = None

    async def _decide(self, role: Role, raws: Sequence[bytes]) -> list[MessageOutcome]:
        if self._settings is None:
            self._settings = await self.ports.org_settings(self.mailbox.org_id)
        settings = self._settings
        memo = self._records
        records_for = self.ports.records_for

        async def cached(org: str, addresses: Sequence[str]) -> tuple[RecordRef, ...]:
            # The same few correspondents write again and again: one lookup per round each.
            key = tuple(a.lower() for a in addresses)
            if key not in memo:
                memo[key] = asyncio.ensure_future(records_for(org, addresses))
            return await memo[key]

        return await outcomes_of(
            self.mailbox,
            role,
            raws,
            settings=settings,
            records_for=cached,
            sent_email=self.ports.store.sent_email,
            parse_bounce=self.ports.parse_bounce,
            clock=self.ports.clock,
        )

    async def _keep(
        self,
        folder: str,
        state: FolderState,
        pairs: Sequence[tuple[str, MessageOutcome]],
        known: set[str] | None,
    ) -> set[str]:
        """Publish what is new, remember every email (UID -> id, sent Message-ID)."""
        fresh: list[Event] = []
        kept: set[str] = set()
        org, user = self.mailbox.org_id, self.mailbox.user
        for _uid, outcome in pairs:
            if outcome.email_id is not None and known is not None and outcome.email_id in known:
                kept.add(outcome.email_id)  # re-keyed after a UIDVALIDITY reset: not new
            else:
                fresh.extend(outcome.events)
        # Events and bookkeeping go out together; the cursor is saved only after both landed.
        published = asyncio.ensure_future(publish(self.ports, fresh))
        for uid, outcome in pairs:
            if outcome.email_id is None:
                continue
            state.messages[uid] = outcome.email_id
            if outcome.sent_message_id:
                await self.ports.store.remember_sent(
                    org, user, outcome.sent_message_id, outcome.email_id
                )
        try:
            await self.ports.store.flush()
        finally:
            await published
        return kept

    async def _deleted(self, gone: Sequence[str], reason: str = "expunged") -> None:
        at = self.ports.clock()
        events = [
            ev.deleted(
                org_id=self.mailbox.org_id,
                user=self.mailbox.user,
                email_id=email_id,
                reason=reason,
                occurred_at=at,
            )
            for email_id in dict.fromkeys(gone)
            if email_id
        ]
        await publish(self.ports, events)

    async def sync_folder(self, session: ImapSession, folder: str, role: Role) -> None:
        """One round on one folder: deletions, then new messages, then the cursor."""
        self._new_round()
        selected = await session.select(folder)
        state = await self._state(folder)
        known: set[str] | None = None
        if state.uidvalidity and selected.uidvalidity != state.uidvalidity:
            metrics.RESETS.inc()
            log.warning(
                "uidvalidity changed",
                mailbox=self.label,
                folder=folder,
                before=state.uidvalidity,
                after=selected.uidvalidity,
            )
            known = set(state.messages.values())
            state = FolderState(
                uidvalidity=selected.uidvalidity, resets_in_a_row=state.resets_in_a_row + 1
            )
            self._states[folder] = state
            if state.resets_in_a_row > self.options.max_resets:
                await self._save(folder, state)
                raise MailboxError(
                    ErrorKind.RESETS,
                    f"{folder}: UIDVALIDITY changed {state.resets_in_a_row} times in a row",
                )
        state.uidvalidity = selected.uidvalidity
        unchanged = (
            session.condstore
            and known is None
            and selected.highestmodseq
            and selected.highestmodseq == state.highestmodseq
            and selected.uidnext - 1 <= state.last_uid
        )
        if unchanged:
            state.resets_in_a_row = 0
            return
        if known is None and state.messages:
            await self._expunged(session, state)
        kept: set[str] = set()
        uids = await session.uids_from(state.last_uid + 1)
        fetches = [uids[i : i + FETCH_BATCH] for i in range(0, len(uids), FETCH_BATCH)]
        # One small FETCH is always on its way while a group is decided, published and saved:
        # the server keeps sending, and no reply grows big enough to be slow to parse.
        ahead = asyncio.ensure_future(session.fetch(fetches[0])) if fetches else None
        taken = 0
        try:
            while ahead is not None:
                group: list[tuple[int, bytes]] = []
                while ahead is not None and len(group) < PROCESS_BATCH:
                    group.extend(await ahead)
                    taken += 1
                    ahead = (
                        asyncio.ensure_future(session.fetch(fetches[taken]))
                        if taken < len(fetches)
                        else None
                    )
                metrics.MESSAGES_SEEN.labels("imap").inc(len(group))
                outcomes = await self._decide(role, [raw for _, raw in group])
                kept |= await self._keep(
                    folder,
                    state,
                    [(str(uid), o) for (uid, _), o in zip(group, outcomes, strict=True)],
                    known,
                )
                state.last_uid = max(state.last_uid, *fetches[taken - 1])
                await self._save(folder, state)
        finally:
            if ahead is not None and not ahead.done():
                ahead.cancel()
        if known is not None:
            # Known before the reset and not found after it: gone from the folder.
            await self._deleted(sorted(known - kept))
        else:
            state.resets_in_a_row = 0
        state.highestmodseq = selected.highestmodseq
        await self._save(folder, state)

    async def _expunged(self, session: ImapSession, state: FolderState) -> None:
        known = [int(uid) for uid in state.messages]
        gone = set(known) - await session.present(known)
        if not gone:
            return
        await self._deleted([state.messages[str(uid)] for uid in sorted(gone)])
        for uid in gone:
            state.messages.pop(str(uid), None)

    async def rescan_folder(self, session: ImapSession, folder: str, role: Role) -> None:
        """Re-read recent messages that became no email (their sender may be a record now)."""
        self._new_round()
        await session.select(folder)
        state = await self._state(folder)
        since = (self.ports.clock() - timedelta(days=self.options.rescan_days)).strftime("%d-%b-%Y")
        uids = [
            uid
            for uid in await session.search_since(since)
            if uid <= state.last_uid and str(uid) not in state.messages
        ]
        for start in range(0, len(uids), FETCH_BATCH):
            fetched = await session.fetch(uids[start : start + FETCH_BATCH])
            outcomes = await self._decide(role, [raw for _, raw in fetched])
            await self._keep(
                folder,
                state,
                [(str(uid), o) for (uid, _), o in zip(fetched, outcomes, strict=True)],
                None,
            )
        await self._save(folder, state)

    # --- POP3 ---------------------------------------------------------------------------------

    async def _run_pop3(self) -> None:
        while True:
            await self.sync_pop3()
            await self._synced()
            self._wake.clear()
            await wait_set(self._wake, self.options.poll_s)

    async def sync_pop3(self) -> None:
        """One POP3 round: new UIDLs become events; vanished ones are deletions only if the org
        says its mailboxes delete on the server."""
        session = await open_pop3(self.incoming, self.options)
        try:
            await self._set_status(state="syncing")
            self._new_round()
            state = await self._state(POP3_FOLDER, hashed=True)
            listing = await session.uidls()
            new = [uidl for uidl in listing if uidl not in state.messages]
            for start in range(0, len(new), PROCESS_BATCH):
                batch = new[start : start + PROCESS_BATCH]
                raws = [await session.retrieve(listing[uidl]) for uidl in batch]
                metrics.MESSAGES_SEEN.labels("pop3").inc(len(raws))
                outcomes = await self._decide(Role.INBOX, raws)
                await self._keep(POP3_FOLDER, state, list(zip(batch, outcomes, strict=True)), None)
                for uidl, outcome in zip(batch, outcomes, strict=True):
                    state.messages.setdefault(uidl, outcome.email_id or "")
                await self._save(POP3_FOLDER, state, hashed=True)
            vanished = [uidl for uidl in state.messages if uidl not in listing]
            if vanished:
                settings = self._settings or await self.ports.org_settings(self.mailbox.org_id)
                if settings.pop3_vanished_is_deleted:
                    await self._deleted([state.messages[u] for u in vanished], "deleted_on_server")
                for uidl in vanished:
                    state.messages.pop(uidl, None)
                await self._save(POP3_FOLDER, state, hashed=True)
        finally:
            await session.close()
