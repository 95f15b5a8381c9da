"""The `mailfold` command: schema, policy, org and topology, run as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nats
import pytest

from mailfold.cli.embedded import EmbeddedNats
from mailfold.events import EVENT_TYPES
from mailfold.runtime.orgs import TokenVerifier


def mailfold(
    *args: str, nats_url: str | None = None, data: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILFOLD_")}
    if nats_url:
        env["MAILFOLD_NATS_URL"] = nats_url
    if data:
        env["MAILFOLD_DATA_DIR"] = str(data)
    return subprocess.run(
        [sys.executable, "-m", "mailfold.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_schema_prints_the_json_schema_of_every_event() -> None:
    result = mailfold("schema")
    assert result.returncode == 0, result.stderr
    schema = json.loads(result.stdout)
    assert schema["discriminator"]["propertyName"] == "type"
    assert set(schema["discriminator"]["mapping"]) == set(EVENT_TYPES)


def test_schema_asyncapi_prints_the_services_document() -> None:
    result = mailfold("schema", "--asyncapi")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["asyncapi"].startswith("3.")
    assert doc["operations"]["sender:email_composed"]["action"] == "receive"
    assert {c["address"] for c in doc["channels"].values()} == {
        "mail.events.>",
        *(f"mail.events.*.{t}" for t in EVENT_TYPES),  # email_deleted: the mailbox sync
        "webhooks.jobs.*.*",  # the webhooks service's delivery jobs
    }


def test_policy_json_lists_every_row_with_its_sources_and_statuses() -> None:
    result = mailfold("policy", "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["bcc_dropbox"]["reachable"] == ["Sent"]
    assert rows["bcc_dropbox"]["sources"] == ["BCC Dropbox"]
    assert rows["integrated_mailbox"]["sources"] == ["IMAP", "POP3"]
    assert "Clicked" in rows["crm_servers_one_recipient"]["reachable"]
    assert "Opened" not in rows["crm_servers_several_recipients"]["reachable"]


def test_policy_prints_a_readable_table() -> None:
    result = mailfold("policy")
    assert result.returncode == 0
    assert "BCC dropbox\n  reachable: Sent\n  sources:   BCC Dropbox" in result.stdout


async def test_org_create_prints_a_token_once_and_keeps_only_its_hash(
    fresh_nats: EmbeddedNats,
) -> None:
    first = mailfold("org", "create", "acme", nats_url=fresh_nats.url)
    assert first.returncode == 0, first.stderr
    token = first.stdout.strip()
    again = mailfold("org", "create", "acme", nats_url=fresh_nats.url)
    assert again.returncode == 1
    assert "already exists" in again.stderr
    nc = await nats.connect(fresh_nats.url)
    try:
        bucket = await nc.jetstream().key_value("mailfold_orgs")
        stored = (await bucket.get("acme.token")).value
        assert stored is not None
        assert token.encode() not in stored
        verifier = TokenVerifier(bucket, ttl_s=0)
        assert await verifier.verify("acme", token)
        rotated = mailfold("org", "create", "acme", "--rotate", nats_url=fresh_nats.url)
        assert rotated.returncode == 0
        assert not await verifier.verify("acme", token)
        assert await verifier.verify("acme", rotated.stdout.strip())
    finally:
        await nc.close()


@pytest.mark.parametrize("bad", ["Acme", "a b", "x.y", "_x", "x" * 64])
def test_org_create_refuses_an_org_id_that_is_not_a_subject_token(bad: str) -> None:
    result = mailfold("org", "create", bad, nats_url="nats://127.0.0.1:1")
    assert result.returncode == 2
    assert "org id" in result.stderr


async def test_topology_creates_the_streams_buckets_and_object_store_idempotently(
    fresh_nats: EmbeddedNats,
) -> None:
    for _ in range(2):
        result = mailfold("topology", nats_url=fresh_nats.url)
        assert result.returncode == 0, result.stderr
    nc = await nats.connect(fresh_nats.url)
    try:
        js = nc.jetstream()
        names = {s.config.name for s in await js.streams_info()}
    finally:
        await nc.close()
    assert {"MAIL_EVENTS", "MAIL_DLQ", "KV_mailfold_orgs", "KV_mailfold_directory"} <= names
    assert {"KV_mailfold_sender", "KV_mailfold_idempotency", "OBJ_mailfold_content"} <= names


def test_the_cli_finds_a_dev_stack_through_its_runtime_file(
    fresh_nats: EmbeddedNats, tmp_path: Path
) -> None:
    (tmp_path / "runtime.json").write_text(json.dumps({"nats_url": fresh_nats.url}))
    result = mailfold("topology", data=tmp_path)
    assert result.returncode == 0, result.stderr
    assert fresh_nats.address.removeprefix("nats://") in result.stdout
    assert fresh_nats.credentials.password("admin") not in result.stdout
