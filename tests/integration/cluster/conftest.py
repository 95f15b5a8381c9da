"""The pipeline on a three-node JetStream cluster: real service processes, one PostgreSQL.

`cluster_stack` runs what an operator runs on a cluster (`mailfold migrate`, `mailfold topology
--replicas 3`, `mailfold org create`), then `mailfold serve ingest|tracker|projector` as child
processes given every node's URL, each on free loopback ports.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from tests.processes import ServiceProcess

from mailfold.cli.embedded import EmbeddedNatsCluster, free_ports


def mailfold(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run `mailfold ...` as an operator would, failing with its output when it fails."""
    result = subprocess.run(
        [sys.executable, "-m", "mailfold.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"mailfold {' '.join(args)}:\n{result.stdout}{result.stderr}"
    return result


@dataclass
class ClusterStack:
    """A running pipeline on the cluster, and how to reach it."""

    cluster: EmbeddedNatsCluster
    database_url: str
    env: dict[str, str]
    org_id: str
    token: str
    ingest_port: int
    smtp_port: int
    tracker_port: int
    services: dict[str, ServiceProcess] = field(default_factory=dict)

    @property
    def ingest_url(self) -> str:
        return f"http://127.0.0.1:{self.ingest_port}"

    @property
    def tracker_url(self) -> str:
        return f"http://127.0.0.1:{self.tracker_port}"

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return mailfold(self.env, *args)

    def logs(self) -> str:
        """The tail of every service's log, for a failure message."""
        return "\n".join(
            f"--- {name} ---\n{service.tail()}" for name, service in self.services.items()
        )


@pytest.fixture
async def cluster_stack(
    nats_cluster: EmbeddedNatsCluster, database_url: str, org_id: str, tmp_path: Path
) -> AsyncIterator[ClusterStack]:
    """Topology with 3 replicas, the projection's tables, an org, and ingest, tracker and
    projector serving on the cluster; the services are stopped after the test."""
    env = dict(
        os.environ,
        MAILFOLD_NATS_URL=nats_cluster.url,
        MAILFOLD_DATABASE_URL=database_url,
        MAILFOLD_DATA_DIR=str(tmp_path / "no-dev"),  # never a running `mailfold dev`'s
        MAILFOLD_LOG_JSON="true",
    )
    mailfold(env, "migrate")
    mailfold(env, "topology", "--replicas", "3")
    token = mailfold(env, "org", "create", org_id).stdout.strip()
    ingest_port, smtp_port, tracker_port, projector_port = free_ports(4)
    stack = ClusterStack(
        nats_cluster, database_url, env, org_id, token, ingest_port, smtp_port, tracker_port
    )
    own_env = {
        "ingest": {
            "MAILFOLD_INGEST_HTTP_PORT": str(ingest_port),
            "MAILFOLD_INGEST_SMTP_PORT": str(smtp_port),
        },
        "tracker": {"MAILFOLD_TRACKER_PORT": str(tracker_port)},
        "projector": {"MAILFOLD_PROJECTOR_PORT": str(projector_port)},
    }
    health_ports = {"ingest": ingest_port, "tracker": tracker_port, "projector": projector_port}
    for name, extra in own_env.items():
        stack.services[name] = ServiceProcess(
            name, {**env, **extra}, health_ports[name], tmp_path / f"{name}.log"
        )
    try:
        for service in stack.services.values():
            service.start()
        for service in stack.services.values():
            await service.wait_healthy()
        yield stack
    finally:
        for service in stack.services.values():
            with contextlib.suppress(Exception):
                service.stop()


@pytest.fixture
def resumed_cluster(nats_cluster: EmbeddedNatsCluster) -> Iterator[EmbeddedNatsCluster]:
    """The cluster, every node resumed after the test even when it failed while one was paused
    (a stopped process would not stop on SIGTERM)."""
    yield nats_cluster
    for node in nats_cluster.nodes:
        node.resume()
