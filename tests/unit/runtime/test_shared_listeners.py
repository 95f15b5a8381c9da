"""SO_REUSEPORT listeners and the `--workers` / MAILFOLD_WORKERS setting, refused when wrong."""

from __future__ import annotations

import socket

import pytest

from mailfold.cli.main import main
from mailfold.runtime.settings import ConfigError, HttpLimits, shared_listener


def test_two_shared_listeners_bind_the_same_port() -> None:
    with shared_listener("127.0.0.1", _free(), backlog=8) as first:
        port = first.getsockname()[1]
        with shared_listener("127.0.0.1", port, backlog=8) as second:
            assert second.getsockname()[1] == port


def test_a_plain_listener_still_holds_its_port_against_a_shared_one() -> None:
    with socket.create_server(("127.0.0.1", 0)) as plain:
        port = plain.getsockname()[1]
        with pytest.raises(OSError, match="in use"):
            shared_listener("127.0.0.1", port, backlog=8)


def test_port_zero_cannot_be_shared() -> None:
    with pytest.raises(ConfigError, match="MAILFOLD_REUSE_PORT"):
        shared_listener("127.0.0.1", 0, backlog=8)


def test_reuse_port_is_off_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MAILFOLD_REUSE_PORT", raising=False)
    assert HttpLimits.from_env().reuse_port is False
    monkeypatch.setenv("MAILFOLD_REUSE_PORT", "true")
    assert HttpLimits.from_env().reuse_port is True
    monkeypatch.setenv("MAILFOLD_REUSE_PORT", "sometimes")
    with pytest.raises(ConfigError, match="MAILFOLD_REUSE_PORT"):
        HttpLimits.from_env()


@pytest.mark.parametrize("bad", ["0", "-2", "two"])
def test_workers_must_be_a_positive_number(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["serve", "tracker", "--workers", bad])
    assert exited.value.code == 2
    assert "--workers" in capsys.readouterr().err


def test_a_bad_workers_variable_is_named(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MAILFOLD_WORKERS", "many")
    assert main(["serve", "tracker"]) == 2
    assert "MAILFOLD_WORKERS must be an integer" in capsys.readouterr().err


def _free() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
