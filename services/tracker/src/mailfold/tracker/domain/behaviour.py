"""Machine detection by behaviour: clicks too soon after sending, and bursts across a message's links.

The tracker keeps no database, so both rules work from what a request carries and from a small,
bounded memory of recent clicks.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict, deque
from datetime import datetime
from typing import Final

from mailfold.events.ids import id_time_ms

EARLY_CLICK_LABEL: Final = "early_click"
BURST_LABEL: Final = "link_scanner_burst"


def seconds_since_compose(email_id: str, now: datetime) -> float | None:
    """Seconds from the email's creation to `now`, read from its UUIDv7 id; None for other ids.

    The email id is minted when the email is composed, so this is an upper bound on the time
    since it was sent: a click earlier than a threshold after composing is earlier after sending.
    """
    try:
        parsed = uuid.UUID(email_id)
    except ValueError:
        return None
    if parsed.version != 7:
        return None
    return now.timestamp() - id_time_ms(email_id) / 1000


def is_early_click(email_id: str, now: datetime, threshold_s: float) -> bool:
    """Whether a click came within `threshold_s` of composing (or before it: clocks disagree)."""
    if threshold_s <= 0:
        return False
    elapsed = seconds_since_compose(email_id, now)
    return elapsed is not None and elapsed < threshold_s


class BurstWindow:
    """Recent clicks per email, to tell a scanner following every link from a person.

    A click belongs to a burst when some interval of `span_s` seconds holds it and clicks on at
    least `distinct_urls` different URLs of the same email. Memory is bounded: at most
    `max_clicks` per email and `max_emails` emails, the least recently clicked forgotten first.
    Times are monotonic seconds, given by the caller.
    """

    def __init__(
        self,
        *,
        span_s: float = 1.0,
        distinct_urls: int = 3,
        max_emails: int = 50_000,
        max_clicks: int = 64,
    ) -> None:
        self.span_s = span_s
        self.distinct_urls = distinct_urls
        self._max_emails = max_emails
        self._max_clicks = max_clicks
        self._clicks: OrderedDict[str, deque[tuple[float, str]]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._clicks)

    def record(self, email_id: str, url: str, at: float) -> None:
        """Remember a click; forgets what can no longer share a burst with a new click."""
        clicks = self._clicks.get(email_id)
        if clicks is None:
            clicks = self._clicks[email_id] = deque(maxlen=self._max_clicks)
            while len(self._clicks) > self._max_emails:
                self._clicks.popitem(last=False)
        else:
            self._clicks.move_to_end(email_id)
            # A held click is decided span_s (and a little lag) after it happened, looking span_s
            # back from itself: older clicks can no longer matter.
            horizon = at - 3 * self.span_s
            while clicks and clicks[0][0] < horizon:
                clicks.popleft()
        clicks.append((at, url))

    def in_burst(self, email_id: str, at: float) -> bool:
        """Whether the click at `at` belongs to a burst, given the clicks recorded so far."""
        clicks = self._clicks.get(email_id)
        if clicks is None:
            return False
        near = sorted(c for c in clicks if at - self.span_s <= c[0] <= at + self.span_s)
        for start, _ in near:
            if start > at:
                break
            urls = {url for t, url in near if start <= t <= start + self.span_s}
            if len(urls) >= self.distinct_urls:
                return True
        return False
