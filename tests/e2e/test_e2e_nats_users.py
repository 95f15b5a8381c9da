"""`mailfold dev` runs every service as its own NATS user, so a service's user is refused another
service's events there as in production; `mailfold dev --cluster` does the same on three nodes
with every stream, bucket and object store replicated three times."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import httpx
import nats
import pytest
from tests.e2e.conftest import Stack, _wait_ready
from tests.nats_users import OWN_AND_FOREIGN, publish_own_and_foreign
from tests.polling import eventually

from mailfold.events import STREAM
from mailfold.runtime import bus, nats_users

SERVICES = [user.name for user in nats_users.SERVICE_USERS]


def _passwords(data: Path) -> dict[str, str]:
    path = data / "nats-users.json"
    assert path.stat().st_mode & 0o077 == 0, "the NATS passwords are readable by others"
    passwords: dict[str, str] = json.loads(path.read_text())
    return passwords


def _connections(runtime: dict[str, object]) -> list[dict[str, object]]:
    """Every client connection of every node, with the user it authenticated as."""
    out: list[dict[str, object]] = []
    for monitor in runtime["nats_monitoring"]:  # type: ignore[attr-defined]
        with urllib.request.urlopen(f"{monitor}/connz?auth=true&limit=4096", timeout=5) as r:
            out.extend(json.loads(r.read())["connections"] or [])
    return out


def test_dev_keeps_the_nats_passwords_and_its_runtime_file_owner_only(stack: Stack) -> None:
    runtime_file = stack.data / "runtime.json"

    assert runtime_file.stat().st_mode & 0o077 == 0
    assert set(_passwords(stack.data)) == {user.name for user in nats_users.USERS}
    assert "@" not in str(stack.runtime["nats_servers"])


@pytest.mark.parametrize("service", SERVICES)
def test_in_dev_each_service_is_connected_as_its_own_nats_user(stack: Stack, service: str) -> None:
    users = {
        str(c.get("authorized_user"))
        for c in _connections(stack.runtime)
        if c.get("name") == f"mailfold-{service}"
    }

    assert users == {service}


@pytest.mark.parametrize("service", SERVICES)
async def test_in_dev_a_service_user_publishes_its_own_events_and_is_refused_anothers(
    stack: Stack, service: str, org_id: str
) -> None:
    own, foreign = (subject.format(org=org_id) for subject in OWN_AND_FOREIGN[service])

    # The stack's consumers must not see test messages: the own publish reaches the stream and
    # is turned down there (expected last sequence), after the server allowed it.
    outcome = await publish_own_and_foreign(
        str(stack.runtime["nats_servers"]).split(","),
        service,
        _passwords(stack.data)[service],
        own=own,
        foreign=foreign,
        stream=STREAM,
        store=False,
    )

    assert outcome.own == "reached the stream"
    assert len(outcome.foreign_refusals) == 1
    assert f'publish to "{foreign}"' in outcome.foreign_refusals[0]
    assert not outcome.foreign_stored


# --- mailfold dev --cluster ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster_stack(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Path, dict[str, object]]]:
    """`mailfold dev --cluster --no-demo` in a data folder of its own."""
    data = tmp_path_factory.mktemp("e2e-cluster")
    log = data / "dev.out"
    env = {**os.environ, "MAILFOLD_DATA_DIR": str(data), "MAILFOLD_LOG_JSON": "true"}
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mailfold.cli", "dev", "--cluster", "--no-demo"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        _wait_ready(proc, log, timeout=180)
        yield data, json.loads((data / "runtime.json").read_text())
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def test_dev_cluster_replicates_the_topology_three_times_over_three_nodes(
    cluster_stack: tuple[Path, dict[str, object]],
) -> None:
    _, runtime = cluster_stack
    servers = str(runtime["nats_servers"]).split(",")
    nc = await bus.connect(str(runtime["nats_url"]), "e2e-cluster", reconnect=False)
    try:
        js = nc.jetstream(timeout=10)
        streams = {info.config.name: info async for info in _streams(js)}
    finally:
        await bus.close(nc)

    assert len(servers) == 3
    # The shared ones and the services' own (webhooks' jobs and buckets, the mailbox's bucket).
    assert {
        "MAIL_EVENTS",
        "MAIL_DLQ",
        "KV_mailfold_orgs",
        "KV_mailfold_sender",
        "OBJ_mailfold_content",
        "WEBHOOK_JOBS",
        "KV_mailfold_webhooks",
        "KV_mailfold_mailbox",
    } <= set(streams)
    for name, info in streams.items():
        assert info.config.num_replicas == 3, name
        assert info.cluster is not None
        assert len(info.cluster.replicas or []) == 2, name


async def _streams(js: nats.js.JetStreamContext):  # type: ignore[no-untyped-def]
    for info in await js.streams_info():
        yield info


def test_dev_cluster_runs_each_service_as_its_own_user(
    cluster_stack: tuple[Path, dict[str, object]],
) -> None:
    _, runtime = cluster_stack
    connections = _connections(runtime)

    for service in SERVICES:
        users = {
            str(c.get("authorized_user"))
            for c in connections
            if c.get("name") == f"mailfold-{service}"
        }
        assert users == {service}, service


async def test_dev_cluster_refuses_the_tracker_a_delivery(
    cluster_stack: tuple[Path, dict[str, object]], org_id: str
) -> None:
    data, runtime = cluster_stack
    own, foreign = (subject.format(org=org_id) for subject in OWN_AND_FOREIGN["tracker"])

    outcome = await publish_own_and_foreign(
        str(runtime["nats_servers"]).split(","),
        "tracker",
        _passwords(data)["tracker"],
        own=own,
        foreign=foreign,
        stream=STREAM,
        store=False,
    )

    assert outcome.own == "reached the stream"
    assert len(outcome.foreign_refusals) == 1
    assert not outcome.foreign_stored


async def test_dev_cluster_carries_an_email_from_the_api_to_the_timeline(
    cluster_stack: tuple[Path, dict[str, object]],
) -> None:
    data, runtime = cluster_stack
    env = {**os.environ, "MAILFOLD_DATA_DIR": str(data)}
    created = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "mailfold.cli", "org", "create", "cl"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    token = created.stdout.strip()
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(timeout=10) as http:
        composed = await http.post(
            f"{runtime['ingest_url']}/v1/orgs/cl/emails",
            headers=headers,
            json={
                "source": "individual",
                "from": "rep@cl.example",
                "to": ["ann@example.org"],
                "subject": "Over three nodes",
                "html": "<p>Hi</p>",
            },
        )
        assert composed.status_code == 202, composed.text
        email_id = composed.json()["email_id"]

        async def projected() -> bool:
            answer = await http.get(
                f"{runtime['query_url']}/v1/orgs/cl/emails/{email_id}", headers=headers
            )
            return answer.status_code == 200

        assert await eventually(projected, timeout=90)
