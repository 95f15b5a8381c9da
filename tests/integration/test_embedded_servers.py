"""Embedded NATS and PostgreSQL, and the NATS configs under deploy/, run on the real binaries."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import re
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import nats
import nats.js.errors
import psutil
import pytest
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import PubAck, StreamConfig
from tests.certificates import make_certificates

from mailfold.cli.embedded import (
    EmbeddedNats,
    EmbeddedNatsCluster,
    EmbeddedPostgres,
    EmbeddedServerError,
    free_port,
    free_ports,
    nats_server_binary,
)
from mailfold.cli.natsconf import TLS_DIR
from mailfold.runtime import bus

DEPLOY_NATS = Path(__file__).resolve().parents[2] / "deploy" / "nats"
DEPLOY_CONFIGS = sorted(DEPLOY_NATS.rglob("*.conf"))
SERVICES = ("ingest", "sender", "tracker", "projector", "webhooks", "mailbox")


def _password_env() -> dict[str, str]:
    # Letters then hex: nats-server parses an env var's value, and digits alone would be a number.
    return {
        f"MAILFOLD_NATS_{service.upper()}_PASSWORD": f"pw{service}{uuid.uuid4().hex}"
        for service in (*SERVICES, "admin")
    }


def _healthz_status(port: int, query: str = "") -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", f"/healthz{query}")
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def _zombie_children() -> list[psutil.Process]:
    return [
        child for child in psutil.Process().children() if child.status() == psutil.STATUS_ZOMBIE
    ]


# --- NATS ---------------------------------------------------------------------------------------


def test_nats_server_binary_is_found_next_to_the_python_executable() -> None:
    binary = nats_server_binary()

    assert binary.is_file()
    assert os.access(binary, os.X_OK)


def test_nats_server_reports_jetstream_healthy_on_its_monitoring_port(
    nats_server: EmbeddedNats,
) -> None:
    assert nats_server.address == f"nats://127.0.0.1:{nats_server.port}"
    assert _healthz_status(nats_server.http_port, "?js-enabled-only=true") == 200


async def test_a_jetstream_publish_is_acknowledged(nats_url: str) -> None:
    stream = f"T_{uuid.uuid4().hex}"
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        await js.add_stream(name=stream, subjects=[f"{stream}.>"])

        ack = await js.publish(f"{stream}.a", b"x")

        assert (ack.stream, ack.seq) == (stream, 1)
    finally:
        await nc.close()


async def test_jetstream_messages_survive_a_kill_and_restart(fresh_nats: EmbeddedNats) -> None:
    nc = await nats.connect(fresh_nats.url)
    try:
        js = nc.jetstream()
        await js.add_stream(name="T", subjects=["t.>"])
        await js.publish("t.a", b"x")
    finally:
        await nc.close()

    fresh_nats.kill()
    fresh_nats.restart()

    nc = await nats.connect(fresh_nats.url)
    try:
        js = nc.jetstream()
        info = await js.stream_info("T")
        stored = await js.get_msg("T", seq=1)
    finally:
        await nc.close()
    assert info.state.messages == 1
    assert (stored.subject, stored.data) == ("t.a", b"x")


def test_nats_keeps_its_port_and_url_across_restarts(fresh_nats: EmbeddedNats) -> None:
    port, url, pid = fresh_nats.port, fresh_nats.url, fresh_nats.pid

    fresh_nats.kill()
    fresh_nats.restart()

    assert (fresh_nats.port, fresh_nats.url) == (port, url)
    assert fresh_nats.pid not in (None, pid)
    assert _healthz_status(fresh_nats.http_port, "?js-enabled-only=true") == 200


def test_nats_stop_is_idempotent_and_leaves_no_process(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "nats")
    server.start()
    pid = server.pid
    assert pid is not None

    server.stop()
    server.stop()

    assert server.pid is None
    assert not psutil.pid_exists(pid)
    assert not _zombie_children()


def test_nats_start_failure_names_the_cause_from_the_log(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        server = EmbeddedNats(tmp_path / "nats", port=squatter.getsockname()[1])

        with pytest.raises(EmbeddedServerError, match="address already in use"):
            server.start()

    assert server.pid is None


def test_nats_refuses_a_second_server_on_a_data_dir_in_use(fresh_nats: EmbeddedNats) -> None:
    second = EmbeddedNats(fresh_nats.data_dir)

    with pytest.raises(EmbeddedServerError, match=f"pid {fresh_nats.pid}"):
        second.start()

    assert second.pid is None
    assert fresh_nats.running


async def test_a_cluster_replicates_a_stream_over_three_nodes_and_survives_losing_its_leader(
    nats_cluster: EmbeddedNatsCluster,
) -> None:
    nc = await nats.connect(nats_cluster.urls, reconnect_time_wait=0.2, max_reconnect_attempts=-1)
    try:
        js = nc.jetstream(timeout=2)
        config = StreamConfig(name="T", subjects=["t.>"], num_replicas=3)
        await bus.through_elections(lambda: js.add_stream(config), within_s=30)
        first = {"Nats-Msg-Id": "one"}
        await bus.through_elections(lambda: js.publish("t.a", b"1", headers=first), within_s=30)
        info = await js.stream_info("T")
        assert info.cluster is not None
        assert info.cluster.leader is not None
        assert len(info.cluster.replicas or []) == 2
        leader = nats_cluster.node_named(info.cluster.leader)

        leader.kill()
        ack = await _eventually_published(js, "t.a", b"2")
        leader.start()

        assert ack.seq == 2
        stored = [(await js.get_msg("T", seq=seq)).data for seq in (1, 2)]
    finally:
        await nc.close()
    assert stored == [b"1", b"2"]


async def _eventually_published(js: JetStreamContext, subject: str, data: bytes) -> PubAck:
    """Publish, retrying while the stream elects a new leader (no answer until it has one)."""
    for _ in range(60):
        try:
            return await js.publish(subject, data, timeout=1, headers={"Nats-Msg-Id": "two"})
        except (nats.errors.TimeoutError, nats.js.errors.NoStreamResponseError):
            await asyncio.sleep(0.5)
    raise AssertionError("no stream leader was elected after the leader was killed")


def test_a_paused_cluster_node_is_left_out_until_resumed(
    nats_cluster: EmbeddedNatsCluster,
) -> None:
    first, *others = nats_cluster.nodes
    leader = nats_cluster.wait_meta_leader()

    first.pause()
    try:
        assert first.meta_leader() is None  # a stopped process answers no monitoring request
        if leader == first.server_name:
            leader = _wait_for_other_meta_leader(others, leader)
        assert {node.meta_leader() for node in others} == {leader}
    finally:
        first.resume()

    assert nats_cluster.wait_meta_leader() == leader


def _wait_for_other_meta_leader(nodes: list[EmbeddedNats], old: str) -> str:
    for _ in range(200):
        leaders = {node.meta_leader() for node in nodes}
        if len(leaders) == 1 and None not in leaders and old not in leaders:
            return str(leaders.pop())
        time.sleep(0.1)
    raise AssertionError(f"no new meta leader after {old} was paused")


# --- PostgreSQL ---------------------------------------------------------------------------------


async def test_postgres_answers_a_query(postgres_server: EmbeddedPostgres) -> None:
    conn = await asyncpg.connect(postgres_server.dsn)
    try:
        version = await conn.fetchval("SHOW server_version_num")
    finally:
        await conn.close()

    assert int(version) // 10000 == 16


async def test_database_url_is_a_fresh_empty_database_of_its_own(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        name = await conn.fetchval("SELECT current_database()")
        tables = await conn.fetchval(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        )
    finally:
        await conn.close()

    assert name.startswith("t_")
    assert database_url.endswith(f"/{name}")
    assert tables == 0


def test_postgres_listens_on_loopback_only_with_its_socket_in_the_data_dir(
    postgres_server: EmbeddedPostgres,
) -> None:
    # postmaster.pid: pid, data dir, start time, port, socket dir, listen address, shmem, status.
    fields = (postgres_server.data_dir / "postmaster.pid").read_text().splitlines()

    assert int(fields[3]) == postgres_server.port
    assert Path(fields[4]) == postgres_server.data_dir
    assert fields[5] == "127.0.0.1"
    assert (postgres_server.data_dir / f".s.PGSQL.{postgres_server.port}").is_socket()


async def test_postgres_second_start_on_the_same_dir_reuses_data(tmp_path: Path) -> None:
    with EmbeddedPostgres(tmp_path / "pg", fast=True) as first:
        conn = await asyncpg.connect(first.dsn)
        try:
            await conn.execute("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('first run')")
        finally:
            await conn.close()

    with EmbeddedPostgres(tmp_path / "pg", fast=True) as second:
        conn = await asyncpg.connect(second.dsn)
        try:
            kept = await conn.fetchval("SELECT v FROM kept")
        finally:
            await conn.close()

    assert kept == "first run"


def test_postgres_start_reuses_a_server_already_running_on_the_data_dir(tmp_path: Path) -> None:
    with EmbeddedPostgres(tmp_path / "pg", fast=True) as running:
        again = EmbeddedPostgres(tmp_path / "pg", port=free_port(), fast=True)
        again.start()

        assert (again.pid, again.port, again.dsn) == (running.pid, running.port, running.dsn)
        assert again.pid is not None


async def test_postgres_starts_again_after_a_kill_left_a_stale_pid_file(tmp_path: Path) -> None:
    server = EmbeddedPostgres(tmp_path / "pg")
    server.start()
    conn = await asyncpg.connect(server.dsn)
    try:
        await conn.execute("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('committed')")
    finally:
        await conn.close()
    killed_pid = server.pid
    assert killed_pid is not None

    server.kill()
    assert (tmp_path / "pg" / "postmaster.pid").exists()
    assert not psutil.pid_exists(killed_pid)
    assert not _zombie_children()
    server.start()
    try:
        conn = await asyncpg.connect(server.dsn)
        try:
            kept = await conn.fetchval("SELECT v FROM kept")
        finally:
            await conn.close()
    finally:
        server.stop()

    assert kept == "committed"


def test_postgres_stop_is_idempotent_and_leaves_no_process(tmp_path: Path) -> None:
    server = EmbeddedPostgres(tmp_path / "pg", fast=True)
    server.start()
    pid = server.pid
    assert pid is not None

    server.stop()
    server.stop()

    assert server.pid is None
    assert not psutil.pid_exists(pid)
    assert not _zombie_children()
    assert not (tmp_path / "pg" / "postmaster.pid").exists()


async def test_create_database_returns_the_dsn_of_a_new_database(
    postgres_server: EmbeddedPostgres,
) -> None:
    name = f"t_{uuid.uuid4().hex}"
    dsn = postgres_server.create_database(name)
    try:
        conn = await asyncpg.connect(dsn)
        try:
            current = await conn.fetchval("SELECT current_database()")
        finally:
            await conn.close()
    finally:
        postgres_server.drop_database(name)

    assert current == name


# --- deploy/nats --------------------------------------------------------------------------------


def test_every_deploy_config_is_found() -> None:
    names = {conf.relative_to(DEPLOY_NATS).as_posix() for conf in DEPLOY_CONFIGS}

    assert {"nats-single.conf", *(f"cluster/node-{n}.conf" for n in (1, 2, 3))} <= names


@pytest.fixture(scope="module")
def deploy_certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Throwaway certificates named as deploy/nats/cluster expects them."""
    folder = tmp_path_factory.mktemp("deploy-tls") / "tls"
    make_certificates(folder)
    return folder


