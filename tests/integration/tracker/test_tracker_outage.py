"""NATS going away: the tracker keeps answering, and publishes its backlog once, when it returns."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import httpx
from prometheus_client import REGISTRY

from mailfold.cli.embedded import EmbeddedNats
from mailfold.events import EmailClicked, EmailOpened, Keyring, TokenKind, TrackingClaims, new_id

if TYPE_CHECKING:
    from tests.integration.tracker.conftest import StartTracker, Stream

BROWSER = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36"
)


def old_email_id() -> str:
    return new_id(int(time.time() * 1000) - 86_400_000)


class Traffic:
    """Opens and clicks from a browser, each for its own recipient, until told to stop."""

    def __init__(self, http: httpx.AsyncClient, keyring: Keyring, org_id: str) -> None:
        self.http = http
        self.keyring = keyring
        self.org_id = org_id
        self.sent: list[str] = []
        self.statuses: list[int] = []
        self._stop = asyncio.Event()

    async def one(self, phase: str) -> None:
        n = len(self.sent)
        recipient = f"{phase}{n}@example.org"
        if n % 5 == 4:
            claims = TrackingClaims(
                TokenKind.CLICK, self.org_id, old_email_id(), recipient, f"https://example.org/{n}"
            )
            response = await self.http.get(f"/c/{self.keyring.sign(claims)}")
        else:
            claims = TrackingClaims(TokenKind.OPEN, self.org_id, old_email_id(), recipient)
            response = await self.http.get(f"/o/{self.keyring.sign(claims)}.gif")
        self.sent.append(recipient)
        self.statuses.append(response.status_code)

    async def run(self, phase: str) -> None:
        while not self._stop.is_set():
            await self.one(phase)
            await asyncio.sleep(0.01)

    def stop(self) -> None:
        self._stop.set()


async def wait_for_health(http: httpx.AsyncClient, status: int, timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while True:
            if (await http.get("/healthz")).status_code == status:
                return
            await asyncio.sleep(0.05)


async def test_a_nats_restart_during_traffic_loses_and_duplicates_no_event(
    fresh_nats: EmbeddedNats, start_tracker: StartTracker, keyring: Keyring, stream: Stream,
    org_id: str,
) -> None:  # fmt: skip
    # A short acknowledgement timeout, so that the outage outlasts it and publishes are retried.
    async with (
        start_tracker(fresh_nats.url, publish_timeout_s=0.3) as service,
        httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{service.port}", headers={"user-agent": BROWSER}
        ) as http,
    ):
        failures = "mailfold_tracker_publish_failures_total"
        failed_before = REGISTRY.get_sample_value(failures) or 0.0
        traffic = Traffic(http, keyring, org_id)
        for _ in range(20):
            await traffic.one("before")
        running = asyncio.create_task(traffic.run("around"))
        await asyncio.sleep(0.2)
        await asyncio.to_thread(fresh_nats.kill)
        await wait_for_health(http, 503)
        for _ in range(30):
            await traffic.one("during")
        async with asyncio.timeout(30):
            while True:
                if (REGISTRY.get_sample_value(failures) or 0.0) > failed_before:
                    break
                await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # a few more rounds of retries against nobody
        await asyncio.to_thread(fresh_nats.restart)
        await wait_for_health(http, 200)
        for _ in range(20):
            await traffic.one("after")
        traffic.stop()
        await running

        assert set(traffic.statuses) <= {200, 302}
        events = await stream.settle(http, fresh_nats.url, org_id)

    recorded = [e for e in events if isinstance(e, EmailOpened | EmailClicked)]
    assert len(recorded) == len(events)
    assert sorted(e.recipient for e in recorded) == sorted(traffic.sent)
    assert len({e.event_id for e in recorded}) == len(recorded)
    assert any(r.startswith("during") for r in traffic.sent)


async def test_stop_publishes_the_buffer_before_returning(
    fresh_nats: EmbeddedNats, start_tracker: StartTracker, keyring: Keyring, stream: Stream,
    org_id: str,
) -> None:  # fmt: skip
    async with (
        start_tracker(fresh_nats.url) as service,
        httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{service.port}", headers={"user-agent": BROWSER}
        ) as http,
    ):
        traffic = Traffic(http, keyring, org_id)
        for _ in range(40):
            await traffic.one("last")
    # The context has stopped the tracker: held clicks decided, buffer flushed.
    events = await stream.events(fresh_nats.url, org_id, lambda seen: len(seen) >= 40)
    assert sorted(e.recipient for e in events if isinstance(e, EmailOpened | EmailClicked)) == (
        sorted(traffic.sent)
    )


async def test_stopping_while_nats_is_away_waits_a_bounded_time_and_counts_the_loss(
    fresh_nats: EmbeddedNats, start_tracker: StartTracker, keyring: Keyring, org_id: str
) -> None:
    dropped = "mailfold_tracker_events_dropped_total"
    before = REGISTRY.get_sample_value(dropped, {"reason": "shutdown"}) or 0.0
    async with (
        start_tracker(fresh_nats.url, flush_timeout_s=0.5) as service,
        httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{service.port}", headers={"user-agent": BROWSER}
        ) as http,
    ):
        await asyncio.to_thread(fresh_nats.kill)
        await wait_for_health(http, 503)
        traffic = Traffic(http, keyring, org_id)
        for _ in range(3):
            await traffic.one("lost")
        assert traffic.statuses == [200, 200, 200]
    after = REGISTRY.get_sample_value(dropped, {"reason": "shutdown"}) or 0.0
    assert after == before + 3
