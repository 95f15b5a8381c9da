"""The one table of NATS users: deploy/nats is written from it, services' declared publishers are
in it, and connection options are built from settings without leaking a password."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailfold.cli.asyncapi import asyncapi_document
from mailfold.cli.natsconf import deploy_configs
from mailfold.runtime import nats_users
from mailfold.runtime.bus import endpoint, redact
from mailfold.runtime.settings import ConfigError, NatsAuth

DEPLOY_NATS = Path(__file__).resolve().parents[2] / "deploy" / "nats"


def test_deploy_nats_configs_are_the_ones_written_from_the_user_table() -> None:
    configs = deploy_configs()

    on_disk = {
        path.relative_to(DEPLOY_NATS).as_posix(): path.read_text()
        for path in DEPLOY_NATS.rglob("*.conf")
    }

    assert set(on_disk) == set(configs)
    for name, text in configs.items():
        assert on_disk[name] == text, f"deploy/nats/{name} is stale: run mailfold nats-config"


def test_every_deploy_config_names_every_user_and_its_password_variable() -> None:
    for text in deploy_configs().values():
        for user in nats_users.USERS:
            assert f"user: {user.name}\n" in text
            assert f"password: ${user.password_variable}\n" in text


def test_every_event_a_service_declares_it_publishes_is_allowed_to_its_user() -> None:
    operations = asyncapi_document()["operations"]
    sent = [
        tuple(str(name).split(":", 1))
        for name, operation in operations.items()
        if operation["action"] == "send" and ":email_" in name
    ]

    assert sent
    for service, event in sent:
        assert event in nats_users.user(service).events, (service, event)


def test_only_the_admin_is_unrestricted() -> None:
    assert [u.name for u in nats_users.USERS if u.unrestricted] == [nats_users.ADMIN]
    assert {u.name for u in nats_users.SERVICE_USERS} == {
        "ingest",
        "sender",
        "tracker",
        "projector",
        "webhooks",
        "mailbox",
    }


def test_the_tracker_may_not_publish_a_delivery() -> None:
    tracker = nats_users.user("tracker")

    assert "mail.events.*.email_opened" in tracker.publish
    assert "mail.events.*.email_delivered" not in tracker.publish
    assert "mail.events.>" not in tracker.publish


def test_credentials_in_a_url_become_connect_options_and_leave_the_url() -> None:
    where = endpoint("nats://tracker:s%40cret@10.0.0.1:4222, nats://10.0.0.2:4222")

    assert where.servers == ["nats://10.0.0.1:4222", "nats://10.0.0.2:4222"]
    assert (where.user, where.password) == ("tracker", "s@cret")
    assert where.tls is None


def test_settings_credentials_win_over_the_urls() -> None:
    where = endpoint("nats://admin:x@h:4222", NatsAuth(user="sender", password="pw"))

    assert (where.user, where.password) == ("sender", "pw")
    assert where.servers == ["nats://h:4222"]


def test_an_address_without_a_scheme_is_nats() -> None:
    assert endpoint("127.0.0.1:4333").servers == ["nats://127.0.0.1:4333"]


def test_an_empty_url_is_refused() -> None:
    with pytest.raises(ConfigError, match="no NATS server"):
        endpoint(" , ")


def test_a_tls_url_gets_a_tls_context() -> None:
    assert endpoint("tls://h:4222").tls is not None


def test_the_password_never_shows_in_a_repr() -> None:
    auth = NatsAuth(user="ingest", password="hunter2-secret")
    where = endpoint("nats://h:4222", auth)

    assert "hunter2" not in repr(auth)
    assert "hunter2" not in repr(where)


def test_redact_masks_every_password_of_a_list() -> None:
    assert redact("nats://admin:pw1@a:1,nats://b:2,nats://u:pw2@c:3") == (
        "nats://admin:***@a:1,nats://b:2,nats://u:***@c:3"
    )


def test_nats_credentials_and_tls_files_are_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not read here")
    monkeypatch.setenv("MAILFOLD_NATS_USER", "webhooks")
    monkeypatch.setenv("MAILFOLD_NATS_PASSWORD", "pw")
    monkeypatch.setenv("MAILFOLD_NATS_TLS_CA", str(ca))

    auth = NatsAuth.from_env()

    assert (auth.user, auth.password, auth.tls_ca_file) == ("webhooks", "pw", str(ca))
    assert auth.tls


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MAILFOLD_NATS_PASSWORD": "pw"}, "MAILFOLD_NATS_USER is not"),
        ({"MAILFOLD_NATS_TLS_CERT": "/etc/hosts"}, "go together"),
        ({"MAILFOLD_NATS_TLS_CA": "/nonexistent/ca.pem"}, "MAILFOLD_NATS_TLS_CA names no"),
    ],
)
def test_incomplete_nats_settings_are_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    for name in ("USER", "PASSWORD", "TLS_CA", "TLS_CERT", "TLS_KEY"):
        monkeypatch.delenv(f"MAILFOLD_NATS_{name}", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    with pytest.raises(ConfigError, match=message):
        NatsAuth.from_env()
