"""The webhooks service SIGKILLed mid-delivery and restarted: no event lost, repeats dedupable."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.integration.webhooks.conftest import (
    Org,
    Reply,
    StartReceiver,
    add_endpoint,
    make_org,
)
from tests.nats_users import service_env
from tests.processes import ServiceProcess

from mailfold.cli.embedded import EmbeddedNats, free_port
from mailfold.events.subjects import STREAM
from mailfold.runtime import bus
from mailfold.webhooks.adapters.jobs import JOBS_STREAM, consumer_name
from mailfold.webhooks.entrypoints.subscriber import DURABLE

EVENTS = 30


def _service(nats_url: str, log: Path) -> ServiceProcess:
    port = free_port()
    env = {
        **os.environ,
        "MAILFOLD_NATS_URL": nats_url,
        **service_env("webhooks"),
        "MAILFOLD_WEBHOOKS_PORT": str(port),
        "MAILFOLD_WEBHOOKS_ALLOW_LOOPBACK": "true",
        "MAILFOLD_WEBHOOKS_TIMEOUT_S": "2",
        "MAILFOLD_WEBHOOKS_ACK_GRACE_S": "1",
        "MAILFOLD_WEBHOOKS_SCHEDULE": "0.2,0.2,0.2",
        "MAILFOLD_WEBHOOKS_CONCURRENCY": "2",
        "MAILFOLD_LOG_JSON": "true",
    }
    return ServiceProcess("webhooks", env, port, log)


async def _restart(service: ServiceProcess) -> None:
    service.start()
    await service.wait_healthy()


def _api(service: ServiceProcess, org: Org) -> httpx.AsyncClient:
    """A client of the service's API with the org's token."""
    return httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{service.health_port}",
        headers={"authorization": f"Bearer {org.token}"},
    )


async def _endpoint(service: ServiceProcess, org: Org, url: str) -> dict[str, Any]:
    async with _api(service, org) as api:
        return await add_endpoint(api, org, url)


@pytest.mark.slow
async def test_sigkill_mid_delivery_loses_no_event_and_repeats_share_their_webhook_id(
    fresh_nats: EmbeddedNats, start_receiver: StartReceiver, tmp_path: Path
) -> None:
    async def slow(_: int) -> Reply:
        await asyncio.sleep(0.1)  # deliveries are in flight when the kill comes
        return 200

    org = await make_org(fresh_nats.url, "crashorg")
    service = _service(fresh_nats.url, tmp_path / "webhooks.log")
    try:
        await _restart(service)
        async with start_receiver(slow) as receiver:
            endpoint = await _endpoint(service, org, receiver.url)
            events = [org.composed(f"crash-{i}") for i in range(EVENTS)]
            await org.publish(*events)
            await receiver.wait_for(4)
            service.kill()
            killed_at = len(receiver.requests)
            assert killed_at < EVENTS  # the kill came mid-delivery

            await _restart(service)
            wanted = {e.event_id for e in events}
            async with asyncio.timeout(60):
                while not wanted <= {r.headers["webhook-id"] for r in receiver.requests}:
                    await receiver.wait_for(len(receiver.requests) + 1)

            bodies = receiver.verified(endpoint["secret"])
            by_id: dict[str, list[dict[str, object]]] = {}
            for request, body in zip(receiver.requests, bodies, strict=True):
                by_id.setdefault(request.headers["webhook-id"], []).append(body)
            # Every event arrived; a repeat carries the same webhook-id and the same body.
            assert set(by_id) == wanted
            for copies in by_id.values():
                assert all(copy == copies[0] for copy in copies)
    finally:
        service.stop()


@pytest.mark.slow
async def test_sigkill_between_fan_out_and_first_attempts_loses_no_event(
    fresh_nats: EmbeddedNats, start_receiver: StartReceiver, tmp_path: Path
) -> None:
    killed = asyncio.Event()

    async def hang_until_killed(_: int) -> Reply:
        await killed.wait()  # the first attempts are in flight, their events unacknowledged
        return 200

    org = await make_org(fresh_nats.url, "crashfirst")
    service = _service(fresh_nats.url, tmp_path / "webhooks.log")
    try:
        await _restart(service)
        async with start_receiver(hang_until_killed) as receiver:
            endpoint = await _endpoint(service, org, receiver.url)
            events = [org.composed(f"first-{i}") for i in range(8)]
            await org.publish(*events)
            await receiver.wait_for(2)  # both slots (MAILFOLD_WEBHOOKS_CONCURRENCY=2) taken
            nc = await bus.connect(fresh_nats.url, "webhooks-test-inspect", reconnect=False)
            try:
                fanned = await nc.jetstream().consumer_info(STREAM, DURABLE)
            finally:
                await bus.close(nc)
            assert fanned.num_ack_pending >= 2  # fanned out, not yet settled
            service.kill()
            killed.set()

            await _restart(service)
            wanted = {e.event_id for e in events}
            async with asyncio.timeout(90):  # the killed copy's events come back after ack_wait
                while not wanted <= {r.headers["webhook-id"] for r in receiver.requests}:
                    await receiver.wait_for(len(receiver.requests) + 1, timeout=90)
            bodies = receiver.verified(endpoint["secret"])
            assert {b["event_id"] for b in bodies} == wanted
    finally:
        service.stop()


@pytest.mark.slow
async def test_a_graceful_stop_finishes_attempts_in_flight_and_hands_back_the_rest(
    fresh_nats: EmbeddedNats, start_receiver: StartReceiver, tmp_path: Path
) -> None:
    async def slow(_: int) -> Reply:
        await asyncio.sleep(1.0)  # both slots are busy when SIGTERM comes
        return 204

    org = await make_org(fresh_nats.url, "stoporg")
    service = _service(fresh_nats.url, tmp_path / "webhooks.log")
    try:
        await _restart(service)
        async with start_receiver(slow) as receiver:
            endpoint = await _endpoint(service, org, receiver.url)
            events = [org.composed(f"stop-{i}") for i in range(8)]
            await org.publish(*events)
            await receiver.wait_for(2)  # MAILFOLD_WEBHOOKS_CONCURRENCY=2: two in flight
            assert await asyncio.to_thread(service.stop) == 0
            in_flight = [r.headers["webhook-id"] for r in receiver.requests]
            # The events not attempted were handed back at once: another consumer of the
            # durable gets them now (held ones would wait for ack_wait); the attempts in flight
            # were answered, recorded and their events acked.
            nc = await bus.connect(fresh_nats.url, "webhooks-test-inspect", reconnect=False)
            try:
                pull = await nc.jetstream().pull_subscribe_bind(DURABLE, STREAM)
                back = await pull.fetch(len(events), timeout=5)
                while len(back) < len(events) - len(in_flight):
                    try:
                        back += await pull.fetch(len(events), timeout=2)
                    except TimeoutError:
                        break
                handed_back = {json.loads(m.data)["event_id"] for m in back}
                for message in back:
                    await message.nak()  # for the restarted service
                await nc.flush()
            finally:
                await bus.close(nc)
            assert len(in_flight) == 2
            assert handed_back == {e.event_id for e in events} - set(in_flight)

            await _restart(service)
            wanted = {e.event_id for e in events}
            async with asyncio.timeout(60):
                while not wanted <= {r.headers["webhook-id"] for r in receiver.requests}:
                    await receiver.wait_for(len(receiver.requests) + 1)
            ids = [r.headers["webhook-id"] for r in receiver.requests]
            assert all(ids.count(done) == 1 for done in in_flight)  # not sent again
            bodies = receiver.verified(endpoint["secret"])
            assert {b["event_id"] for b in bodies} == wanted
    finally:
        service.stop()


@pytest.mark.slow
async def test_a_graceful_stop_finishes_a_retry_in_flight_and_settles_its_job(
    fresh_nats: EmbeddedNats, start_receiver: StartReceiver, tmp_path: Path
) -> None:
    async def fail_then_slow(attempt: int) -> Reply:
        if attempt == 1:
            return 500  # the first attempt fails: the second is a retry, from the job queue
        await asyncio.sleep(1.0)  # in flight when SIGTERM comes
        return 204

    org = await make_org(fresh_nats.url, "stopretry")
    service = _service(fresh_nats.url, tmp_path / "webhooks.log")
    try:
        await _restart(service)
        async with start_receiver(fail_then_slow) as receiver:
            endpoint = await _endpoint(service, org, receiver.url)
            event = org.composed("stop-retry")
            await org.publish(event)
            await receiver.wait_for(2)
            assert await asyncio.to_thread(service.stop) == 0
            # The retry was answered before the copy stopped, recorded and its job acked:
            # nothing of the endpoint's is left in the queue.
            nc = await bus.connect(fresh_nats.url, "webhooks-test-inspect", reconnect=False)
            try:
                jobs = await nc.jetstream().consumer_info(
                    JOBS_STREAM, consumer_name(endpoint["id"])
                )
            finally:
                await bus.close(nc)
            assert (jobs.num_pending, jobs.num_ack_pending) == (0, 0)

            await _restart(service)
            async with _api(service, org) as api:
                response = await api.get(
                    f"/v1/orgs/{org.org_id}/webhooks/{endpoint['id']}/deliveries"
                )
            assert response.status_code == 200, response.text
            (delivery,) = response.json()["items"]
            assert (delivery["event_id"], delivery["outcome"]) == (event.event_id, "delivered")
            assert len(receiver.requests) == 2  # not sent again after the restart
            assert {r.headers["webhook-id"] for r in receiver.requests} == {event.event_id}
    finally:
        service.stop()
