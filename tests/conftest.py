"""Fixtures that give tests real NATS and PostgreSQL servers on loopback."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.nats_users import CREDENTIALS

from mailfold.cli.embedded import EmbeddedNats, EmbeddedNatsCluster, EmbeddedPostgres


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    """One nats-server with JetStream for the whole session; tests isolate by subject and stream.

    Its users are mailfold's (tests.nats_users.as_user gives a service's URL)."""
    with EmbeddedNats(tmp_path_factory.mktemp("nats"), credentials=CREDENTIALS) as server:
        yield server


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    """One PostgreSQL shared by the whole session; tests isolate by database (see database_url)."""
    with EmbeddedPostgres(tmp_path_factory.mktemp("postgres"), fast=True) as server:
        yield server


@pytest.fixture
def nats_url(nats_server: EmbeddedNats) -> str:
    """URL of the session's nats-server, as admin (no restrictions)."""
    return nats_server.url


@pytest.fixture
def database_url(postgres_server: EmbeddedPostgres) -> Iterator[str]:
    """DSN of a new, empty database on the session's PostgreSQL, dropped after the test."""
    name = f"t_{uuid.uuid4().hex}"
    yield postgres_server.create_database(name)
    # Dropping keeps a long session from piling up a copy of template1 per test.
    postgres_server.drop_database(name)


@pytest.fixture
def fresh_nats(tmp_path: Path) -> Iterator[EmbeddedNats]:
    """A nats-server of the test's own, free to be killed and restarted."""
    with EmbeddedNats(tmp_path / "nats", credentials=CREDENTIALS) as server:
        yield server


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[EmbeddedNatsCluster]:
    """Three nats-server nodes of the test's own, routed into one JetStream cluster; each node
    may be killed, restarted, paused and resumed."""
    with EmbeddedNatsCluster(tmp_path / "cluster", size=3, credentials=CREDENTIALS) as cluster:
        yield cluster


@pytest.fixture
def org_id() -> str:
    """A random organisation id: "org" and 8 hex digits."""
    return f"org{uuid.uuid4().hex[:8]}"
