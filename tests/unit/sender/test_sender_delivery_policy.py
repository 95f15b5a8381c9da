"""Reading a server's answer, and the retry schedule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailfold.events import BounceKind
from mailfold.sender.domain.delivery import (
    SKIPPED,
    STATUS_NO_ANSWER,
    AttemptVerdict,
    RetryPolicy,
    enhanced_status,
    failure,
    reply,
)
from mailfold.sender.domain.routes import Hop, Routes

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("code", "text", "verdict", "status"),
    [
        (250, "2.0.0 Ok: queued as X", AttemptVerdict.DELIVERED, "2.0.0"),
        (250, "Ok", AttemptVerdict.DELIVERED, None),
        (550, "5.1.1 <a@b>: user unknown", AttemptVerdict.BOUNCED, "5.1.1"),
        (554, "5.7.1 blocked", AttemptVerdict.BOUNCED, "5.7.1"),
        (451, "4.7.1 greylisted", AttemptVerdict.DEFERRED, "4.7.1"),
        (421, "service not available", AttemptVerdict.DEFERRED, None),
        (450, "5.1.1 mismatched class", AttemptVerdict.DEFERRED, None),
    ],
)
def test_a_reply_code_decides_the_verdict_and_its_text_the_status(
    code: int, text: str, verdict: AttemptVerdict, status: str | None
) -> None:
    attempt = reply(code, text, "RCPT", "mx.test")
    assert attempt.verdict is verdict
    assert attempt.status == status
    assert attempt.diagnostic == f"{code} {text}"


def test_failures_without_a_reply_are_deferrals_unless_permanent() -> None:
    assert failure("refused", "CONN", STATUS_NO_ANSWER).verdict is AttemptVerdict.DEFERRED
    assert failure("no domain", "DNS", "5.1.2", permanent=True).verdict is AttemptVerdict.BOUNCED
    assert SKIPPED.verdict is AttemptVerdict.SKIPPED


def test_a_bounce_is_classified_into_reason_and_kind() -> None:
    hard = reply(550, "5.1.1 <a@b>: Recipient address rejected: User unknown", "RCPT", None)
    assert hard.classify() == ("userunknown", BounceKind.HARD)
    full = reply(552, "5.2.2 Mailbox full", "RCPT", None)
    assert full.classify() == ("mailboxfull", BounceKind.SOFT)


def test_enhanced_status_is_read_only_from_the_start_of_the_text() -> None:
    assert enhanced_status(550, "5.01.001 x") == "5.1.1"
    assert enhanced_status(550, "user 5.1.1 unknown") is None
    assert enhanced_status(None, "4.4.1 x") == "4.4.1"


def test_backoff_doubles_from_the_base_up_to_the_cap() -> None:
    policy = RetryPolicy(base_s=60, factor=2, cap_s=600, max_age_s=86400)
    assert [policy.delay(n) for n in range(1, 7)] == [60, 120, 240, 480, 600, 600]
    assert policy.delay(10_000) == 600


def test_the_last_retry_happens_at_the_deadline_then_retries_stop() -> None:
    policy = RetryPolicy(base_s=60, factor=2, cap_s=3600, max_age_s=300)
    assert policy.next_retry(1, T0, T0) == T0 + timedelta(seconds=60)
    assert policy.next_retry(3, T0, T0 + timedelta(seconds=200)) == T0 + timedelta(seconds=300)
    assert policy.next_retry(4, T0, T0 + timedelta(seconds=300)) is None


@given(st.integers(1, 200), st.floats(0, 10**6))
def test_a_retry_is_never_past_the_deadline(attempt: int, elapsed: float) -> None:
    policy = RetryPolicy()
    now = T0 + timedelta(seconds=elapsed)
    retry_at = policy.next_retry(attempt, T0, now)
    if retry_at is None:
        assert elapsed >= policy.max_age_s
    else:
        assert now < retry_at <= T0 + timedelta(seconds=policy.max_age_s)


def test_routes_prefer_the_exact_domain_over_the_wildcard() -> None:
    routes = Routes.parse("example.org=127.0.0.1:2526, *=127.0.0.1:2527,Big.Example=[::1]:25")
    assert routes.lookup("EXAMPLE.org") == Hop("127.0.0.1", 2526)
    assert routes.lookup("other.test") == Hop("127.0.0.1", 2527)
    assert routes.lookup("big.example") == Hop("::1", 25)
    assert Routes.parse("a.test=mx.a.test").lookup("a.test") == Hop("mx.a.test", 25)
    assert Routes.parse("").lookup("a.test") is None
    assert Hop("mx", 25).name == "mx"
    assert Hop("mx", 2525).name == "mx:2525"


@pytest.mark.parametrize("spec", ["example.org", "=host:25", "a=host:x", "a=host:0", "a=:25"])
def test_a_bad_route_is_refused_with_the_entry(spec: str) -> None:
    with pytest.raises(ValueError, match="route"):
        Routes.parse(spec)
