"""Webhook delivery throughput next to a bare httpx client posting the same signed bodies.

A backlog of events waits in MAIL_EVENTS; the webhooks service (in this process, on a real
nats-server) folds, queues, signs and posts each to one endpoint: a receiver on loopback, in a
process of its own (this script with `--receiver`), answering 204. The baseline is a bare
`httpx.AsyncClient` posting the same bodies with the same headers and the same concurrency to the
same receiver. Both rates are timed by the receiver, from the first request it gets to the last
(the service's start-up and the bare client's set-up are left out of both), and this process only
waits for the receiver's answer meanwhile: nothing but the measured client spends its CPU.
Both run on uvloop, the event loop `mailfold serve webhooks` runs on (`run_until_signalled`).
Key `webhooks.deliver`.

`--loops` measures instead the retry loops (WEBHOOK_JOBS): the service's, on FastStream
subscribers made per endpoint at run time, next to the same loops on bare nats-py pull
subscriptions (`BareLoops`), in the same sitting: the receiver fails every event's first
attempt and the rate is that of the retries it then accepts. Printed, not recorded.

    uv run --frozen python bench/webhooks.py [--loops]
"""

# ruff: noqa: E402 - the faststream package is loaded before bench/ goes back on sys.path
from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

# Run as a script, this file's folder comes first on sys.path, where bench/faststream.py would
# shadow the faststream package the service imports: load the package without it.
_HERE = (
    sys.path.pop(0)
    if sys.path and Path(sys.path[0]).resolve() == Path(__file__).parent.resolve()
    else None
)
import faststream  # noqa: F401

if _HERE is not None:
    sys.path.insert(0, _HERE)
import httpx
import uvloop
from nats.aio.msg import Msg
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from _results import record
from mailfold.cli.embedded import EmbeddedNats, free_port
from mailfold.events import EmailComposed, RecordRef, encode, new_id
from mailfold.events.model import Module, Source
from mailfold.runtime import bus
from mailfold.runtime.logging import configure_logging
from mailfold.runtime.ops import HttpServer
from mailfold.runtime.orgs import create_org
from mailfold.webhooks.bootstrap import Settings, start
from mailfold.webhooks.domain import signing
from mailfold.webhooks.domain.endpoints import new_secret, secret_key
from mailfold.webhooks.entrypoints.first import Lane
from mailfold.webhooks.entrypoints.workers import FETCH_WAIT_S, IN_PROGRESS_AFTER_S, Workers

EVENTS: Final = 3000
CONCURRENCY: Final = 8
ROUNDS: Final = 3  # best kept: the machine is shared, other load only ever slows a round


class Counter:
    """The receiver: notes when each request arrived; `GET /span?n=N` answers once N arrived."""

    def __init__(self) -> None:
        self.arrivals: list[float] = []
        self.changed = asyncio.Event()
        self.seen: set[str] = set()

    async def hook(self, request: Request) -> Response:
        await request.body()
        self.arrivals.append(time.perf_counter())
        self.changed.set()
        return Response(status_code=204)

    async def flaky(self, request: Request) -> Response:
        """500 on an event's first attempt (not counted), 204 on the next (counted)."""
        await request.body()
        webhook_id = request.headers["webhook-id"]
        if webhook_id not in self.seen:
            self.seen.add(webhook_id)
            return Response(status_code=500)
        return await self.hook(request)

    async def reset(self, _: Request) -> Response:
        self.arrivals.clear()
        self.seen.clear()
        return Response(status_code=204)

    async def span(self, request: Request) -> Response:
        """`{"count", "seconds"}` from the first arrival to the n-th, once n arrived."""
        n = int(request.query_params["n"])
        while len(self.arrivals) < n:
            self.changed.clear()
            await self.changed.wait()
        return JSONResponse({"count": n, "seconds": self.arrivals[n - 1] - self.arrivals[0]})


