"""deploy/nats/cluster as shipped: three nodes with TLS for clients and routes, started from the
deploy files with throwaway certificates; a service user connects over TLS and keeps to its
permissions, a plain connection, a missing client certificate and a wrong password are refused."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.errors import Error as NatsError
from tests.certificates import make_certificates
from tests.nats_users import OWN_AND_FOREIGN, publish_own_and_foreign

from mailfold.cli.embedded import free_ports, nats_server_binary
from mailfold.cli.natsconf import TLS_DIR
from mailfold.events import STREAM
from mailfold.runtime import bus, nats_users
from mailfold.runtime.settings import NatsAuth

CLUSTER = Path(__file__).resolve().parents[2] / "deploy" / "nats" / "cluster"
DEPLOY_PORTS = (4222, 4223, 4224, 8222, 8223, 8224, 6222, 6223, 6224)


# --- the cluster from deploy/ -------------------------------------------------------------------


@dataclass
class TlsCluster:
    client_ports: list[int]
    tls_dir: Path
    passwords: dict[str, str]

    @property
    def servers(self) -> list[str]:
        return [f"nats://127.0.0.1:{port}" for port in self.client_ports]

    def password(self, user: str) -> str:
        return self.passwords[nats_users.user(user).password_variable]

    def auth(self, user: str, *, client_cert: bool = True) -> NatsAuth:
        cert = str(self.tls_dir / "client.pem") if client_cert else None
        return NatsAuth(
            user=user,
            password=self.password(user),
            tls_ca_file=str(self.tls_dir / "ca.pem"),
            tls_cert_file=cert,
            tls_key_file=str(self.tls_dir / "client-key.pem") if client_cert else None,
        )


def _deploy_node_config(node: int, ports: dict[int, int], tls_dir: Path, store: Path) -> str:
    """deploy/nats/cluster/node-<node>.conf with only its ports and paths moved."""
    text = (CLUSTER / f"node-{node}.conf").read_text()
    assert TLS_DIR in text
    text = text.replace(TLS_DIR, str(tls_dir))
    text, stores = re.subn(
        r"(?m)^(\s*store_dir:).*$", lambda m: f"{m.group(1)} {json.dumps(str(store))}", text
    )
    assert stores == 1
    return re.sub(r"127\.0\.0\.1:(\d+)", lambda m: f"127.0.0.1:{ports[int(m.group(1))]}", text)


def _monitor(port: int, path: str) -> dict[str, object] | None:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        return json.loads(body) if response.status == 200 else None
    except (OSError, ValueError):
        return None
    finally:
        conn.close()


def _meta_leader(http_port: int) -> str | None:
    info = _monitor(http_port, "/jsz")
    meta = info.get("meta_cluster") if info else None
    leader = meta.get("leader") if isinstance(meta, dict) else None
    return leader if isinstance(leader, str) and leader else None


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsCluster]:
    work = tmp_path_factory.mktemp("nats-tls-cluster")
    tls_dir = work / "tls"
    make_certificates(tls_dir)
    ports = dict(zip(DEPLOY_PORTS, free_ports(len(DEPLOY_PORTS)), strict=True))
    passwords = {user.password_variable: f"p{uuid.uuid4().hex}" for user in nats_users.USERS}
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []
    try:
        for node in (1, 2, 3):
            conf = work / f"node-{node}.conf"
            conf.write_text(_deploy_node_config(node, ports, tls_dir, work / f"store-{node}"))
            log = work / f"node-{node}.log"
            logs.append(log)
            with log.open("ab") as out:
                procs.append(
                    subprocess.Popen(
                        [str(nats_server_binary()), "-c", str(conf)],
                        env={**os.environ, **passwords},
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                    )
                )
        http_ports = [ports[8221 + node] for node in (1, 2, 3)]
        deadline = time.monotonic() + 60
        while True:
            for proc, log in zip(procs, logs, strict=True):
                assert proc.poll() is None, log.read_text()
            leaders = {_meta_leader(port) for port in http_ports}
            if len(leaders) == 1 and None not in leaders:
                break
            assert time.monotonic() < deadline, "\n".join(log.read_text() for log in logs)
            time.sleep(0.1)
        yield TlsCluster([ports[4221 + node] for node in (1, 2, 3)], tls_dir, passwords)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# --- tests --------------------------------------------------------------------------------------


async def _connect_error(servers: list[str], **options: object) -> str:
    """The error a connection with `options` ends with ("connected" when it does not)."""
    nc = Client()
    try:
        await nc.connect(servers, allow_reconnect=False, connect_timeout=5, **options)  # type: ignore[arg-type]
    except (NatsError, OSError, ssl.SSLError, TimeoutError) as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        await nc.close()
    return "connected"


async def test_a_service_user_publishes_its_own_events_over_tls_and_is_refused_anothers(
    tls_cluster: TlsCluster, org_id: str
) -> None:
    admin = await bus.connect(
        ",".join(tls_cluster.servers), "tls-test", reconnect=False, auth=tls_cluster.auth("admin")
    )
    try:
        js = admin.jetstream(timeout=10)
        for attempt in range(6):
            try:
                await bus.ensure_topology(js, replicas=3)
                break
            except NatsError:
                if attempt == 5:
                    raise
                await asyncio.sleep(1)
        info = await js.stream_info(STREAM)
    finally:
        await bus.close(admin)
    ingest = tls_cluster.auth("ingest")
    own, foreign = (s.format(org=org_id) for s in OWN_AND_FOREIGN["ingest"])

    outcome = await publish_own_and_foreign(
        tls_cluster.servers,
        "ingest",
        tls_cluster.password("ingest"),
        own=own,
        foreign=foreign,
        stream=STREAM,
        tls=bus.endpoint(",".join(tls_cluster.servers), ingest).tls,
    )

    assert info.config.num_replicas == 3
    assert outcome.own == "stored"
    assert len(outcome.foreign_refusals) == 1
    assert not outcome.foreign_stored


def test_a_plain_connection_is_refused(tls_cluster: TlsCluster) -> None:
    with socket.create_connection(("127.0.0.1", tls_cluster.client_ports[0]), timeout=5) as sock:
        reader = sock.makefile("rb")
        info = json.loads(reader.readline()[len(b"INFO ") :])
        password = tls_cluster.password("ingest")
        connect = json.dumps({"user": "ingest", "pass": password, "verbose": False})
        sock.sendall(f"CONNECT {connect}\r\nPING\r\n".encode())
        answer = reader.readline()

    assert info["tls_required"] is True
    assert answer == b"" or answer.startswith(b"-ERR"), answer


async def test_a_wrong_password_over_tls_is_refused(tls_cluster: TlsCluster) -> None:
    where = bus.endpoint(",".join(tls_cluster.servers), tls_cluster.auth("ingest"))

    error = await _connect_error(
        where.servers[:1], user="ingest", password="not-the-password", tls=where.tls
    )

    assert "authorization violation" in error.lower()


async def test_a_client_without_a_certificate_is_refused(tls_cluster: TlsCluster) -> None:
    where = bus.endpoint(
        ",".join(tls_cluster.servers), tls_cluster.auth("ingest", client_cert=False)
    )

    error = await _connect_error(
        where.servers[:1], user="ingest", password=tls_cluster.password("ingest"), tls=where.tls
    )

    assert error != "connected"
    assert "authorization" not in error.lower()  # refused by the TLS handshake, before any user
