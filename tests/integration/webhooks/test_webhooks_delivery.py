"""Delivery to real receivers on loopback, each request checked with the standardwebhooks package."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from tests.integration.webhooks.conftest import (
    Org,
    Reply,
    StartReceiver,
    StartWebhooks,
    add_endpoint,
    always,
)

from mailfold.events import encode
from mailfold.events.subjects import STREAM as EVENTS_STREAM
from mailfold.runtime import bus
from mailfold.webhooks.adapters.jobs import JOBS_STREAM, decode_job, job_subject
from mailfold.webhooks.bootstrap import Service
from mailfold.webhooks.entrypoints.subscriber import DURABLE


async def _deliveries(
    org: Org, service: Service, endpoint_id: str, **params: str
) -> list[dict[str, Any]]:
    async with org.api(service) as api:
        response = await api.get(
            f"/v1/orgs/{org.org_id}/webhooks/{endpoint_id}/deliveries", params=params
        )
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def _settled(
    org: Org, service: Service, endpoint_id: str, count: int
) -> list[dict[str, Any]]:
    """Wait until `count` deliveries are settled (delivered, failed or disabled)."""
    async with asyncio.timeout(30):
        while True:
            items = await _deliveries(org, service, endpoint_id)
            done = [d for d in items if d["outcome"] != "retrying"]
            if len(done) >= count:
                return items
            await asyncio.sleep(0.1)


async def test_event_is_delivered_once_with_a_valid_signature(
    start_webhooks: StartWebhooks, start_receiver: StartReceiver, org: Org, nats_url: str
) -> None:
    async with start_receiver(always(204)) as receiver, start_webhooks(nats_url) as service:
        async with org.api(service) as api:
            endpoint = await add_endpoint(api, org, receiver.url)
        composed = org.composed("mail-1")
        (seq,) = await org.publish(composed)
        await receiver.wait_for(1)
        await _settled(org, service, endpoint["id"], 1)
        (body,) = receiver.verified(endpoint["secret"])
        assert len(receiver.requests) == 1
        assert receiver.requests[0].headers["webhook-id"] == composed.event_id
        # The event as published, plus the email's status and sequences.
        assert {k: v for k, v in body.items() if not k.endswith(("_status", "_sequence"))} == (
            msgspec.json.decode(encode(composed))
        )
        assert body["type"] == "email_composed"
        assert body["event_id"] == composed.event_id
        assert body["org_id"] == org.org_id
        assert body["email_status"] is None
        assert body["email_sequence"] == 1
        assert body["stream_sequence"] == seq
        async with org.api(service) as api:
            metrics = (await api.get("/metrics")).text
            health = await api.get("/healthz")
        assert 'mailfold_webhooks_deliveries_total{outcome="delivered"}' in metrics
        assert "mailfold_webhooks_attempt_seconds_bucket" in metrics
        assert health.status_code == 200


async def test_status_and_per_email_sequence_follow_the_fold(
    start_webhooks: StartWebhooks, start_receiver: StartReceiver, org: Org, nats_url: str
) -> None:
    async with start_receiver(always(200)) as receiver, start_webhooks(nats_url) as service:
        async with org.api(service) as api:
            endpoint = await add_endpoint(api, org, receiver.url)
        events = [org.composed("mail-2"), org.sent("mail-2"), org.delivered("mail-2")]
        await org.publish(*events)
        await receiver.wait_for(3)
        bodies = {b["event_id"]: b for b in receiver.verified(endpoint["secret"])}
        assert [bodies[e.event_id]["email_sequence"] for e in events] == [1, 2, 3]
        assert bodies[events[1].event_id]["email_status"] == "Sent"
        assert bodies[events[2].event_id]["email_status"] == "Delivered"


async def test_two_failures_then_success_make_three_attempts_with_one_webhook_id(
    start_webhooks: StartWebhooks, start_receiver: StartReceiver, org: Org, nats_url: str
) -> None:
    async def flaky(attempt: int) -> Reply:
        return 500 if attempt <= 2 else 200

    async with start_receiver(flaky) as receiver, start_webhooks(nats_url) as service:
        async with org.api(service) as api:
            endpoint = await add_endpoint(api, org, receiver.url)
        composed = org.composed("mail-3")
        await org.publish(composed)
        await receiver.wait_for(3)
        (delivery,) = await _settled(org, service, endpoint["id"], 1)
        receiver.verified(endpoint["secret"])
        assert {r.headers["webhook-id"] for r in receiver.requests} == {composed.event_id}
        assert len(receiver.requests) == 3
        assert delivery["outcome"] == "delivered"
        assert delivery["attempts"] == 3
        assert [a["status_code"] for a in delivery["history"]] == [500, 500, 200]
        assert [a["outcome"] for a in delivery["history"]] == ["retrying", "retrying", "delivered"]


async def test_a_failed_first_attempt_is_queued_as_a_retry_and_its_event_acknowledged(
    start_webhooks: StartWebhooks, start_receiver: StartReceiver, org: Org, nats_url: str
) -> None:
    release = asyncio.Event()

    async def fail_then_wait(attempt: int) -> Reply:
        if attempt > 1:
            await release.wait()
        return 500 if attempt == 1 else 200

    async with (
        start_receiver(fail_then_wait) as receiver,
        start_webhooks(nats_url, schedule_s=(0.5,)) as service,
    ):
        try:
            async with org.api(service) as api:
                endpoint = await add_endpoint(api, org, receiver.url)
            composed = org.composed("mail-r1")
            await org.publish(composed)
            await receiver.wait_for(2)  # the retry is in flight, held by the receiver
            nc = await bus.connect(nats_url, "webhooks-test-inspect", reconnect=False)
            try:
                js = nc.jetstream()
                subject = job_subject(org.org_id, endpoint["id"])
                stored = decode_job((await js.get_last_msg(JOBS_STREAM, subject)).data or b"")
                events = await js.consumer_info(EVENTS_STREAM, DURABLE)
            finally:
                await bus.close(nc)
            # The first attempt was made from the fan-out; its retry waits in WEBHOOK_JOBS,
            # counted on from it, and the event itself is settled in MAIL_EVENTS.
            assert stored.event_id == composed.event_id
            assert stored.attempts_made == 1
            assert stored.not_before is not None
            assert events.num_ack_pending == 0
            assert events.num_pending == 0
        finally:
            release.set()
        (delivery,) = await _settled(org, service, endpoint["id"], 1)
        receiver.verified(endpoint["secret"])
        assert [r.headers["webhook-id"] for r in receiver.requests] == [composed.event_id] * 2
        assert [a["number"] for a in delivery["history"]] == [1, 2]
        assert [a["status_code"] for a in delivery["history"]] == [500, 200]
        assert delivery["outcome"] == "delivered"


async def test_a_receiver_that_never_succeeds_is_recorded_failed_after_the_last_attempt(
    start_webhooks: StartWebhooks, start_receiver: StartReceiver, org: Org, nats_url: str
) -> None:
    async with (
        start_receiver(always(302)) as receiver,
        start_webhooks(nats_url, schedule_s=(0.1, 0.1)) as service,
    ):
        async with org.api(service) as api:
            endpoint = await add_endpoint(api, org, receiver.url)
        await org.publish(org.composed("mail-4"))
        (delivery,) = await _settled(org, service, endpoint["id"], 1)
        assert delivery["outcome"] == "failed"
        assert delivery["attempts"] == 3  # the first, then one per delay in the schedule
        assert len(receiver.requests) == 3
        failed = await _deliveries(org, service, endpoint["id"], outcome="failed")
        assert [d["event_id"] for d in failed] == [delivery["event_id"]]
        assert await _deliveries(org, service, endpoint["id"], outcome="delivered") == []


async def test_410_disables_the_endpoint(
    start_webhooks: StartWebhooks, start_receiver: StartReceiver, org: Org, nats_url: str
) -> None:
    async with start_receiver(always(410)) as receiver, start_webhooks(nats_url) as service:
        async with org.api(service) as api:
            endpoint = await add_endpoint(api, org, receiver.url)
            await org.publish(org.composed("mail-5"))
            (delivery,) = await _settled(org, service, endpoint["id"], 1)
            shown = (await api.get(f"/v1/orgs/{org.org_id}/webhooks/{endpoint['id']}")).json()
            await org.publish(org.composed("mail-6"))
            await asyncio.sleep(1.0)  # a second event has time to (not) arrive
        assert delivery["outcome"] == "disabled"
        assert shown["enabled"] is False
        assert shown["disabled_reason"] == "410 Gone"
        assert len(receiver.requests) == 1


async def test_429_retry_after_is_honoured(
    start_webhooks: StartWebhooks, start_receiver: StartReceiver, org: Org, nats_url: str
) -> None:
    async def busy(attempt: int) -> Reply:
        return (429, {"retry-after": "2"}) if attempt == 1 else 200

    async with (
        start_receiver(busy) as receiver,
        start_webhooks(nats_url, schedule_s=(0.1, 0.1)) as service,
    ):
        async with org.api(service) as api:
            endpoint = await add_endpoint(api, org, receiver.url)
        await org.publish(org.composed("mail-7"))
        first, second = await receiver.wait_for(2)
        (delivery,) = await _settled(org, service, endpoint["id"], 1)
        # The schedule alone would have retried after 0.1 s; Retry-After asked for 2 s.
        assert second.at - first.at >= 2.0
        assert delivery["history"][0]["status_code"] == 429
        assert delivery["outcome"] == "delivered"


async def test_a_hanging_receiver_does_not_delay_another_endpoint(
    start_webhooks: StartWebhooks, start_receiver: StartReceiver, org: Org, nats_url: str
) -> None:
    release = asyncio.Event()

    async def hang(_: int) -> Reply:
        await release.wait()
        return 200

    async with (
        start_receiver(hang) as slow,
        start_receiver(always(200)) as fast,
        start_webhooks(nats_url, timeout_s=30.0, concurrency=2) as service,
    ):
        try:
            async with org.api(service) as api:
                await add_endpoint(api, org, slow.url)
                endpoint = await add_endpoint(api, org, fast.url)
            await org.publish(*[org.composed(f"mail-h{i}") for i in range(6)])
            await fast.wait_for(6)
            # Every event reached the healthy endpoint while the other one still held them all.
            assert len(slow.requests) == 2  # its two slots, both stuck
            assert len(fast.verified(endpoint["secret"])) == 6
        finally:
            release.set()


async def test_rotation_signs_with_both_secrets(
    start_webhooks: StartWebhooks, start_receiver: StartReceiver, org: Org, nats_url: str
) -> None:
    async with start_receiver(always(200)) as receiver, start_webhooks(nats_url) as service:
        async with org.api(service) as api:
            endpoint = await add_endpoint(api, org, receiver.url)
            rotated = await api.patch(
                f"/v1/orgs/{org.org_id}/webhooks/{endpoint['id']}", json={"rotate_secret": True}
            )
        assert rotated.status_code == 200, rotated.text
        new_secret = rotated.json()["secret"]
        assert new_secret != endpoint["secret"]
        await org.publish(org.composed("mail-8"))
        (request,) = await receiver.wait_for(1)
        signatures = request.headers["webhook-signature"].split(" ")
        assert len(signatures) == 2
        assert all(s.startswith("v1,") for s in signatures)
        # Receivers on either secret accept the message.
        assert receiver.verified(endpoint["secret"]) == receiver.verified(new_secret)


async def test_an_endpoint_on_a_private_address_is_refused(
    start_webhooks: StartWebhooks, org: Org, nats_url: str
) -> None:
    # Outside development: loopback is refused too, and so is plain http.
    async with start_webhooks(nats_url, allow_loopback=False) as service, org.api(service) as api:
        for url in (
            "https://10.0.0.7/hook",
            "https://169.254.169.254/latest/meta-data",
            "https://127.0.0.1:8443/hook",
            "https://[::1]/hook",
            "https://[::ffff:192.168.1.1]/hook",
            "https://localhost/hook",
        ):
            response = await api.post(f"/v1/orgs/{org.org_id}/webhooks", json={"url": url})
            assert response.status_code == 422, url
            assert response.headers["content-type"] == "application/problem+json"
            assert response.json()["errors"][0]["field"] == "url"
        plain = await api.post(
            f"/v1/orgs/{org.org_id}/webhooks", json={"url": "http://example.org/hook"}
        )
        assert plain.status_code == 422
        listed = await api.get(f"/v1/orgs/{org.org_id}/webhooks")
        assert listed.json()["items"] == []


async def test_an_undecodable_event_is_dead_lettered_with_its_reason_and_the_rest_delivered(
    start_webhooks: StartWebhooks, start_receiver: StartReceiver, org: Org, nats_url: str
) -> None:
    async with start_receiver(always(200)) as receiver, start_webhooks(nats_url) as service:
        async with org.api(service) as api:
            endpoint = await add_endpoint(api, org, receiver.url)
        nc = await bus.connect(nats_url, "webhooks-test-poison", reconnect=False)
        try:
            js = nc.jetstream()
            await js.publish(
                f"mail.events.{org.org_id}.email_sent",
                b'{"type": "email_sent", "event_id": 5}',
                headers={"Nats-Msg-Id": "poison-1"},
            )
            good = org.composed("after-poison")
            await org.publish(good)
            (request,) = await receiver.wait_for(1)
            assert request.headers["webhook-id"] == good.event_id
            dlq = await js.pull_subscribe("mail.dlq.webhooks", stream="MAIL_DLQ")
            (dead,) = await dlq.fetch(1, timeout=10)
        finally:
            await bus.close(nc)
        assert dead.data == b'{"type": "email_sent", "event_id": 5}'
        assert dead.headers is not None
        assert "not a valid event" in dead.headers["Mailfold-Error"]
        assert receiver.verified(endpoint["secret"])[0]["event_id"] == good.event_id
