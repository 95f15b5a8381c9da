"""The ingest service's settings come from MAILFOLD_* variables, with safe defaults."""

from __future__ import annotations

import pytest

from mailfold.ingest.bootstrap import Settings
from mailfold.runtime.settings import ConfigError

VARIABLES = (
    "MAILFOLD_HTTP_HOST",
    "MAILFOLD_INGEST_HTTP_PORT",
    "MAILFOLD_INGEST_SMTP_HOST",
    "MAILFOLD_INGEST_SMTP_PORT",
    "MAILFOLD_INGEST_SMTP_MAX_BYTES",
    "MAILFOLD_INGEST_SMTP_MAX_RECIPIENTS",
    "MAILFOLD_INGEST_SMTP_TIMEOUT_S",
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_defaults_listen_on_loopback_on_the_documented_ports() -> None:
    settings = Settings.from_env()
    assert (settings.http_host, settings.http_port) == ("127.0.0.1", 8001)
    assert (settings.smtp_host, settings.smtp_port) == ("127.0.0.1", 2525)
    assert settings.smtp_max_bytes == 25 * 1024 * 1024
    assert settings.smtp_max_recipients == 100


def test_variables_override_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILFOLD_HTTP_HOST", "0.0.0.0")
    monkeypatch.setenv("MAILFOLD_INGEST_HTTP_PORT", "9001")
    monkeypatch.setenv("MAILFOLD_INGEST_SMTP_PORT", "2626")
    monkeypatch.setenv("MAILFOLD_INGEST_SMTP_MAX_BYTES", "1000")
    settings = Settings.from_env()
    assert settings.http_host == settings.smtp_host == "0.0.0.0"
    assert (settings.http_port, settings.smtp_port, settings.smtp_max_bytes) == (9001, 2626, 1000)


def test_a_bad_number_names_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILFOLD_INGEST_SMTP_PORT", "twenty-five")
    with pytest.raises(ConfigError, match="MAILFOLD_INGEST_SMTP_PORT"):
        Settings.from_env()
