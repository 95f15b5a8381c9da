"""Handlers: a token and what the request says about its client become one event, given to `emit`.

Ports come in as parameters: `emit` (the publish buffer), `later` (a timer, for clicks held until
a burst can be seen), `clock` and `monotonic`. Nothing here does I/O.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Final, Protocol

import msgspec

from mailfold.events import (
    EmailClicked,
    EmailOpened,
    InvalidToken,
    Keyring,
    TokenKind,
    TrackingClaims,
    Verdict,
    new_id,
)
from mailfold.events.events import Address, Ident, OrgId
from mailfold.tracker.domain.behaviour import (
    BURST_LABEL,
    EARLY_CLICK_LABEL,
    BurstWindow,
    is_early_click,
)
from mailfold.tracker.domain.links import redirect_target
from mailfold.tracker.domain.network import IPAddress, truncate
from mailfold.tracker.domain.rules import Classification, Classifier, Interaction

PRODUCER: Final = "tracker"
# Enough to recognise any client; a header of kilobytes does not belong in every event.
MAX_USER_AGENT: Final = 512


class NotRecorded(enum.StrEnum):
    """Why a request records nothing (the value is the metric label)."""

    INVALID_TOKEN = "invalid_token"  # malformed, forged, tampered with, or an unknown key id
    WRONG_KIND = "wrong_kind"  # a valid token for the other endpoint (an open token on /c/)
    BAD_CLAIMS = "bad_claims"  # signed, but its ids do not fit the event contract
    UNSAFE_URL = "unsafe_url"  # a click token whose URL is not an http(s) URL to follow


class Cancellable(Protocol):
    """A scheduled call (asyncio.TimerHandle)."""

    def cancel(self) -> None:
        """Do not run it."""


Emit = Callable[[EmailOpened | EmailClicked], None]
Later = Callable[[float, Callable[[], None]], Cancellable]


class _Ids(msgspec.Struct, frozen=True, array_like=True):
    """The claims the event contract constrains, checked with the contract's own types."""

    org_id: OrgId
    email_id: Ident
    recipient: Address


def utc_now() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


class Tracker:
    """Opens and clicks: verify the token, classify the client, emit an event."""

    def __init__(
        self,
        *,
        keyring: Keyring,
        classifier: Classifier,
        bursts: BurstWindow,
        emit: Emit,
        later: Later,
        early_click_s: float = 5.0,
        clock: Callable[[], datetime] = utc_now,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._keyring = keyring
        self._classifier = classifier
        self._bursts = bursts
        self._emit = emit
        self._later = later
        self._early_click_s = early_click_s
        self._clock = clock
        self._monotonic = monotonic
        self._held: dict[int, tuple[Cancellable, Callable[[], None]]] = {}
        self._next_hold = 0

    def _claims(self, token: str, kind: TokenKind) -> TrackingClaims | NotRecorded:
        try:
            claims = self._keyring.verify(token)
        except InvalidToken:
            return NotRecorded.INVALID_TOKEN
        if claims.kind is not kind:
            return NotRecorded.WRONG_KIND
        try:
            msgspec.convert((claims.org_id, claims.email_id, claims.recipient), _Ids)
        except msgspec.ValidationError:
            return NotRecorded.BAD_CLAIMS
        return claims

    def open(self, token: str, user_agent: str, client: IPAddress | None) -> NotRecorded | None:
        """Record the pixel load of a valid open token; the refusal otherwise (nothing recorded)."""
        claims = self._claims(token, TokenKind.OPEN)
        if isinstance(claims, NotRecorded):
            return claims
        found = self._classifier.classify(Interaction.OPEN, user_agent, client)
        event = EmailOpened(
            event_id=new_id(),
            org_id=claims.org_id,
            email_id=claims.email_id,
            occurred_at=self._clock(),
            producer=PRODUCER,
            recipient=claims.recipient,
            verdict=found.verdict,
            label=found.label,
            user_agent=user_agent[:MAX_USER_AGENT],
            ip=truncate(client),
        )
        self._emit(event)
        return None

    def link(self, token: str) -> tuple[TrackingClaims, str] | NotRecorded:
        """The claims and the Location of a valid click token, recording nothing (HEAD)."""
        claims = self._claims(token, TokenKind.CLICK)
        if isinstance(claims, NotRecorded):
            return claims
        target = redirect_target(claims.url)
        if target is None:
            return NotRecorded.UNSAFE_URL
        return claims, target

    def click(self, token: str, user_agent: str, client: IPAddress | None) -> str | NotRecorded:
        """Record a click on a valid click token and return where to send the browser.

        A click that rules out a person at once is emitted at once. Any other waits one burst
        span, so that every click of a scanner's burst is flagged, the first ones included.
        """
        resolved = self.link(token)
        if isinstance(resolved, NotRecorded):
            return resolved
        claims, target = resolved
        now = self._clock()
        found = self._classifier.classify(Interaction.CLICK, user_agent, client)
        if found.verdict is Verdict.HUMAN and is_early_click(
            claims.email_id, now, self._early_click_s
        ):
            found = Classification(Verdict.MACHINE, EARLY_CLICK_LABEL)
        at = self._monotonic()
        self._bursts.record(claims.email_id, claims.url, at)

        def emit(decided: Classification) -> None:
            event = EmailClicked(
                event_id=new_id(),
                org_id=claims.org_id,
                email_id=claims.email_id,
                occurred_at=now,
                producer=PRODUCER,
                recipient=claims.recipient,
                url=claims.url,
                verdict=decided.verdict,
                label=decided.label,
                user_agent=user_agent[:MAX_USER_AGENT],
                ip=truncate(client),
            )
            self._emit(event)

        if found.verdict is Verdict.MACHINE:
            emit(found)
            return target

        key = self._next_hold
        self._next_hold += 1

        def release() -> None:
            self._held.pop(key, None)
            in_burst = self._bursts.in_burst(claims.email_id, at)
            emit(Classification(Verdict.MACHINE, BURST_LABEL) if in_burst else found)

        self._held[key] = (self._later(self._bursts.span_s, release), release)
        return target

    @property
    def held(self) -> int:
        """Clicks waiting for their burst span to pass."""
        return len(self._held)

    def release_held(self) -> None:
        """Decide and emit every held click now, with what has been seen so far (on stop)."""
        for handle, release in list(self._held.values()):
            handle.cancel()
            release()
