"""Small SQL helpers shared by the PostgreSQL adapters."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Final, TypeAlias

import asyncpg

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

# A connection of its own or one borrowed from a pool.
Connection: TypeAlias = "asyncpg.Connection | PoolConnectionProxy[Any]"

_IDENT: Final = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def quote_ident(name: str) -> str:
    """A schema or table name, checked and quoted (names come from code, never from users)."""
    if not _IDENT.match(name):
        raise ValueError(f"not a valid identifier: {name!r}")
    return f'"{name}"'


def table(schema: str, name: str) -> str:
    """`"schema".name`."""
    return f"{quote_ident(schema)}.{quote_ident(name)}"
