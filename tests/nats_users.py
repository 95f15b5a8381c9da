"""The test session's NATS passwords: every embedded server of the fixtures runs with them, so a
service under test connects as its own user with `as_user(nats_url, "tracker")`."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass
from typing import Final

import nats
import nats.errors
import nats.js.errors

from mailfold.cli.embedded import NatsCredentials
from mailfold.runtime.settings import NatsAuth

CREDENTIALS: Final = NatsCredentials.generate()


def as_user(url: str, user: str) -> str:
    """`url` (a fixture's, which carries the admin's credentials) as `user` instead."""
    return CREDENTIALS.url(url, user)


def service_auth(user: str) -> NatsAuth:
    """A service's NATS credentials, as its settings carry them (MAILFOLD_NATS_USER/_PASSWORD)."""
    return NatsAuth(user=user, password=CREDENTIALS.password(user))


def service_env(user: str) -> dict[str, str]:
    """A service process's environment variables for its NATS credentials."""
    return {"MAILFOLD_NATS_USER": user, "MAILFOLD_NATS_PASSWORD": CREDENTIALS.password(user)}


@dataclass(frozen=True)
class Publishes:
    """What became of a user's publish to its own subject and to another service's."""

    own: str  # "stored" or "reached the stream" (when asked not to store), else the error
    foreign_refusals: list[str]  # the server's permission violations
    foreign_stored: bool


async def publish_own_and_foreign(
    servers: list[str],
    user: str,
    password: str,
    *,
    own: str,
    foreign: str,
    stream: str,
    store: bool = True,
    tls: ssl.SSLContext | None = None,
) -> Publishes:
    """Connect as `user`, publish to `own` and to `foreign` (both subjects of `stream`).

    With `store=False` the own publish carries an expected last sequence no subject has, so the
    stream answers it (the server let it through) but keeps nothing: for a running stack whose
    consumers must not see test messages.
    """
    refusals: list[str] = []
    refused = asyncio.Event()

    async def record(error: Exception) -> None:
        if "permissions violation" in str(error):
            refusals.append(str(error))
            refused.set()

    nc = await nats.connect(
        servers, user=user, password=password, tls=tls, error_cb=record, connect_timeout=5
    )
    try:
        js = nc.jetstream(timeout=10)
        headers = None if store else {"Nats-Expected-Last-Subject-Sequence": "999999999"}
        for _ in range(PUBLISH_ATTEMPTS):
            try:
                await js.publish(own, b"{}", headers=headers)
                outcome = "stored"
            except nats.js.errors.ServiceUnavailableError as exc:
                outcome = str(exc)  # JetStream still electing: try again
                await asyncio.sleep(0.5)
                continue
            except nats.js.errors.APIError as exc:
                outcome = "reached the stream" if exc.err_code == WRONG_LAST_SEQUENCE else str(exc)
            except nats.errors.Error as exc:
                # A cluster's stream just created may have no leader yet: no answer comes.
                outcome = f"{type(exc).__name__}: {exc}"
                await asyncio.sleep(0.5)
                continue
            break
        await nc.publish(foreign, b"{}")
        await nc.flush()
        # A refused publish raises nothing: the server's -ERR reaches error_cb.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(refused.wait(), timeout=5)
        try:
            await js.get_last_msg(stream, foreign)
            foreign_stored = True
        except nats.js.errors.NotFoundError:
            foreign_stored = False
    finally:
        await nc.close()
    return Publishes(outcome, refusals, foreign_stored)


# Each service's own subject and another service's event it must not publish.
OWN_AND_FOREIGN: Final = {
    "ingest": ("mail.events.{org}.email_composed", "mail.events.{org}.email_opened"),
    "sender": ("mail.events.{org}.email_delivered", "mail.events.{org}.email_composed"),
    "tracker": ("mail.events.{org}.email_opened", "mail.events.{org}.email_delivered"),
    "projector": ("mail.dlq.projector", "mail.events.{org}.email_clicked"),
    "webhooks": ("mail.dlq.webhooks", "mail.events.{org}.email_sent"),
    "mailbox": ("mail.events.{org}.email_received", "mail.events.{org}.email_delivered"),
}
WRONG_LAST_SEQUENCE: Final = 10071
PUBLISH_ATTEMPTS: Final = 20
