"""The test session's NATS passwords: every embedded server of the fixtures runs with them, so a
service under test connects as its own user with `as_user(nats_url, "tracker")`."""

from __future__ import annotations

from typing import Final

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
