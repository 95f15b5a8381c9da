"""The delivery queue: WEBHOOK_JOBS, a work-queue stream with one durable consumer per endpoint."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime
from typing import Final

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import NotFoundError

from mailfold.runtime.bus import ensure_stream, start_publish_to, topology_replicas
from mailfold.webhooks.domain.deliveries import Job

JOBS_STREAM: Final = "WEBHOOK_JOBS"
JOBS_PREFIX: Final = "webhooks.jobs"
# Longer than the whole retry schedule (about 3 days and 3 hours) with room for a backlog.
JOBS_MAX_AGE_S: Final = 7 * 24 * 3600.0
MAX_ACK_PENDING: Final = 10_000  # per endpoint: jobs fetched or waiting for their next attempt

_ENCODER: Final = msgspec.msgpack.Encoder()
_DECODER: Final = msgspec.msgpack.Decoder(Job)


def jobs_config(*, replicas: int = 1) -> StreamConfig:
    """Every delivery still to make; a job leaves the stream when its delivery is settled."""
    return StreamConfig(
        name=JOBS_STREAM,
        subjects=[f"{JOBS_PREFIX}.>"],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        max_age=JOBS_MAX_AGE_S,
        duplicate_window=120.0,
        num_replicas=replicas,
    )


def job_subject(org_id: str, endpoint_id: str) -> str:
    """`webhooks.jobs.<org>.<endpoint>`: one subject, and one consumer, per endpoint."""
    return f"{JOBS_PREFIX}.{org_id}.{endpoint_id}"


def consumer_name(endpoint_id: str) -> str:
    """The durable consumer of one endpoint's jobs, shared by every copy of the service."""
    return f"webhook_{endpoint_id}"


def decode_job(data: bytes) -> Job:
    """A job from its stored form."""
    return _DECODER.decode(data)


class JobQueue:
    """Enqueues jobs (deduplicated by their message id) and manages the endpoints' consumers."""

    def __init__(self, js: JetStreamContext, *, ack_wait_s: float) -> None:
        self._js = js
        self._ack_wait_s = ack_wait_s

    async def ensure(self, *, replicas: int | None = None) -> None:
        """Create the stream, or bring it to this configuration (keeping its replicas unless
        `replicas` is given; a new one gets the topology's)."""
        count = replicas if replicas is not None else await topology_replicas(self._js)
        await ensure_stream(self._js, jobs_config(replicas=count), keep_replicas=replicas is None)

    async def start_enqueue(self, job: Job, msg_id: str) -> asyncio.Future[int]:
        """Send one job without waiting; the future resolves once it is stored."""
        return await start_publish_to(
            self._js,
            job_subject(job.org_id, job.endpoint_id),
            _ENCODER.encode(job),
            {"Nats-Msg-Id": msg_id},
        )

    def consumer_config(self, org_id: str, endpoint_id: str) -> ConsumerConfig:
        """Explicit acks; redelivery only after `ack_wait` (longer than an attempt) or a nak delay."""
        return ConsumerConfig(
            durable_name=consumer_name(endpoint_id),
            filter_subject=job_subject(org_id, endpoint_id),
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=self._ack_wait_s,
            max_deliver=-1,  # the service counts attempts and gives up itself, recording why
            max_ack_pending=MAX_ACK_PENDING,
        )

    async def subscribe(self, org_id: str, endpoint_id: str) -> JetStreamContext.PullSubscription:
        """A pull subscription on the endpoint's durable consumer (created when missing); the
        retry loops use FastStream's, bench/webhooks.py this one for its bare baseline."""
        return await self._js.pull_subscribe(
            job_subject(org_id, endpoint_id),
            durable=consumer_name(endpoint_id),
            stream=JOBS_STREAM,
            config=self.consumer_config(org_id, endpoint_id),
        )

    async def backlog(self, endpoint_id: str) -> int:
        """Jobs not yet settled for the endpoint: waiting, in flight, or waiting for a retry."""
        try:
            info = await self._js.consumer_info(JOBS_STREAM, consumer_name(endpoint_id))
        except NotFoundError:
            return 0
        return int(info.num_pending or 0) + int(info.num_ack_pending or 0)

    async def drop(self, org_id: str, endpoint_id: str) -> None:
        """Forget a deleted endpoint's consumer and every job still queued for it."""
        with contextlib.suppress(NotFoundError):
            await self._js.delete_consumer(JOBS_STREAM, consumer_name(endpoint_id))
        await self._js.purge_stream(JOBS_STREAM, subject=job_subject(org_id, endpoint_id))


def attempt_number(msg: Msg, job: Job) -> int:
    """The attempt this delivery of the job makes (1 on the first).

    JetStream counts the deliveries. A retry queued after attempts made elsewhere starts from
    those, less its first delivery, which only holds it back until it is due (`retry_delay`).
    """
    delivered = int(msg.metadata.num_delivered)
    if job.attempts_made:
        return job.attempts_made + delivered - 1
    return delivered


def retry_delay(msg: Msg, job: Job, now: datetime) -> float | None:
    """Seconds to hold a queued retry back on its first delivery (None: attempt it now)."""
    if not job.attempts_made or int(msg.metadata.num_delivered) > 1:
        return None
    if job.not_before is None:
        return 0.0
    return max(0.0, (job.not_before - now).total_seconds())
