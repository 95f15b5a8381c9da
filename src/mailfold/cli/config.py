"""Where the CLI finds NATS and PostgreSQL: environment first, then a running `mailfold dev`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Final

from mailfold.runtime.settings import DEFAULT_DATABASE_URL, DEFAULT_NATS_URL, NatsAuth

DATA_DIR_ENV: Final = "MAILFOLD_DATA_DIR"


def data_dir() -> Path:
    """The local data folder of `mailfold dev` (`.data/` in the working directory by default)."""
    return Path(os.environ.get(DATA_DIR_ENV, ".data")).resolve()


def runtime_file() -> Path:
    """The file `mailfold dev` writes with the addresses of what it started."""
    return data_dir() / "runtime.json"


def _dev_runtime() -> dict[str, str]:
    path = runtime_file()
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def nats_url() -> str:
    """MAILFOLD_NATS_URL, else the NATS a running `mailfold dev` started, else the default."""
    return os.environ.get("MAILFOLD_NATS_URL") or _dev_runtime().get("nats_url") or DEFAULT_NATS_URL


def nats_auth() -> NatsAuth:
    """MAILFOLD_NATS_USER, _PASSWORD and the TLS files; without a user, the one in the URL
    (a running `mailfold dev` writes its admin's there)."""
    return NatsAuth.from_env()


def database_url() -> str:
    """MAILFOLD_DATABASE_URL, else the PostgreSQL of a running `mailfold dev`, else the default."""
    return (
        os.environ.get("MAILFOLD_DATABASE_URL")
        or _dev_runtime().get("database_url")
        or DEFAULT_DATABASE_URL
    )


def dev_value(key: str, default: str = "") -> str:
    """Another address written by `mailfold dev` (query API, ingest API, tracker...)."""
    return _dev_runtime().get(key, default)