async def serve_receiver(port: int) -> None:
    """`--receiver PORT`: run the receiver until killed."""
    counter = Counter()
    app = Starlette(
        routes=[
            Route("/hook", counter.hook, methods=["POST"]),
            Route("/flaky", counter.flaky, methods=["POST"]),
            Route("/reset", counter.reset, methods=["POST"]),
            Route("/span", counter.span, methods=["GET"]),
        ]
    )
    server = HttpServer(app, "127.0.0.1", port)
    await server.start()
    await asyncio.Event().wait()


class Receiver:
    """The receiver process, seen from here."""

    def __init__(self, port: int, path: str = "/hook") -> None:
        self.url = f"http://127.0.0.1:{port}{path}"
        self._base = f"http://127.0.0.1:{port}"
        self._http = httpx.AsyncClient(timeout=300.0)  # one client: making one loads the CA bundle

    async def reset(self) -> None:
        (await self._http.post(f"{self._base}/reset")).raise_for_status()

    async def rate(self, n: int) -> float:
        """Requests/s the receiver got, first to n-th (one request, answered once n arrived)."""
        answer = (await self._http.get(f"{self._base}/span", params={"n": n})).json()
        return float(answer["count"] - 1) / float(answer["seconds"])

    async def close(self) -> None:
        await self._http.aclose()


def composed(org_id: str) -> EmailComposed:
    """A new email's first event (every round's emails are new, as the bare client's bodies)."""
    return EmailComposed(
        event_id=new_id(),
        org_id=org_id,
        email_id=new_id(),
        occurred_at=datetime.now(UTC),
        producer="bench",
        source=Source.INDIVIDUAL,
        from_addr="rep@crm.example",
        to=("ann@example.org",),
        subject="Quarterly review",
        records=(RecordRef(record_id="lead-1", module=Module.LEADS),),
    )


class BareLoops(Workers):
    """The retry loops as they were before they moved onto FastStream: a nats-py pull
    subscription per endpoint, and `concurrency` workers fed by one fetcher (the baseline of
    `--loops`)."""

    async def _loop(self, org_id: str, endpoint_id: str) -> None:
        """`concurrency` workers, fed by one fetcher that keeps up to as many jobs ready.

        The fetch for the next jobs overlaps the attempts in flight, so a pull request's round
        trip is not on each delivery's path, and it asks for jobs once half the buffer is free,
        not for each job. A job waits in the buffer at most one attempt.
        """
        sub = await self._queue.subscribe(org_id, endpoint_id)
        ready: asyncio.Queue[tuple[float, Msg]] = asyncio.Queue()
        room = asyncio.Semaphore(self._concurrency)
        lane = self._lanes[endpoint_id]
        workers = [
            asyncio.create_task(self._work(ready, room, lane)) for _ in range(self._concurrency)
        ]
        # Refill once half the buffer is free: one pull request brings several jobs.
        refill = max(1, self._concurrency // 2)
        try:
            while True:
                for _ in range(refill):
                    await room.acquire()
                free = refill
                while free < self._concurrency and not room.locked():
                    await room.acquire()
                    free += 1
                try:
                    messages = await sub.fetch(free, timeout=FETCH_WAIT_S)
                except TimeoutError:
                    messages = []
                now = time.monotonic()
                for message in messages:
                    ready.put_nowait((now, message))
                for _ in range(free - len(messages)):
                    room.release()
        finally:
            for task in workers:
                task.cancel()
            for task in workers:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _work(
        self, ready: asyncio.Queue[tuple[float, Msg]], room: asyncio.Semaphore, lane: Lane
    ) -> None:
        while True:
            fetched_at, message = await ready.get()
            room.release()
            # The endpoint's slots are shared with its first attempts.
            async with lane.slots:
                if time.monotonic() - fetched_at > IN_PROGRESS_AFTER_S:
                    # It waited behind slow attempts: restart its ack_wait before this attempt.
                    with contextlib.suppress(Exception):
                        await message.in_progress()
                await self._one(message, lane)


async def service_round(
    nats_url: str,
    receiver: Receiver,
    org_id: str,
    token: str,
    loops: type[Workers] = Workers,
    schedule_s: tuple[float, ...] = (5.0,),
) -> float:
    """Events/s through the webhooks service, from a backlog of EVENTS in the stream."""
    settings = Settings(
        nats_url=nats_url,
        port=0,
        allow_loopback=True,
        concurrency=CONCURRENCY,
        schedule_s=schedule_s,
    )
    service = await start(settings, loops=loops)
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{service.port}", headers={"authorization": f"Bearer {token}"}
    ) as api:
        created = await api.post(f"/v1/orgs/{org_id}/webhooks", json={"url": receiver.url})
        created.raise_for_status()
        endpoint_id = created.json()["id"]
    await service.stop()
    nc = await bus.connect(nats_url, "bench-publisher", reconnect=False)
    js = nc.jetstream()
    acks = [await bus.start_publish(js, composed(org_id)) for _ in range(EVENTS)]
    await asyncio.gather(*acks)
    await bus.close(nc)
    await receiver.reset()
    service = await start(settings, loops=loops)
    rate = await receiver.rate(EVENTS)
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{service.port}", headers={"authorization": f"Bearer {token}"}
    ) as api:
        await api.delete(f"/v1/orgs/{org_id}/webhooks/{endpoint_id}")
    await service.stop()
    return rate


