"""The webhooks service's FastStream subscribers in memory (TestNatsBroker), wired as bootstrap
wires them, on fakes for the endpoints, the records, the folds, the queue and the receivers:

- the fan-out on MAIL_EVENTS (entrypoints/subscriber.py feeding entrypoints/first.py): typed
  events become first attempts for the endpoints that want them, each event acked once its jobs
  are settled; what cannot be used is parked in MAIL_DLQ with its reason;
- the retry loops on WEBHOOK_JOBS (entrypoints/workers.py), one subscriber per endpoint made at
  run time: a job is attempted with its attempt number, held back until it is due, settled
  with an ack or a nak with the retry delay, or parked when it cannot be read.

FastStream's in-memory messages settle as no-ops; the `settled` fixture records each ack, nak
and term instead. They carry a JetStream reply subject (`js_reply`), from which nats-py reads
the stream position and the delivery count as it does for a real JetStream message.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, cast

import msgspec
import pytest
from faststream.nats import NatsBroker, TestNatsBroker
from faststream.nats.subscriber.usecases.stream_pull_subscriber import BatchPullStreamSubscriber
from faststream.nats.testing import PatchedMessage, build_message
from nats.js import JetStreamContext
from prometheus_client import CollectorRegistry
from tests.dead_letters import collect_dead_letters
from tests.webhooks_fakes import (
    JOB,
    FakeDeliveries,
    FakeEndpoints,
    FakeQueue,
    MemoryFolds,
    ScriptedPoster,
    make_endpoint,
    until,
)

from mailfold.events import EmailComposed, EmailOpened, EmailSent, Source, encode, new_id
from mailfold.runtime.broker import CODEC, new_broker
from mailfold.webhooks import bootstrap
from mailfold.webhooks.adapters import kv
from mailfold.webhooks.adapters.jobs import JOBS_STREAM, JobQueue, consumer_name, job_subject
from mailfold.webhooks.domain.deliveries import Job
from mailfold.webhooks.domain.endpoints import Endpoint
from mailfold.webhooks.domain.retries import Outcome
from mailfold.webhooks.entrypoints import subscriber
from mailfold.webhooks.entrypoints.first import FirstAttempts, Lanes
from mailfold.webhooks.entrypoints.settler import Settler
from mailfold.webhooks.entrypoints.workers import HOLD_S, Workers
from mailfold.webhooks.service_layer.delivery import Deliverer
from mailfold.webhooks.service_layer.fanout import Fanout

SCHEDULE = (5.0, 60.0, 300.0)
Settlements = dict[str, list[tuple[str, float | None]]]


def js_reply(stream: str, consumer: str, seq: int, *, delivered: int = 1) -> str:
    """The reply subject JetStream gives a message it hands out (v1 form)."""
    return f"$JS.ACK.{stream}.{consumer}.{delivered}.{seq}.{seq}.1764417600000000000.0"


def event_reply(seq: int) -> str:
    return js_reply("MAIL_EVENTS", subscriber.DURABLE, seq)


@pytest.fixture
def settled(monkeypatch: pytest.MonkeyPatch) -> Settlements:
    """What each message handed out by a stream became, by its reply subject: ("ack"|"nak"|
    "term", delay). (The dead letters' own in-memory subscriber acks too, without a reply.)"""
    out: Settlements = {}

    def recorder(verb: str) -> Any:
        async def settle(self: PatchedMessage, delay: float | None = None) -> None:
            if self.reply:
                out.setdefault(self.reply, []).append((verb, delay))

        return settle

    for verb in ("ack", "nak", "term"):
        monkeypatch.setattr(PatchedMessage, verb, recorder(verb))
    return out


def _broker() -> NatsBroker:
    return new_broker("nats://127.0.0.1:1", service="webhooks", registry=CollectorRegistry())


def _sent(org_id: str = "acme", email_id: str = "") -> EmailSent:
    return EmailSent(
        event_id=new_id(),
        org_id=org_id,
        email_id=email_id or new_id(),
        producer="sender",
        occurred_at=datetime(2026, 11, 29, 12, tzinfo=UTC),
        recipients=("ann@example.org",),
    )


def _composed() -> EmailComposed:
    return EmailComposed(
        event_id=new_id(),
        org_id="acme",
        email_id=new_id(),
        producer="ingest",
        occurred_at=datetime(2026, 11, 29, 12, tzinfo=UTC),
        source=Source.INDIVIDUAL,
        from_addr="me@acme.example",
        to=("ann@example.org",),
    )


def _opened() -> EmailOpened:
    return EmailOpened(
        event_id=new_id(),
        org_id="acme",
        email_id=new_id(),
        producer="tracker",
        occurred_at=datetime(2026, 11, 29, 12, tzinfo=UTC),
        recipient="ann@example.org",
    )


def _endpoint(endpoint_id: str, *types: str, org_id: str = "acme") -> Endpoint:
    return msgspec.structs.replace(
        make_endpoint(),
        endpoint_id=endpoint_id,
        org_id=org_id,
        url=f"https://{endpoint_id}.example.org/hook",
        event_types=types,
    )


@dataclass
class FanoutWiring:
    """The fan-out as bootstrap.start wires it, on fakes."""

    subscriber: BatchPullStreamSubscriber
    first: FirstAttempts
    settler: Settler
    deliveries: FakeDeliveries
    folds: MemoryFolds


def _wire_fanout(
    broker: NatsBroker,
    endpoints: FakeEndpoints,
    poster: ScriptedPoster,
    queue: FakeQueue,
    folds: MemoryFolds | None = None,
) -> FanoutWiring:
    deliveries, folds = FakeDeliveries(), folds or MemoryFolds()
    fanout = Fanout(endpoints, folds, subscriber.dead_letters(broker))
    deliverer = Deliverer(endpoints, deliveries, poster, schedule=SCHEDULE, rng=random.Random(1))
    settler = Settler(deliveries)
    first = FirstAttempts(fanout, endpoints, deliverer, settler, queue, Lanes(4))
    bootstrap.declare(broker, first.on_batch, bootstrap.Settings(nats_url="nats://127.0.0.1:1"))
    (declared,) = broker.subscribers
    assert isinstance(declared, BatchPullStreamSubscriber)
    return FanoutWiring(declared, first, settler, deliveries, folds)


@asynccontextmanager
async def _running(wiring: FanoutWiring, broker: NatsBroker) -> AsyncIterator[NatsBroker]:
    async with TestNatsBroker(broker) as test:
        wiring.settler.start()
        try:
            yield test
        finally:
            await wiring.settler.stop()
            await wiring.first.stop()


async def test_an_event_reaches_each_endpoint_that_wants_it_and_is_acked_once_settled(
    settled: Settlements,
) -> None:
    wants_sent = _endpoint("ep_sent", "email_sent")
    fails = _endpoint("ep_fails", "email_sent")
    wants_opened = _endpoint("ep_opened", "email_opened")
    other_org = _endpoint("ep_other", org_id="globex")
    endpoints = FakeEndpoints(wants_sent, fails, wants_opened, other_org)
    poster, queue = ScriptedPoster({fails.url: 500}), FakeQueue()
    broker = _broker()
    wiring = _wire_fanout(broker, endpoints, poster, queue)
    parked = collect_dead_letters(broker)

    composed = _composed()
    sent = _sent(email_id=composed.email_id)
    before = datetime.now(UTC)
    async with _running(wiring, broker) as test:
        await test.publish(composed, "mail.events.acme.email_composed", reply_to=event_reply(40))
        await test.publish(sent, "mail.events.acme.email_sent", reply_to=event_reply(41))
        await until(lambda: len(settled) == 2)

    # Each acked once: the origin at once (no endpoint wants it), the sent event after both
    # of its jobs settled.
    assert settled == {event_reply(40): [("ack", None)], event_reply(41): [("ack", None)]}
    assert sorted(poster.sent) == sorted([wants_sent.url, fails.url])
    # The body is the event as published, folded into its email: its status, its place in the
    # email and in the stream (read from the message's JetStream metadata).
    body = msgspec.json.decode(poster.bodies[0])
    assert body["type"] == "email_sent"
    assert body["event_id"] == sent.event_id
    assert (body["email_status"], body["email_sequence"], body["stream_sequence"]) == (
        "Sent",
        2,
        41,
    )
    delivered = wiring.deliveries.of(sent.event_id, "ep_sent")
    assert (delivered.outcome, delivered.attempts, delivered.stream_seq) == (
        Outcome.DELIVERED,
        1,
        41,
    )
    retrying = wiring.deliveries.of(sent.event_id, "ep_fails")
    assert (retrying.outcome, retrying.attempts) == (Outcome.RETRYING, 1)
    assert set(wiring.deliveries.records) == {
        ("ep_sent", sent.event_id),
        ("ep_fails", sent.event_id),
    }
    # The failed first attempt is queued for the endpoint's retry loop, due after the schedule's
    # first delay (5 s, +-10 % jitter).
    ((retry, msg_id),) = queue.jobs
    assert msg_id == f"ep_fails.{sent.event_id}"
    assert (retry.endpoint_id, retry.event_id, retry.attempts_made) == (
        "ep_fails",
        sent.event_id,
        1,
    )
    assert retry.body == poster.bodies[0]
    assert retry.not_before is not None
    assert before + timedelta(seconds=4.4) <= retry.not_before
    assert retry.not_before <= datetime.now(UTC) + timedelta(seconds=5.6)
    assert parked == []


async def test_an_event_no_endpoint_wants_is_acked_and_makes_nothing(
    settled: Settlements,
) -> None:
    endpoints = FakeEndpoints(_endpoint("ep_sent", "email_sent"))
    poster, queue = ScriptedPoster({}), FakeQueue()
    broker = _broker()
    wiring = _wire_fanout(broker, endpoints, poster, queue)
    parked = collect_dead_letters(broker)

    opened, elsewhere = _opened(), _sent(org_id="globex")
    async with _running(wiring, broker) as test:
        await test.publish(opened, "mail.events.acme.email_opened", reply_to=event_reply(7))
        await test.publish(elsewhere, "mail.events.globex.email_sent", reply_to=event_reply(8))
        await until(lambda: len(settled) == 2)

    assert settled == {event_reply(7): [("ack", None)], event_reply(8): [("ack", None)]}
    assert poster.sent == []
    assert queue.jobs == []
    assert wiring.deliveries.records == {}
    assert parked == []
    # An org with endpoints still folds the event (a later one's body needs its status).
    assert set(wiring.folds.folds) == {("acme", opened.email_id)}


async def test_what_is_not_a_valid_event_is_dead_lettered_with_its_reason(
    settled: Settlements,
) -> None:
    endpoints = FakeEndpoints(_endpoint("ep_all"))
    poster, queue = ScriptedPoster({}), FakeQueue()
    broker = _broker()
    wiring = _wire_fanout(broker, endpoints, poster, queue)
    parked = collect_dead_letters(broker)

    not_json = b"{not json"
    wrong_shape = b'{"type": "email_sent", "org_id": "acme", "event_id": "e1"}'
    unknown = encode(_sent()).replace(b'"email_sent"', b'"email_exploded"')
    async with _running(wiring, broker) as test:
        for seq, data in enumerate((not_json, wrong_shape, unknown), start=1):
            await test.publish(data, "mail.events.acme.email_sent", reply_to=event_reply(seq))

    assert [body for body, _ in parked] == [not_json, wrong_shape, unknown]
    for seq, (_, headers) in enumerate(parked, start=1):
        assert headers["Mailfold-Error"].startswith("not a valid event: ")
        assert headers["Mailfold-Consumer"] == "webhooks"
        assert headers["Mailfold-Subject"] == "mail.events.acme.email_sent"
        assert (headers["Mailfold-Stream"], headers["Mailfold-Stream-Seq"]) == (
            "MAIL_EVENTS",
            str(seq),
        )
    assert "missing required field" in parked[1][1]["Mailfold-Error"]
    # Each acked once, after it was parked; nothing attempted, queued or folded.
    assert settled == {event_reply(seq): [("ack", None)] for seq in (1, 2, 3)}
    assert poster.sent == []
    assert queue.jobs == []
    assert wiring.folds.folds == {}


async def test_a_batch_mixing_events_and_poison_parks_only_the_poison(
    settled: Settlements,
) -> None:
    """FastStream's test producer hands a batch subscriber one message per publish: the batch
    is handed to the subscriber here as its fetch would hand it over."""
    endpoints = FakeEndpoints(_endpoint("ep_all"))
    poster, queue = ScriptedPoster({}), FakeQueue()
    broker = _broker()
    wiring = _wire_fanout(broker, endpoints, poster, queue)
    parked = collect_dead_letters(broker)

    first, second = _sent(), _sent()
    batch = [
        await _message(first, event_reply(10)),
        await _message(b"[]", event_reply(11)),
        await _message(second, event_reply(12)),
    ]
    async with _running(wiring, broker):
        await _hand_batch(wiring.subscriber, batch)
        await until(lambda: len(settled) == 3)

    assert settled == {event_reply(seq): [("ack", None)] for seq in (10, 11, 12)}
    assert [body for body, _ in parked] == [b"[]"]
    assert parked[0][1]["Mailfold-Stream-Seq"] == "11"
    assert sorted(d.event_id for d in wiring.deliveries.records.values()) == sorted(
        [first.event_id, second.event_id]
    )
    assert {d.stream_seq for d in wiring.deliveries.records.values()} == {10, 12}


async def _message(body: EmailSent | bytes, reply: str) -> PatchedMessage:
    return await build_message(body, "mail.events.acme.email_sent", reply_to=reply, codec=CODEC)


async def _hand_batch(declared: BatchPullStreamSubscriber, batch: list[PatchedMessage]) -> None:
    await declared.process_message(cast(Any, batch))


async def test_an_event_whose_fold_fails_stays_unacked_and_comes_back(
    settled: Settlements,
) -> None:
    class Unreachable(MemoryFolds):
        async def apply(self, event: Any) -> Any:
            raise ConnectionError("KV away")

    endpoints = FakeEndpoints(_endpoint("ep_all"))
    poster, queue = ScriptedPoster({}), FakeQueue()
    broker = _broker()
    wiring = _wire_fanout(broker, endpoints, poster, queue, folds=Unreachable())
    parked = collect_dead_letters(broker)

    reply = event_reply(3)
    async with _running(wiring, broker) as test:
        with pytest.raises(ConnectionError):
            await test.publish(_sent(), "mail.events.acme.email_sent", reply_to=reply)

    # Neither acked nor parked: JetStream hands it out again after ack_wait.
    assert reply not in settled
    assert parked == []
    assert poster.sent == []


# The retry loops on WEBHOOK_JOBS ---------------------------------------------------------------


@dataclass
class WorkersWiring:
    workers: Workers
    endpoints: FakeEndpoints
    deliveries: FakeDeliveries
    poster: ScriptedPoster


def _wire_workers(
    broker: NatsBroker, poster: ScriptedPoster, *endpoints: Endpoint
) -> WorkersWiring:
    store, deliveries = FakeEndpoints(*endpoints), FakeDeliveries()
    deliverer = Deliverer(store, deliveries, poster, schedule=SCHEDULE, rng=random.Random(1))
    # The loops only read the consumer's configuration from the queue.
    queue = JobQueue(cast(JetStreamContext, None), ack_wait_s=30.0)
    workers = Workers(
        cast(kv.Endpoints, store),
        queue,
        deliverer,
        Settler(deliveries),
        Lanes(2),
        concurrency=2,
        broker=broker,
    )
    return WorkersWiring(workers, store, deliveries, poster)


def _looping(broker: NatsBroker, org_id: str, endpoint_id: str) -> bool:
    """Whether the endpoint's run-time subscriber is declared on the broker and started."""
    subject = job_subject(org_id, endpoint_id)
    return any(
        getattr(getattr(declared, "config", None), "durable_name", None)
        == consumer_name(endpoint_id)
        and getattr(declared, "subject", None) is not None
        and declared.subject.broker_address == subject  # type: ignore[attr-defined]
        and getattr(declared, "subscription", None) is not None
        for declared in broker.subscribers
    )


@asynccontextmanager
async def _delivering(wiring: WorkersWiring, broker: NatsBroker) -> AsyncIterator[NatsBroker]:
    async with TestNatsBroker(broker) as test:
        wiring.workers.start()
        try:
            for endpoint in wiring.endpoints.all():
                await until(partial(_looping, broker, endpoint.org_id, endpoint.endpoint_id))
            yield test
        finally:
            await wiring.workers.stop()


async def _hand_job(test: NatsBroker, data: bytes, reply: str, endpoint_id: str = "ep_1") -> None:
    await test.publish(data, job_subject("acme", endpoint_id), stream=JOBS_STREAM, reply_to=reply)


def _job_reply(seq: int, *, delivered: int) -> str:
    return js_reply(JOBS_STREAM, consumer_name("ep_1"), seq, delivered=delivered)


def _retry(*, due_in_s: float) -> Job:
    """A first attempt's retry as the fan-out queues it: one attempt made, due later."""
    due = datetime.now(UTC) + timedelta(seconds=due_in_s)
    return msgspec.structs.replace(JOB, attempts_made=1, not_before=due)


async def test_a_due_retry_is_attempted_as_the_next_attempt_and_acked_when_delivered(
    settled: Settlements,
) -> None:
    broker = _broker()
    wiring = _wire_workers(broker, ScriptedPoster({}), make_endpoint())
    reply = _job_reply(5, delivered=2)  # handed out again after it was held back
    async with _delivering(wiring, broker) as test:
        await _hand_job(test, msgspec.msgpack.encode(_retry(due_in_s=-1)), reply)
        await until(lambda: reply in settled)

    assert settled[reply] == [("ack", None)]
    assert wiring.poster.sent == [make_endpoint().url]
    assert wiring.poster.bodies == [JOB.body]
    record = wiring.deliveries.of(JOB.event_id)
    assert record.outcome is Outcome.DELIVERED
    assert [a.number for a in record.history] == [2]  # the fan-out made the first


async def test_a_retry_not_yet_due_is_handed_back_until_its_due_time(
    settled: Settlements,
) -> None:
    broker = _broker()
    wiring = _wire_workers(broker, ScriptedPoster({}), make_endpoint())
    reply = _job_reply(6, delivered=1)  # handed out as soon as it was queued
    async with _delivering(wiring, broker) as test:
        await _hand_job(test, msgspec.msgpack.encode(_retry(due_in_s=300)), reply)
        await until(lambda: reply in settled)

    ((verb, delay),) = settled[reply]
    assert verb == "nak"
    assert delay is not None
    assert 290 < delay <= 300
    assert wiring.poster.sent == []
    assert wiring.deliveries.records == {}


async def test_a_failed_retry_is_handed_back_with_the_schedules_next_delay(
    settled: Settlements,
) -> None:
    broker = _broker()
    endpoint = make_endpoint()
    wiring = _wire_workers(broker, ScriptedPoster({endpoint.url: 503}), endpoint)
    reply = _job_reply(7, delivered=2)
    async with _delivering(wiring, broker) as test:
        await _hand_job(test, msgspec.msgpack.encode(_retry(due_in_s=-1)), reply)
        await until(lambda: reply in settled)

    ((verb, delay),) = settled[reply]
    assert verb == "nak"
    assert delay is not None
    assert 54 <= delay <= 66  # attempt 2 failed: the schedule's second delay, +-10 %
    record = wiring.deliveries.of(JOB.event_id)
    assert record.outcome is Outcome.RETRYING
    assert [(a.number, a.status_code) for a in record.history] == [(2, 503)]


async def test_a_job_of_a_disabled_endpoint_is_held_back(settled: Settlements) -> None:
    broker = _broker()
    endpoint = make_endpoint()
    wiring = _wire_workers(broker, ScriptedPoster({}), endpoint)
    reply = _job_reply(8, delivered=1)
    async with _delivering(wiring, broker) as test:
        # Disabled while its loop still runs (the change reaches this copy a moment later).
        wiring.endpoints.by_id[endpoint.endpoint_id] = msgspec.structs.replace(
            endpoint, enabled=False
        )
        await _hand_job(test, msgspec.msgpack.encode(JOB), reply)
        await until(lambda: reply in settled)

    assert settled[reply] == [("nak", HOLD_S)]
    assert wiring.poster.sent == []


async def test_an_unreadable_job_is_dead_lettered_with_its_reason(settled: Settlements) -> None:
    broker = _broker()
    wiring = _wire_workers(broker, ScriptedPoster({}), make_endpoint())
    # The service's own dead-letter subject: the only one its NATS user may publish to.
    parked = collect_dead_letters(broker, "mail.dlq.webhooks")
    garbage, wrong_shape = b"\xc1 not msgpack", msgspec.msgpack.encode({"org_id": "acme"})
    replies = [_job_reply(9, delivered=1), _job_reply(10, delivered=1)]
    async with _delivering(wiring, broker) as test:
        await _hand_job(test, garbage, replies[0])
        await _hand_job(test, wrong_shape, replies[1])
        await until(lambda: all(r in settled for r in replies))

    assert [body for body, _ in parked] == [garbage, wrong_shape]
    for seq, (_, headers) in zip((9, 10), parked, strict=True):
        assert headers["Mailfold-Error"].startswith("not a valid delivery job: ")
        assert headers["Mailfold-Subject"] == job_subject("acme", "ep_1")
        assert (headers["Mailfold-Stream"], headers["Mailfold-Stream-Seq"]) == (
            JOBS_STREAM,
            str(seq),
        )
    assert all(settled[r] == [("ack", None)] for r in replies)  # acked once parked
    assert wiring.poster.sent == []


async def test_loops_follow_the_endpoints_as_they_come_and_go(settled: Settlements) -> None:
    broker = _broker()
    wiring = _wire_workers(broker, ScriptedPoster({}), make_endpoint())
    later = _endpoint("ep_2")
    async with _delivering(wiring, broker) as test:
        await wiring.endpoints.put(later)
        await until(lambda: _looping(broker, "acme", "ep_2"))
        reply = js_reply(JOBS_STREAM, consumer_name("ep_2"), 1, delivered=1)
        job = msgspec.structs.replace(JOB, endpoint_id="ep_2", event_id="ev_2")
        await _hand_job(test, msgspec.msgpack.encode(job), reply, "ep_2")
        await until(lambda: reply in settled)
        assert sorted(wiring.workers.endpoint_ids()) == ["ep_1", "ep_2"]

        await wiring.endpoints.delete("acme", "ep_1")
        await until(lambda: not _looping(broker, "acme", "ep_1"))
        assert wiring.workers.endpoint_ids() == ["ep_2"]

    assert settled[reply] == [("ack", None)]
    assert wiring.poster.sent == [later.url]
    assert wiring.deliveries.of("ev_2", "ep_2").outcome is Outcome.DELIVERED