@pytest.mark.parametrize(
    "conf", DEPLOY_CONFIGS, ids=[c.relative_to(DEPLOY_NATS).as_posix() for c in DEPLOY_CONFIGS]
)
def test_deploy_config_is_valid_for_nats_server(
    conf: Path, deploy_certificates: Path, tmp_path: Path
) -> None:
    # As shipped, but for where its certificates are (the operator's, in /etc/mailfold/tls).
    checked = tmp_path / conf.name
    checked.write_text(conf.read_text().replace(TLS_DIR, str(deploy_certificates)))

    result = subprocess.run(
        [str(nats_server_binary()), "-t", "-c", str(checked)],
        env={**os.environ, **_password_env()},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def single_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    """deploy/nats/nats-single.conf running on free loopback ports; yields its URL and passwords."""
    passwords = _password_env()
    port, http_port = free_ports(2)
    workdir = tmp_path_factory.mktemp("nats-single")
    log_path = workdir / "nats.log"
    # The deploy file verbatim but for its store_dir (nats-server rejects -sd on top of one), and
    # flags for the addresses, so its users and permissions are what gets exercised.
    conf, replaced = re.subn(
        r"(?m)^(\s*store_dir:).*$",
        lambda m: f"{m.group(1)} {json.dumps(str(workdir))}",
        (DEPLOY_NATS / "nats-single.conf").read_text(),
    )
    assert replaced == 1
    conf_path = workdir / "nats-single.conf"
    conf_path.write_text(conf)
    command = [
        str(nats_server_binary()),
        "-c",
        str(conf_path),
        "-a",
        "127.0.0.1",
        "-p",
        str(port),
        "-m",
        str(http_port),
    ]
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            command, env={**os.environ, **passwords}, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, log_path.read_text()
            try:
                if _healthz_status(http_port, "?js-enabled-only=true") == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        yield f"nats://127.0.0.1:{port}", passwords
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


OWN_AND_FOREIGN_EVENTS = [
    ("ingest", "mail.events.{org}.email_captured", "mail.events.{org}.email_opened"),
    ("sender", "mail.events.{org}.email_sent", "mail.events.{org}.email_composed"),
    ("tracker", "mail.events.{org}.email_clicked", "mail.events.{org}.email_delivered"),
    ("projector", "mail.dlq.projector", "mail.events.{org}.email_opened"),
    ("webhooks", "webhooks.jobs.{org}.ep_1", "mail.events.{org}.email_sent"),
    ("mailbox", "mail.events.{org}.email_deleted", "mail.events.{org}.email_delivered"),
]


@pytest.mark.parametrize(
    ("service", "own", "foreign"),
    OWN_AND_FOREIGN_EVENTS,
    ids=[row[0] for row in OWN_AND_FOREIGN_EVENTS],
)
async def test_a_service_user_may_publish_its_own_events_but_not_others(
    single_node: tuple[str, dict[str, str]], org_id: str, service: str, own: str, foreign: str
) -> None:
    url, passwords = single_node
    violations: list[NatsError] = []
    violated = asyncio.Event()

    async def record(error: Exception) -> None:
        if isinstance(error, NatsError):
            violations.append(error)
            violated.set()

    nc = await nats.connect(
        url,
        user=service,
        password=passwords[f"MAILFOLD_NATS_{service.upper()}_PASSWORD"],
        error_cb=record,
    )
    try:
        js = nc.jetstream()
        stream = f"S_{uuid.uuid4().hex}"
        subjects = [own.format(org=org_id), foreign.format(org=org_id)]
        await js.add_stream(name=stream, subjects=subjects)

        ack = await js.publish(subjects[0], b"own")
        await nc.publish(subjects[1], b"foreign")
        await nc.flush()
        # A denied publish raises nothing: the server answers with an -ERR that reaches error_cb.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(violated.wait(), timeout=5)
        info = await js.stream_info(stream)
        await js.delete_stream(stream)
    finally:
        await nc.close()

    assert ack.seq == 1
    assert info.state.messages == 1
    assert len(violations) == 1
    assert "permissions violation for publish" in str(violations[0])
    assert subjects[1] in str(violations[0])