async def bare_round(receiver: Receiver, org_id: str) -> float:
    """Events/s from a bare httpx client posting the same kind of signed bodies."""
    key = secret_key(new_secret())
    bodies = [encode(composed(org_id)) for _ in range(EVENTS)]
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    await receiver.reset()
    async with httpx.AsyncClient(timeout=15.0) as client:

        async def worker() -> None:
            while not queue.empty():
                body = queue.get_nowait()
                headers = signing.headers([key], new_id(), int(time.time()), body)
                response = await client.post(receiver.url, content=body, headers=headers)
                assert response.status_code == 204

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return await receiver.rate(EVENTS)


async def compare_loops(nats_url: str, port: int, token: str) -> None:
    """`--loops`: retries/s through the FastStream loops and the bare ones, alternately."""
    receiver = Receiver(port, "/flaky")
    bare, on_faststream = 0.0, 0.0
    for _ in range(ROUNDS):
        bare = max(
            bare, await service_round(nats_url, receiver, "bench", token, BareLoops, (0.05,))
        )
        on_faststream = max(
            on_faststream,
            await service_round(nats_url, receiver, "bench", token, Workers, (0.05,)),
        )
    await receiver.close()
    print(
        f"webhooks.retry_loops: FastStream {on_faststream:.4g} retries/s vs bare nats-py "
        f"{bare:.4g} retries/s -> ratio {on_faststream / bare:.3f}",
        flush=True,
    )


async def main(*, loops: bool = False) -> None:
    configure_logging("webhooks", level="info", json=True)  # as `mailfold serve webhooks` logs
    port = free_port()
    child = subprocess.Popen([sys.executable, __file__, "--receiver", str(port)])  # noqa: ASYNC220
    try:
        with tempfile.TemporaryDirectory() as tmp, EmbeddedNats(Path(tmp) / "nats") as nats_server:
            nc = await bus.connect(nats_server.url, "bench-setup", reconnect=False)
            js = nc.jetstream()
            await bus.ensure_topology(js)
            token = await create_org(await bus.kv(js, bus.BUCKET_ORGS), "bench")
            await bus.close(nc)
            receiver = Receiver(port)
            async with asyncio.timeout(30):
                while True:
                    try:
                        await receiver.reset()
                        break
                    except httpx.HTTPError:
                        await asyncio.sleep(0.1)
            if loops:
                await receiver.close()
                await compare_loops(nats_server.url, port, token)
                return
            served, bare = 0.0, 0.0
            for _ in range(ROUNDS):
                bare = max(bare, await bare_round(receiver, "bench"))
                served = max(served, await service_round(nats_server.url, receiver, "bench", token))
            await receiver.close()
    finally:
        child.send_signal(signal.SIGTERM)
        child.wait(timeout=30)
    record("webhooks.deliver", served, "events/s", bare)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--receiver":
        asyncio.run(serve_receiver(int(sys.argv[2])))
    else:
        # The service's own loop, and the same loop for the bare client it is compared with.
        uvloop.run(main(loops="--loops" in sys.argv[1:]))
