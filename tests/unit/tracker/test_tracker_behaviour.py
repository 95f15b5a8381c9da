"""Behaviour rules: a click too soon after composing, and a burst across a message's links."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from mailfold.events import new_id
from mailfold.tracker.domain.behaviour import BurstWindow, is_early_click, seconds_since_compose

NOW = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)


def email_id_at(moment: datetime) -> str:
    return new_id(int(moment.timestamp() * 1000))


def test_the_email_ids_timestamp_tells_how_long_ago_it_was_composed() -> None:
    email_id = email_id_at(NOW - timedelta(seconds=90))
    assert seconds_since_compose(email_id, NOW) == 90


def test_ids_that_are_not_uuidv7_carry_no_time() -> None:
    assert seconds_since_compose("legacy-42", NOW) is None
    assert seconds_since_compose("6ba7b810-9dad-41d1-80b4-00c04fd430c8", NOW) is None


def test_a_click_within_the_threshold_is_early_and_a_later_one_is_not() -> None:
    assert is_early_click(email_id_at(NOW - timedelta(seconds=2)), NOW, 5.0)
    assert not is_early_click(email_id_at(NOW - timedelta(seconds=60)), NOW, 5.0)


def test_a_click_before_the_email_existed_is_early() -> None:
    assert is_early_click(email_id_at(NOW + timedelta(seconds=30)), NOW, 5.0)


def test_a_zero_threshold_turns_the_rule_off() -> None:
    assert not is_early_click(email_id_at(NOW), NOW, 0)
    assert not is_early_click("legacy-42", NOW, 5.0)


def test_three_different_links_within_a_second_are_a_burst_every_click_of_it() -> None:
    window = BurstWindow()
    for at, url in ((10.0, "a"), (10.3, "b"), (10.6, "c")):
        window.record("e1", url, at)
    assert all(window.in_burst("e1", at) for at in (10.0, 10.3, 10.6))


def test_the_same_link_clicked_again_is_no_burst() -> None:
    window = BurstWindow()
    for at in (10.0, 10.1, 10.2, 10.3):
        window.record("e1", "a", at)
    assert not window.in_burst("e1", 10.0)


def test_two_links_are_no_burst() -> None:
    window = BurstWindow()
    window.record("e1", "a", 10.0)
    window.record("e1", "b", 10.1)
    window.record("e1", "a", 10.2)
    assert not window.in_burst("e1", 10.1)


def test_clicks_spread_over_more_than_the_span_are_no_burst() -> None:
    window = BurstWindow()
    for at, url in ((10.0, "a"), (10.8, "b"), (11.6, "c")):
        window.record("e1", url, at)
    assert not any(window.in_burst("e1", at) for at in (10.0, 10.8, 11.6))


def test_bursts_are_counted_per_email() -> None:
    window = BurstWindow()
    window.record("e1", "a", 10.0)
    window.record("e2", "b", 10.1)
    window.record("e3", "c", 10.2)
    assert not window.in_burst("e1", 10.0)
    assert not window.in_burst("unknown", 10.0)


def test_a_late_click_after_a_burst_is_not_part_of_it() -> None:
    window = BurstWindow()
    for at, url in ((10.0, "a"), (10.2, "b"), (10.4, "c"), (12.0, "d")):
        window.record("e1", url, at)
    assert window.in_burst("e1", 10.4)
    assert not window.in_burst("e1", 12.0)


def test_memory_is_bounded_in_emails_and_clicks() -> None:
    window = BurstWindow(max_emails=100, max_clicks=4)
    for n in range(1000):
        window.record(f"e{n}", "a", float(n))
    assert len(window) == 100
    for n in range(50):
        window.record("busy", f"u{n}", 2000.0)
    assert window.in_burst("busy", 2000.0)


@given(
    st.lists(
        st.tuples(st.floats(0, 10, allow_nan=False), st.sampled_from("abcde")),
        min_size=1,
        max_size=30,
    )
)
def test_a_burst_needs_enough_distinct_links_near_the_click(
    clicks: list[tuple[float, str]],
) -> None:
    """Each click is judged one span after it happened, as the tracker does."""
    window = BurstWindow()
    clicks = sorted(clicks)
    verdicts: dict[int, bool] = {}
    judged = 0
    for at, url in clicks:
        while judged < len(clicks) and clicks[judged][0] + window.span_s < at:
            verdicts[judged] = window.in_burst("e1", clicks[judged][0])
            judged += 1
        window.record("e1", url, at)
    for i in range(judged, len(clicks)):
        verdicts[i] = window.in_burst("e1", clicks[i][0])
    for i, (at, _) in enumerate(clicks):
        near = {url for t, url in clicks if abs(t - at) <= window.span_s}
        within = {url for t, url in clicks if at <= t <= at + window.span_s}
        if verdicts[i]:
            assert len(near) >= window.distinct_urls
        if len(within) >= window.distinct_urls:
            assert verdicts[i]
