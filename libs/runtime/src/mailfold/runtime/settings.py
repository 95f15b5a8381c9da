"""Configuration from environment variables, with safe defaults and clear errors."""

from __future__ import annotations

import os
import socket
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Final, TypeVar, get_type_hints

S = TypeVar("S")

DEFAULT_NATS_URL: Final = "nats://127.0.0.1:4222"
DEFAULT_DATABASE_URL: Final = "postgresql://postgres@127.0.0.1:5432/mailfold"


class ConfigError(ValueError):
    """An environment variable holds a value the service cannot use."""


def env_str(name: str, default: str) -> str:
    """A string setting; empty means unset."""
    value = os.environ.get(name, "").strip()
    return value or default


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    """An integer setting, refused with the variable's name when it is not one."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from exc
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def env_float(name: str, default: float, *, minimum: float | None = None) -> float:
    """A float setting, refused with the variable's name when it is not one."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from exc
    if minimum is not None and not value >= minimum:
        raise ConfigError(f"{name} must be at least {minimum:g}, got {raw}")
    return value


def env_bool(name: str, default: bool) -> bool:
    """A boolean setting: 1/true/yes/on or 0/false/no/off."""
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


@dataclass(frozen=True, slots=True)
class NatsAuth:
    """Who a NATS client is and how it talks TLS; `bus.connect` and `broker.new_broker` apply it.

    Without a user, credentials in the URL (nats://user:password@host) are used. The password
    never shows in a repr.
    """

    user: str | None = None
    password: str | None = field(default=None, repr=False)
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None

    @classmethod
    def from_env(cls) -> NatsAuth:
        """Read MAILFOLD_NATS_USER, MAILFOLD_NATS_PASSWORD, MAILFOLD_NATS_TLS_CA,
        MAILFOLD_NATS_TLS_CERT, MAILFOLD_NATS_TLS_KEY."""
        auth = cls(
            user=env_str("MAILFOLD_NATS_USER", "") or None,
            password=os.environ.get("MAILFOLD_NATS_PASSWORD") or None,
            tls_ca_file=env_str("MAILFOLD_NATS_TLS_CA", "") or None,
            tls_cert_file=env_str("MAILFOLD_NATS_TLS_CERT", "") or None,
            tls_key_file=env_str("MAILFOLD_NATS_TLS_KEY", "") or None,
        )
        if auth.password is not None and auth.user is None:
            raise ConfigError("MAILFOLD_NATS_PASSWORD is set but MAILFOLD_NATS_USER is not")
        if (auth.tls_cert_file is None) != (auth.tls_key_file is None):
            raise ConfigError("MAILFOLD_NATS_TLS_CERT and MAILFOLD_NATS_TLS_KEY go together")
        for name, path in (
            ("MAILFOLD_NATS_TLS_CA", auth.tls_ca_file),
            ("MAILFOLD_NATS_TLS_CERT", auth.tls_cert_file),
            ("MAILFOLD_NATS_TLS_KEY", auth.tls_key_file),
        ):
            if path is not None and not os.path.isfile(path):
                raise ConfigError(f"{name} names no readable file: {path!r}")
        return auth

    @property
    def tls(self) -> bool:
        return self.tls_ca_file is not None or self.tls_cert_file is not None


@dataclass(frozen=True, slots=True)
class CommonSettings:
    """What every service needs: where NATS is and who it is there, how to log, the tracking
    keys."""

    nats_url: str
    log_level: str
    log_json: bool | None
    tracking_keys: str
    public_tracker_url: str
    nats_auth: NatsAuth = field(default_factory=NatsAuth)

    @classmethod
    def from_env(cls) -> CommonSettings:
        """Read MAILFOLD_NATS_URL (comma-separated for a cluster), the MAILFOLD_NATS_* credentials
        and TLS files, MAILFOLD_LOG_LEVEL, MAILFOLD_LOG_JSON, MAILFOLD_TRACKING_KEYS."""
        log_json_raw = os.environ.get("MAILFOLD_LOG_JSON", "").strip()
        return cls(
            nats_auth=NatsAuth.from_env(),
            nats_url=env_str("MAILFOLD_NATS_URL", DEFAULT_NATS_URL),
            log_level=env_str("MAILFOLD_LOG_LEVEL", "info").lower(),
            log_json=None if not log_json_raw else env_bool("MAILFOLD_LOG_JSON", True),
            # A development key: `mailfold dev` and tests use it; production sets its own.
            tracking_keys=env_str(
                "MAILFOLD_TRACKING_KEYS", "dev:mailfold-development-key-change-me"
            ),
            public_tracker_url=env_str("MAILFOLD_TRACKER_PUBLIC_URL", "http://127.0.0.1:8002"),
        )


def setting(env: str, default: Any, *, minimum: float | None = None, positive: bool = False) -> Any:
    """A field of a settings dataclass, read from `env`: its default is written here only.

    Durations are seconds, in fields and variables ending in `_s` / `_S`.
    """
    return field(default=default, metadata={"env": env, "minimum": minimum, "positive": positive})


def from_env(cls: type[S], **given: Any) -> S:
    """An instance of the settings dataclass `cls`: each `setting` field from its variable (or
    its default), the other fields from `given`. A bad value raises ConfigError naming it."""
    hints = get_type_hints(cls)
    values: dict[str, Any] = dict(given)
    for f in fields(cls):  # type: ignore[arg-type]  # S is a settings dataclass
        env = f.metadata.get("env")
        if env is None or f.name in given:
            continue
        kind, default = hints[f.name], f.default
        assert default is not MISSING, f"{f.name} needs a default"
        if kind is int:
            value: Any = env_int(env, default, minimum=f.metadata["minimum"])
        elif kind is float:
            value = env_float(env, default, minimum=f.metadata["minimum"])
            if f.metadata["positive"] and value <= 0:
                raise ConfigError(f"{env} must be a positive number of seconds, got {value}")
        elif kind is bool:
            value = env_bool(env, default)
        else:
            value = env_str(env, default)
        values[f.name] = value
    return cls(**values)


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """Timeouts and limits of an HTTP listener (MAILFOLD_HTTP_*; see docs/operations.md)."""

    header_timeout_s: float = setting("MAILFOLD_HTTP_HEADER_TIMEOUT_S", 10.0, minimum=0.1)
    body_timeout_s: float = setting("MAILFOLD_HTTP_BODY_TIMEOUT_S", 30.0, minimum=0.1)
    keepalive_timeout_s: int = setting("MAILFOLD_HTTP_KEEPALIVE_TIMEOUT_S", 5, minimum=1)
    backlog: int = setting("MAILFOLD_HTTP_BACKLOG", 2048, minimum=1)
    max_connections: int = setting("MAILFOLD_HTTP_MAX_CONNECTIONS", 1000, minimum=1)
    # Listeners bind with SO_REUSEPORT, so that several processes of one service (`mailfold
    # serve --workers N`, or copies started side by side) share its ports.
    reuse_port: bool = setting("MAILFOLD_REUSE_PORT", False)

    @classmethod
    def from_env(cls) -> HttpLimits:
        """Read the MAILFOLD_HTTP_* variables and MAILFOLD_REUSE_PORT."""
        return from_env(cls)


def shared_listener(host: str, port: int, *, backlog: int) -> socket.socket:
    """A listening socket on host:port with SO_REUSEPORT set (the address family as uvicorn picks
    it: IPv6 when the host has a colon). A shared port must be a fixed one: 0 is refused."""
    if port == 0:
        raise ConfigError("MAILFOLD_REUSE_PORT needs fixed ports: a port of 0 cannot be shared")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=backlog, reuse_port=True)
