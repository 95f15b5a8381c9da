"""A steady, bounded load on the pipeline, as its clients make it, and a record of every answer.

Three kinds of client, each starting requests at a fixed pace while the load runs:
- a CRM composing email over HTTP with an Idempotency-Key, retrying the same request on a
  connection error or a 5xx (as the API asks: the key makes a retry safe);
- mail servers delivering inbound mail over SMTP, retrying the same message on a 4xx reply or a
  lost connection (as an MTA keeps a message queued);
- recipients' browsers loading pixels and following tracked links of the emails composed so
  far (a browser does not retry a pixel).

Every request carries a key that the event it causes carries too (the email's subject, the
browser's User-Agent), so the stream can be checked request by request.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
import time
import uuid
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import TYPE_CHECKING

import aiosmtplib
import httpx

from mailfold.events import Keyring, TokenKind, TrackingClaims
from mailfold.runtime.settings import CommonSettings

if TYPE_CHECKING:
    from tests.integration.cluster.conftest import ClusterStack

SUBJECT_PREFIX = "fault "
AGENT_PREFIX = "Mozilla/5.0 (X11; Linux x86_64) fault/"
# How long one client keeps retrying one request before it gives up on it.
GIVE_UP_S = 60.0


@dataclass
class Request:
    """One request and every answer it got, attempt by attempt."""

    kind: str  # compose, inbound, open or click
    key: str
    answers: list[str] = field(default_factory=list)  # "202", "503", "451", "ConnectError"...
    acknowledged: bool = False
    email_id: str | None = None  # what ingest answered for a compose
    seconds: float = 0.0  # from the first attempt to the last answer, retries included

    @property
    def retries(self) -> int:
        return max(len(self.answers) - 1, 0)


def event_key(subject_or_agent: str) -> str | None:
    """The request key an event carries in its subject or User-Agent, if it came from the load."""
    if subject_or_agent.startswith(SUBJECT_PREFIX):
        return subject_or_agent[len(SUBJECT_PREFIX) :]
    if subject_or_agent.startswith(AGENT_PREFIX):
        return subject_or_agent[len(AGENT_PREFIX) :]
    return None


class Load:
    """Composes, inbound messages and tracker hits at a steady pace, until told to stop."""

    def __init__(
        self,
        stack: ClusterStack,
        *,
        compose_every_s: float = 0.5,
        inbound_every_s: float = 0.8,
        hit_every_s: float = 0.5,
        max_in_flight: int = 24,
    ) -> None:
        self._stack = stack
        self._pace = {
            "compose": compose_every_s,
            "inbound": inbound_every_s,
            "hit": hit_every_s,
        }
        self._slots = asyncio.Semaphore(max_in_flight)
        self._rng = random.Random()
        self._keyring = Keyring.parse(CommonSettings.from_env().tracking_keys)
        self._run = uuid.uuid4().hex[:6]
        self.requests: list[Request] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, stop: asyncio.Event) -> None:
        """Start requests at the pace until `stop` is set, then let every one finish."""
        http = httpx.AsyncClient(timeout=10)
        try:
            pacers = [
                asyncio.create_task(self._pace_of(kind, every, stop, http))
                for kind, every in self._pace.items()
            ]
            await asyncio.gather(*pacers)
            if self._tasks:
                await asyncio.wait(self._tasks)
        finally:
            await http.aclose()

    async def _pace_of(
        self, kind: str, every: float, stop: asyncio.Event, http: httpx.AsyncClient
    ) -> None:
        started = time.monotonic()
        n = 0
        while not stop.is_set():
            n += 1
            if kind == "compose":
                request = Request("compose", f"compose-{self._run}-{n}")
                work = self._compose(request, http)
            elif kind == "inbound":
                request = Request("inbound", f"inbound-{self._run}-{n}")
                work = self._inbound(request)
            else:
                hit = self._hit(n, http)
                if hit is None:  # nothing composed yet to open
                    request = None
                else:
                    request, work = hit
            if request is not None:
                self.requests.append(request)
                task = asyncio.create_task(self._bounded(request, work))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            # A steady pace, whatever the answers take: requests overlap during a fault.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(started + n * every - time.monotonic(), 0))

    async def _bounded(
        self, request: Request, work: collections.abc.Coroutine[object, object, None]
    ) -> None:
        async with self._slots:
            started = time.monotonic()
            try:
                await work
            finally:
                request.seconds = time.monotonic() - started

    async def _compose(self, request: Request, http: httpx.AsyncClient) -> None:
        stack = self._stack
        body = {
            "source": "individual",
            "from": "rep@acme.example",
            "to": [f"lead{self._rng.randrange(50)}@x.example"],
            "subject": SUBJECT_PREFIX + request.key,
            "text": "Hello from the fault test.",
        }
        headers = {"Authorization": f"Bearer {stack.token}", "Idempotency-Key": request.key}
        url = f"{stack.ingest_url}/v1/orgs/{stack.org_id}/emails"
        deadline = time.monotonic() + GIVE_UP_S
        delay = 0.25
        while time.monotonic() < deadline:
            try:
                response = await http.post(url, json=body, headers=headers)
            except httpx.TransportError as exc:
                request.answers.append(type(exc).__name__)
            else:
                request.answers.append(str(response.status_code))
                if response.status_code < 300:
                    request.acknowledged = True
                    request.email_id = response.json()["email_id"]
                    return
                if response.status_code < 500:
                    return  # refused: a retry would be refused again
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _inbound(self, request: Request) -> None:
        stack = self._stack
        message = EmailMessage()
        message["From"] = f"customer{self._rng.randrange(50)}@x.example"
        message["To"] = "rep@acme.example"
        message["Subject"] = SUBJECT_PREFIX + request.key
        message["Message-ID"] = f"<{request.key}@x.example>"
        message["Date"] = "Tue, 02 Jan 2024 03:04:05 +0000"
        message.set_content("A question about the offer.\n")
        raw = message.as_bytes().replace(b"\n", b"\r\n")
        recipient = f"in+{stack.org_id}@in.acme.example"
        deadline = time.monotonic() + GIVE_UP_S
        delay = 0.25
        while time.monotonic() < deadline:
            try:
                async with aiosmtplib.SMTP(
                    hostname="127.0.0.1", port=stack.smtp_port, timeout=10
                ) as client:
                    await client.sendmail("customer@x.example", [recipient], raw)
            except aiosmtplib.SMTPResponseException as exc:
                request.answers.append(str(exc.code))
                if exc.code >= 500:
                    return  # refused for good: a mail server would bounce it
            except (aiosmtplib.SMTPException, OSError) as exc:
                request.answers.append(type(exc).__name__)
            else:
                request.answers.append("250")
                request.acknowledged = True
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    def _hit(
        self, n: int, http: httpx.AsyncClient
    ) -> tuple[Request, collections.abc.Coroutine[object, object, None]] | None:
        composed = [r for r in self.requests if r.kind == "compose" and r.email_id]
        if not composed:
            return None
        email_id = self._rng.choice(composed).email_id
        assert email_id is not None
        kind = "click" if n % 3 == 0 else "open"
        request = Request(kind, f"{kind}-{self._run}-{n}")
        if kind == "open":
            claims = TrackingClaims(TokenKind.OPEN, self._stack.org_id, email_id, "lead@x.example")
            path, expected = f"/o/{self._keyring.sign(claims)}.gif", 200
        else:
            claims = TrackingClaims(
                TokenKind.CLICK,
                self._stack.org_id,
                email_id,
                "lead@x.example",
                f"https://acme.example/offer?n={n}",
            )
            path, expected = f"/c/{self._keyring.sign(claims)}", 302
        return request, self._get(request, http, path, expected)

    async def _get(
        self, request: Request, http: httpx.AsyncClient, path: str, expected: int
    ) -> None:
        try:
            response = await http.get(
                self._stack.tracker_url + path, headers={"User-Agent": AGENT_PREFIX + request.key}
            )
        except httpx.TransportError as exc:
            request.answers.append(type(exc).__name__)
            return
        request.answers.append(str(response.status_code))
        request.acknowledged = response.status_code == expected

    def summary(self) -> str:
        """What the load achieved: requests, answers by code and retries, per kind."""
        lines = []
        for kind in ("compose", "inbound", "open", "click"):
            mine = [r for r in self.requests if r.kind == kind]
            answers = collections.Counter(a for r in mine for a in r.answers)
            slowest = max((r.seconds for r in mine), default=0.0)
            lines.append(
                f"{kind}: {len(mine)} requests, {sum(r.acknowledged for r in mine)} acknowledged, "
                f"{sum(r.retries for r in mine)} retries, answers {dict(sorted(answers.items()))}, "
                f"slowest {slowest:.1f} s"
            )
        return "\n".join(lines)
