"""The topology on a three-node cluster: replicas everywhere, kept by services, and a publish
that goes through an election of the stream's leader."""

from __future__ import annotations

import asyncio
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path

from tests.integration.cluster.conftest import mailfold

from mailfold.cli.embedded import EmbeddedNatsCluster
from mailfold.events import STREAM, EmailSent, new_id
from mailfold.mailbox.adapters import store as mailbox_store
from mailfold.runtime import bus
from mailfold.runtime.publisher import EventPublisher
from mailfold.webhooks.adapters import kv as webhooks_kv
from mailfold.webhooks.adapters.jobs import JOBS_STREAM, JobQueue


async def test_topology_with_three_replicas_reaches_every_stream_and_bucket_and_services_keep_it(
    nats_cluster: EmbeddedNatsCluster, tmp_path: Path
) -> None:
    env = dict(os.environ, MAILFOLD_NATS_URL=nats_cluster.url, MAILFOLD_DATA_DIR=str(tmp_path))
    nc = await bus.connect(nats_cluster.url, "topology-test")
    try:
        js = nc.jetstream(timeout=10)
        # A service that started first made everything with one replica.
        await bus.ensure_topology(js)
        assert (await js.stream_info(STREAM)).config.num_replicas == 1

        mailfold(env, "topology", "--replicas", "3")
        # Services starting afterwards, and the buckets and streams they make themselves.
        await bus.ensure_topology(js)
        await bus.kv(js, mailbox_store.BUCKET)
        await bus.kv(js, webhooks_kv.BUCKET_ENDPOINTS)
        await JobQueue(js, ack_wait_s=30).ensure()

        streams = await js.streams_info()
    finally:
        await bus.close(nc)

    names = {info.config.name for info in streams}
    assert {STREAM, "MAIL_DLQ", JOBS_STREAM, f"OBJ_{bus.OBJECT_STORE}"} <= names
    assert {f"KV_{bucket}" for bucket in bus.BUCKETS} <= names
    assert f"KV_{mailbox_store.BUCKET}" in names
    assert {info.config.name: info.config.num_replicas for info in streams} == dict.fromkeys(
        names, 3
    )
    buckets = [info for info in streams if str(info.config.name).startswith("KV_")]
    assert all(info.config.allow_direct for info in buckets)


async def test_a_publish_while_the_stream_elects_a_leader_is_stored_once(
    nats_cluster: EmbeddedNatsCluster,
) -> None:
    nc = await bus.connect(nats_cluster.url, "election-test")
    try:
        js = nc.jetstream(timeout=10)
        await bus.ensure_topology(js, replicas=3)
        leader = (await js.stream_info(STREAM)).cluster
        assert leader is not None
        assert leader.leader is not None
        publish = EventPublisher(nc, timeout=2, within_s=30)
        event = EmailSent(
            event_id=new_id(),
            org_id=f"org{uuid.uuid4().hex[:8]}",
            email_id=new_id(),
            occurred_at=datetime.now(UTC),
            producer="sender",
        )

        await asyncio.to_thread(nats_cluster.node_named(leader.leader).kill)
        await publish(event)  # answered only once a new leader stored it
        await publish(event)  # a client's retry: the same Nats-Msg-Id

        info = await js.stream_info(STREAM)
        stored = await js.get_msg(STREAM, seq=int(info.state.last_seq or 0))
    finally:
        await bus.close(nc)

    assert info.state.messages == 1
    assert stored.headers == {"Nats-Msg-Id": event.event_id}
