"""Every service's NATS user may publish its own events and is refused another service's, on one
node and on a three-node cluster, as the embedded servers of `mailfold dev` and the tests run."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from tests.nats_users import CREDENTIALS, OWN_AND_FOREIGN, Publishes, publish_own_and_foreign

from mailfold.cli.embedded import EmbeddedNats, EmbeddedNatsCluster
from mailfold.events import DLQ_STREAM, STREAM
from mailfold.runtime import bus, nats_users

SERVICES = [user.name for user in nats_users.SERVICE_USERS]


def test_every_service_user_has_an_own_and_a_foreign_subject_under_test() -> None:
    assert sorted(OWN_AND_FOREIGN) == sorted(SERVICES)


async def _publish(servers: list[str], service: str, org_id: str) -> tuple[str, Publishes]:
    own, foreign = (subject.format(org=org_id) for subject in OWN_AND_FOREIGN[service])
    outcome = await publish_own_and_foreign(
        servers, service, CREDENTIALS.password(service), own=own, foreign=foreign, stream=STREAM
    )
    return foreign, outcome


def _assert_own_stored_foreign_refused(foreign: str, outcome: Publishes) -> None:
    assert outcome.own == "stored"
    assert len(outcome.foreign_refusals) == 1
    assert f'publish to "{foreign}"' in outcome.foreign_refusals[0]
    assert not outcome.foreign_stored


@pytest.mark.parametrize("service", SERVICES)
async def test_on_one_node_a_service_publishes_its_own_events_and_is_refused_anothers(
    fresh_nats: EmbeddedNats, org_id: str, service: str
) -> None:
    nc = await bus.connect(fresh_nats.url, "permissions-test", reconnect=False)
    try:
        await bus.ensure_topology(nc.jetstream())
    finally:
        await bus.close(nc)

    foreign, outcome = await _publish([fresh_nats.address], service, org_id)

    _assert_own_stored_foreign_refused(foreign, outcome)


async def _ensure_replicated_streams(js: JetStreamContext) -> None:
    """MAIL_EVENTS and MAIL_DLQ with 3 replicas (the buckets do not matter here)."""
    # A cluster that has just elected its leader may leave a create unanswered (as `mailfold dev
    # --cluster` does, try again: creating is idempotent).
    for config in (bus.stream_config(replicas=3), bus.dlq_config(replicas=3)):
        for attempt in range(6):
            try:
                await bus.ensure_stream(js, config)
                break
            except (nats.errors.TimeoutError, nats.js.errors.ServiceUnavailableError):
                if attempt == 5:
                    raise
                await asyncio.sleep(0.5)


@pytest.mark.parametrize("service", SERVICES)
async def test_on_a_cluster_a_service_publishes_its_own_events_and_is_refused_anothers(
    nats_cluster: EmbeddedNatsCluster, org_id: str, service: str
) -> None:
    nc = await bus.connect(nats_cluster.url, "permissions-test", reconnect=False)
    try:
        js = nc.jetstream(timeout=10)
        await _ensure_replicated_streams(js)
        replicas = {
            (await js.stream_info(name)).config.num_replicas for name in (STREAM, DLQ_STREAM)
        }
    finally:
        await bus.close(nc)

    foreign, outcome = await _publish(
        [node.address for node in nats_cluster.nodes], service, org_id
    )

    assert replicas == {3}
    _assert_own_stored_foreign_refused(foreign, outcome)


async def _refused(address: str, user: str | None = None, password: str | None = None) -> str:
    """The error connecting as `user` gives (the client is closed either way)."""
    nc = Client()
    try:
        await nc.connect(
            address, user=user, password=password, allow_reconnect=False, connect_timeout=5
        )
    except nats.errors.Error as exc:
        return str(exc)
    finally:
        await nc.close()
    return "connected"


async def test_a_wrong_password_is_refused(fresh_nats: EmbeddedNats) -> None:
    error = await _refused(fresh_nats.address, user="tracker", password="not-the-password")

    assert "authorization violation" in error.lower()


async def test_no_credentials_are_refused(fresh_nats: EmbeddedNats) -> None:
    error = await _refused(fresh_nats.address)

    assert "authorization violation" in error.lower()


async def test_a_cluster_client_keeps_its_credentials_when_it_moves_to_another_node(
    tmp_path: Path,
) -> None:
    # Only the first node is named; the others are advertised (their URLs carry no password).
    with EmbeddedNatsCluster(
        tmp_path / "cluster", credentials=CREDENTIALS, advertise=True
    ) as cluster:
        first = cluster.nodes[0]
        nc = await bus.connect(first.url_for("tracker"), "permissions-test")
        try:
            first.kill()
            for _ in range(300):
                url = nc.connected_url
                if nc.is_connected and url is not None and url.port != first.port:
                    break
                await asyncio.sleep(0.1)
            connected_to = nc.connected_url
            rtt = await nc.rtt()  # answered: authenticated on the new node
        finally:
            await bus.close(nc)

    assert connected_to is not None
    assert connected_to.port in {node.port for node in cluster.nodes[1:]}
    assert rtt >= 0
