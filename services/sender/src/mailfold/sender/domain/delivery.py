"""What a delivery attempt came to, and when to try again.

A reply 2xx is a delivery, 5xx a bounce, 4xx a deferral; a failure with no reply at all (refused
connection, dropped line, DNS trouble) is a deferral unless it is known to be permanent (the
domain does not exist, or publishes a null MX).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from mailfold.bounces import classify
from mailfold.events import BounceKind

_ENHANCED: Final = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})(?=\s|$)")

# RFC 3463 codes for failures that come without a server's reply.
STATUS_NO_ANSWER: Final = "4.4.1"  # could not connect, or no greeting
STATUS_CONNECTION_LOST: Final = "4.4.2"  # the connection broke mid-conversation
STATUS_DNS_TEMPORARY: Final = "4.4.3"  # the resolver failed for now
STATUS_NO_SUCH_DOMAIN: Final = "5.1.2"  # the domain does not exist
STATUS_NULL_MX: Final = "5.1.10"  # the domain says it accepts no mail (RFC 7505)
STATUS_EXPIRED: Final = "4.4.7"  # retries ran out


class AttemptVerdict(enum.StrEnum):
    """The outcome class of one attempt for one recipient."""

    DELIVERED = "delivered"
    DEFERRED = "deferred"
    BOUNCED = "bounced"
    SKIPPED = "skipped"


def enhanced_status(code: int | None, text: str) -> str | None:
    """The RFC 3463 code a reply text starts with, when its class agrees with the reply code."""
    match = _ENHANCED.match(text)
    if match is None:
        return None
    if code is not None and str(code)[0] != match.group(1):
        return None
    return f"{match.group(1)}.{int(match.group(2))}.{int(match.group(3))}"


@dataclass(frozen=True, slots=True)
class SmtpAttempt:
    """What one try to hand the message over came to, for one recipient."""

    code: int | None  # the server's reply code; None when there was no reply
    text: str  # the server's reply text, or what went wrong when there was no reply
    command: str  # CONN, EHLO, STARTTLS, AUTH, MAIL, RCPT, DATA or DNS: what failed or succeeded
    remote_mta: str | None = None
    status: str | None = None  # the enhanced status code, from the reply or ours
    permanent: bool = False  # a failure without a reply that retrying will not fix
    data_started: bool = False  # DATA was sent: the server may hold the message
    skipped: bool = False  # not tried: another sender copy holds this recipient

    @property
    def verdict(self) -> AttemptVerdict:
        """Delivered, deferred, bounced, or skipped."""
        if self.skipped:
            return AttemptVerdict.SKIPPED
        if self.code is None:
            return AttemptVerdict.BOUNCED if self.permanent else AttemptVerdict.DEFERRED
        if 200 <= self.code < 300:
            return AttemptVerdict.DELIVERED
        if self.code >= 500:
            return AttemptVerdict.BOUNCED
        return AttemptVerdict.DEFERRED

    @property
    def diagnostic(self) -> str:
        """The reply as the server gave it (`550 5.1.1 no such user`), or our description."""
        return f"{self.code} {self.text}" if self.code is not None else self.text

    def classify(self) -> tuple[str, BounceKind]:
        """The bounce reason class and hard/soft kind of this attempt."""
        reason, kind = classify(
            status=self.status,
            reply_code=None if self.code is None else str(self.code),
            diagnostic=self.text,
            command=self.command if self.command in {"MAIL", "RCPT", "DATA"} else None,
        )
        return reason, BounceKind(kind)


def reply(code: int, text: str, command: str, remote_mta: str | None) -> SmtpAttempt:
    """An attempt the server answered."""
    return SmtpAttempt(
        code=code,
        text=text.strip(),
        command=command,
        remote_mta=remote_mta,
        status=enhanced_status(code, text),
        data_started=command == "DATA",
    )


def failure(
    text: str,
    command: str,
    status: str,
    remote_mta: str | None = None,
    *,
    permanent: bool = False,
    data_started: bool = False,
) -> SmtpAttempt:
    """An attempt that got no reply: a connection or DNS failure."""
    return SmtpAttempt(
        code=None,
        text=text,
        command=command,
        remote_mta=remote_mta,
        status=status,
        permanent=permanent,
        data_started=data_started,
    )


SKIPPED: Final = SmtpAttempt(code=None, text="held by another sender", command="RCPT", skipped=True)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff, capped, until the first attempt is older than the maximum age."""

    base_s: float = 60.0
    factor: float = 2.0
    cap_s: float = 3600.0
    max_age_s: float = 4 * 86400.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (1 for the first)."""
        delay = self.base_s
        for _ in range(max(0, attempt - 1)):
            delay *= self.factor
            if delay >= self.cap_s:
                return self.cap_s
        return min(delay, self.cap_s)

    def next_retry(self, attempt: int, first_at: datetime, now: datetime) -> datetime | None:
        """When to try again after failed attempt `attempt`; None once retries have run out.

        The last retry is made at the deadline itself rather than skipped, so a message is never
        given up before its maximum age.
        """
        deadline = first_at + timedelta(seconds=self.max_age_s)
        if now >= deadline:
            return None
        return min(now + timedelta(seconds=self.delay(attempt)), deadline)
