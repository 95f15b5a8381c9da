"""The open and click handlers with fake ports: what a token and a client turn into."""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from mailfold.events import (
    EmailClicked,
    EmailOpened,
    Keyring,
    TokenKind,
    TrackingClaims,
    Verdict,
    new_id,
)
from mailfold.tracker.domain.behaviour import BurstWindow
from mailfold.tracker.domain.rules import Classifier
from mailfold.tracker.service_layer.handlers import NotRecorded, Tracker

RING = Keyring.parse("t1:unit-test-tracking-key-0123")
NOW = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
OLD_EMAIL = new_id(int((NOW - timedelta(days=1)).timestamp() * 1000))
BROWSER = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36"
)
CLIENT = ipaddress.ip_address("203.0.113.77")


@dataclass
class Timer:
    callback: Callable[[], None]
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class Harness:
    """A tracker wired to fakes: a list for emitted events, timers fired by hand, a set clock."""

    emitted: list[EmailOpened | EmailClicked] = field(default_factory=list)
    timers: list[Timer] = field(default_factory=list)
    monotonic: float = 100.0

    def __post_init__(self) -> None:
        self.tracker = Tracker(
            keyring=RING,
            classifier=Classifier(),
            bursts=BurstWindow(),
            emit=self.emitted.append,
            later=self.later,
            clock=lambda: NOW,
            monotonic=lambda: self.monotonic,
        )

    def later(self, delay: float, callback: Callable[[], None]) -> Timer:
        assert delay == 1.0
        timer = Timer(callback)
        self.timers.append(timer)
        return timer

    def fire(self) -> None:
        timers, self.timers = self.timers, []
        for timer in timers:
            if not timer.cancelled:
                timer.callback()


def open_token(email_id: str = OLD_EMAIL, org_id: str = "acme") -> str:
    return RING.sign(TrackingClaims(TokenKind.OPEN, org_id, email_id, "ann@example.org"))


def click_token(url: str = "https://example.org/a", email_id: str = OLD_EMAIL) -> str:
    return RING.sign(TrackingClaims(TokenKind.CLICK, "acme", email_id, "ann@example.org", url))


def test_an_open_becomes_one_event_with_the_tokens_claims() -> None:
    harness = Harness()
    assert harness.tracker.open(open_token(), BROWSER, CLIENT) is None
    [event] = harness.emitted
    assert isinstance(event, EmailOpened)
    assert (event.org_id, event.email_id, event.recipient) == ("acme", OLD_EMAIL, "ann@example.org")
    assert event.producer == "tracker"
    assert event.occurred_at == NOW
    assert uuid.UUID(event.event_id).version == 7
    assert (event.verdict, event.label) == (Verdict.HUMAN, "")
    assert event.user_agent == BROWSER
    assert event.ip == "203.0.113.0"


def test_every_open_gets_a_fresh_event_id() -> None:
    harness = Harness()
    for _ in range(3):
        harness.tracker.open(open_token(), BROWSER, CLIENT)
    assert len({event.event_id for event in harness.emitted}) == 3


def test_a_long_user_agent_is_cut_to_a_sane_length() -> None:
    harness = Harness()
    harness.tracker.open(open_token(), BROWSER + "x" * 5000, None)
    [event] = harness.emitted
    assert len(event.user_agent) == 512
    assert event.ip == ""


@pytest.mark.parametrize(
    ("token", "refusal"),
    [
        ("garbage", NotRecorded.INVALID_TOKEN),
        (click_token(), NotRecorded.WRONG_KIND),
        (open_token(org_id="Not A Subject"), NotRecorded.BAD_CLAIMS),
        (open_token(email_id="has space"), NotRecorded.BAD_CLAIMS),
    ],
)
def test_an_open_with_a_bad_token_records_nothing(token: str, refusal: NotRecorded) -> None:
    harness = Harness()
    assert harness.tracker.open(token, BROWSER, CLIENT) is refusal
    assert harness.emitted == []


def test_a_human_click_redirects_at_once_and_is_recorded_one_span_later() -> None:
    harness = Harness()
    assert harness.tracker.click(click_token(), BROWSER, CLIENT) == "https://example.org/a"
    assert harness.emitted == []
    assert harness.tracker.held == 1
    harness.fire()
    [event] = harness.emitted
    assert isinstance(event, EmailClicked)
    assert event.url == "https://example.org/a"
    assert (event.verdict, event.label) == (Verdict.HUMAN, "")
    assert event.occurred_at == NOW
    assert harness.tracker.held == 0


def test_a_scanner_click_is_recorded_at_once_as_a_machine() -> None:
    harness = Harness()
    harness.tracker.click(click_token(), "Mimecast URL Protect", CLIENT)
    [event] = harness.emitted
    assert (event.verdict, event.label) == (Verdict.MACHINE, "mimecast")
    assert harness.timers == []


def test_a_click_right_after_composing_is_an_early_click() -> None:
    harness = Harness()
    fresh = new_id(int((NOW - timedelta(seconds=1)).timestamp() * 1000))
    harness.tracker.click(click_token(email_id=fresh), BROWSER, CLIENT)
    [event] = harness.emitted
    assert (event.verdict, event.label) == (Verdict.MACHINE, "early_click")


def test_every_click_of_a_burst_is_flagged_the_first_ones_too() -> None:
    harness = Harness()
    for n, url in enumerate(
        ("https://example.org/a", "https://example.org/b", "https://example.org/c")
    ):
        harness.monotonic = 100.0 + n * 0.2
        harness.tracker.click(click_token(url), BROWSER, CLIENT)
    harness.fire()
    assert [(e.verdict, e.label) for e in harness.emitted] == [
        (Verdict.MACHINE, "link_scanner_burst")
    ] * 3


def test_a_click_with_an_unsafe_url_is_refused_and_not_recorded() -> None:
    harness = Harness()
    assert harness.tracker.click(click_token("javascript:alert(1)"), BROWSER, CLIENT) is (
        NotRecorded.UNSAFE_URL
    )
    assert harness.emitted == []
    assert harness.timers == []


def test_an_open_token_is_no_click_token() -> None:
    harness = Harness()
    assert harness.tracker.click(open_token(), BROWSER, CLIENT) is NotRecorded.WRONG_KIND
    assert harness.tracker.link(open_token()) is NotRecorded.WRONG_KIND


def test_resolving_a_link_records_nothing() -> None:
    harness = Harness()
    resolved = harness.tracker.link(click_token())
    assert not isinstance(resolved, NotRecorded)
    assert resolved[1] == "https://example.org/a"
    assert harness.emitted == []
    assert harness.timers == []


def test_held_clicks_are_released_on_stop() -> None:
    harness = Harness()
    harness.tracker.click(click_token("https://example.org/a"), BROWSER, CLIENT)
    harness.tracker.click(click_token("https://example.org/b"), BROWSER, CLIENT)
    harness.tracker.release_held()
    assert len(harness.emitted) == 2
    assert all(timer.cancelled for timer in harness.timers)
    harness.fire()
    assert len(harness.emitted) == 2
