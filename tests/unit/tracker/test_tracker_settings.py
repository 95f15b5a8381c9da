"""Tracker settings: defaults, every variable read, and bad values refused by name."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from mailfold.runtime.settings import ConfigError
from mailfold.tracker.bootstrap import Settings
from mailfold.tracker.domain.rules import RULES

VARIABLES = (
    "MAILFOLD_HTTP_HOST",
    "MAILFOLD_TRACKER_PORT",
    "MAILFOLD_TRACKER_BUFFER",
    "MAILFOLD_TRACKER_TRUSTED_PROXIES",
    "MAILFOLD_TRACKER_EARLY_CLICK_S",
    "MAILFOLD_TRACKER_FLUSH_TIMEOUT_S",
    "MAILFOLD_TRACKER_APPLE_EGRESS_FILE",
    "MAILFOLD_TRACKING_KEYS",
    "MAILFOLD_NATS_URL",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_defaults_are_safe_for_a_local_run() -> None:
    settings = Settings.from_env()
    assert (settings.host, settings.port, settings.buffer) == ("127.0.0.1", 8002, 100_000)
    assert settings.trusted_proxies == ()
    assert settings.early_click_s == 5.0
    assert settings.flush_timeout_s == 10.0
    assert settings.all_rules() == RULES
    assert settings.keyring().current == "dev"


def test_every_variable_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    egress = tmp_path / "egress.csv"
    egress.write_text("172.224.226.0/27,GB,GB-EN,London,\n")
    monkeypatch.setenv("MAILFOLD_HTTP_HOST", "0.0.0.0")
    monkeypatch.setenv("MAILFOLD_TRACKER_PORT", "0")
    monkeypatch.setenv("MAILFOLD_TRACKER_BUFFER", "10")
    monkeypatch.setenv("MAILFOLD_TRACKER_TRUSTED_PROXIES", "10.0.0.0/8, 2001:db8::/32")
    monkeypatch.setenv("MAILFOLD_TRACKER_EARLY_CLICK_S", "0")
    monkeypatch.setenv("MAILFOLD_TRACKER_FLUSH_TIMEOUT_S", "2.5")
    monkeypatch.setenv("MAILFOLD_TRACKER_APPLE_EGRESS_FILE", str(egress))
    monkeypatch.setenv(
        "MAILFOLD_TRACKING_KEYS", "k2:second-secret-key-012,k1:first-secret-key-0123"
    )
    settings = Settings.from_env()
    assert (settings.host, settings.port, settings.buffer) == ("0.0.0.0", 0, 10)
    assert settings.trusted_proxies == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("2001:db8::/32"),
    )
    assert (settings.early_click_s, settings.flush_timeout_s) == (0.0, 2.5)
    assert settings.all_rules()[-1].pattern == "172.224.226.0/27"
    assert settings.keyring().current == "k2"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MAILFOLD_TRACKER_TRUSTED_PROXIES", "10.0.0.0/8,not-a-network"),
        ("MAILFOLD_TRACKER_BUFFER", "0"),
        ("MAILFOLD_TRACKER_PORT", "http"),
        ("MAILFOLD_TRACKER_EARLY_CLICK_S", "soon"),
    ],
)
def test_a_bad_value_is_refused_naming_its_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=name):
        Settings.from_env()


def test_bad_tracking_keys_and_a_missing_egress_file_are_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MAILFOLD_TRACKING_KEYS", "no-colon-here")
    monkeypatch.setenv("MAILFOLD_TRACKER_APPLE_EGRESS_FILE", str(tmp_path / "missing.csv"))
    settings = Settings.from_env()
    with pytest.raises(ConfigError, match="MAILFOLD_TRACKING_KEYS"):
        settings.keyring()
    with pytest.raises(ConfigError, match="MAILFOLD_TRACKER_APPLE_EGRESS_FILE"):
        settings.all_rules()
