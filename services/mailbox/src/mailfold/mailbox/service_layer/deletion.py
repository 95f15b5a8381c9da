"""Deleting an email through the API deletes it in its mailbox too (two-way deletion)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from mailfold.mailbox.domain import events as ev
from mailfold.mailbox.domain.state import Locator
from mailfold.mailbox.domain.status import ErrorKind, MailboxError
from mailfold.mailbox.service_layer.sync import Options, Ports, open_imap, open_pop3, publish
from mailfold.runtime.directory import IncomingSettings


class NotSynced(LookupError):
    """The email is not one the mailbox sync knows (or it is already deleted)."""


class MailboxChanged(RuntimeError):
    """The folder was renumbered since the email was seen; the next sync re-keys it."""


LoadIncoming = Callable[[str, str], Awaitable[IncomingSettings | None]]


async def _delete_imap(incoming: IncomingSettings, locator: Locator, options: Options) -> None:
    session = await open_imap(incoming, options, use_condstore=False)
    try:
        selected = await session.select(locator.folder)
        if selected.uidvalidity != locator.uidvalidity:
            raise MailboxChanged(f"{locator.folder} was renumbered; try again after the next sync")
        if not await session.present([int(locator.uid)]):
            raise NotSynced(locator.uid)  # already gone from the mailbox
        await session.delete(locator.folder, int(locator.uid))
    finally:
        await session.close()


async def _delete_pop3(incoming: IncomingSettings, locator: Locator, options: Options) -> None:
    session = await open_pop3(incoming, options)
    try:
        number = (await session.uidls()).get(locator.uid)
        if number is None:
            raise NotSynced(locator.uid)  # already gone from the mailbox
        await session.delete(number)
    finally:
        await session.close()  # QUIT commits the deletion


async def delete_email(
    ports: Ports, load_incoming: LoadIncoming, options: Options, org_id: str, email_id: str
) -> str:
    """Delete a synced email in its mailbox, then publish EmailDeleted; the mailbox user."""
    locator = await ports.store.find(org_id, email_id)
    if locator is None:
        raise NotSynced(email_id)
    incoming = await load_incoming(org_id, locator.user)
    if incoming is None:
        raise MailboxError(ErrorKind.PROTOCOL, "the mailbox is no longer configured")
    if incoming.protocol == "pop3":
        await _delete_pop3(incoming, locator, options)
    else:
        await _delete_imap(incoming, locator, options)
    event = ev.deleted(
        org_id=org_id,
        user=locator.user,
        email_id=email_id,
        reason="deleted_in_crm",
        occurred_at=ports.clock(),
    )
    await publish(ports, [event])
    return locator.user
