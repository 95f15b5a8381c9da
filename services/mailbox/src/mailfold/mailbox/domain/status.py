"""Why a mailbox cannot sync, in a few kinds that metrics and the API can name."""

from __future__ import annotations

import enum


class ErrorKind(enum.StrEnum):
    """The bounded set of failure kinds (a metric label and the API's `error_kind`)."""

    AUTH = "auth"
    TLS = "tls"
    UNREACHABLE = "unreachable"
    QUOTA = "quota"
    TIMEOUT = "timeout"
    DISCONNECTED = "disconnected"
    PROTOCOL = "protocol"
    RESETS = "uidvalidity_resets"
    NO_FOLDER = "no_folder"


class MailboxError(Exception):
    """A mailbox server refused or failed; the message never holds the secret."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message[:500]


# Errors that will not go away by retrying soon: back off longer.
PERSISTENT = frozenset({ErrorKind.AUTH, ErrorKind.TLS, ErrorKind.QUOTA, ErrorKind.NO_FOLDER})
