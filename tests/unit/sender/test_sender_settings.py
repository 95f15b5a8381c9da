"""The sender's configuration: safe defaults, and a clear error naming a bad variable."""

from __future__ import annotations

import pytest

from mailfold.runtime.settings import ConfigError
from mailfold.sender.bootstrap import Settings
from mailfold.sender.domain.routes import Hop


def test_defaults_need_no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "MAILFOLD_SMTP_ROUTES",
        "MAILFOLD_SENDER_PORT",
        "MAILFOLD_SENDER_RETRY_BASE_S",
        "MAILFOLD_SENDER_MAX_AGE_S",
        "MAILFOLD_SENDER_CONCURRENCY",
    ):
        monkeypatch.delenv(name, raising=False)
    settings = Settings.from_env()
    assert settings.http_port == 8004
    assert settings.routes.lookup("example.org") is None
    assert (settings.retry.base_s, settings.retry.factor) == (60.0, 2.0)
    assert settings.retry.max_age_s == 4 * 86400
    assert settings.consumer == "sender"


def test_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILFOLD_SMTP_ROUTES", "example.org=127.0.0.1:2526,*=127.0.0.1:2527")
    monkeypatch.setenv("MAILFOLD_SENDER_PORT", "0")
    monkeypatch.setenv("MAILFOLD_SENDER_RETRY_BASE_S", "0.5")
    monkeypatch.setenv("MAILFOLD_SENDER_MAX_AGE_S", "30")
    monkeypatch.setenv("MAILFOLD_SENDER_CONCURRENCY", "4")
    settings = Settings.from_env()
    assert settings.routes.lookup("example.org") == Hop("127.0.0.1", 2526)
    assert settings.routes.lookup("else.test") == Hop("127.0.0.1", 2527)
    assert (settings.http_port, settings.concurrency) == (0, 4)
    assert (settings.retry.base_s, settings.retry.max_age_s) == (0.5, 30.0)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MAILFOLD_SMTP_ROUTES", "example.org"),
        ("MAILFOLD_SENDER_RETRY_BASE_S", "-1"),
        ("MAILFOLD_SENDER_MAX_AGE_S", "soon"),
        ("MAILFOLD_SENDER_CONCURRENCY", "0"),
    ],
)
def test_a_bad_value_is_refused_naming_its_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=name):
        Settings.from_env()
