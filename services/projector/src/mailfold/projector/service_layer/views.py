"""What the query API and the audit show: plain dicts built from projection rows, in the shape
that `EMAIL_SHAPE` declares."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, Protocol

import msgspec

from mailfold.projector.domain.rows import API_GROUP_PRESENT, EMAIL_SHAPE


class Row(Protocol):
    """A row by column name (an asyncpg Record, a dict)."""

    def __getitem__(self, key: str, /) -> Any: ...


def _fields(detail: bool) -> tuple[tuple[str, str | None, str], ...]:
    """(column, group or None, key) of each column the API shows, in the item's key order."""
    return tuple(
        (c.name, *_split(c.api))
        for c in EMAIL_SHAPE
        if c.api is not None and (detail or not c.detail_only)
    )


def _split(api: str) -> tuple[str | None, str]:
    group, _, key = api.rpartition(".")
    return group or None, key


_LIST_FIELDS: Final = _fields(detail=False)
_DETAIL_FIELDS: Final = _fields(detail=True)


def _item(row: Row, fields: Sequence[tuple[str, str | None, str]]) -> dict[str, Any]:
    item: dict[str, Any] = {}
    for column, group, key in fields:
        value = row[column]
        if isinstance(value, list | tuple):
            value = list(value)
        if group is None:
            item[key] = value
            continue
        if group not in item:
            present = API_GROUP_PRESENT.get(group)
            item[group] = None if present is not None and row[present] is None else {}
        if item[group] is not None:
            item[group][key] = value
    return item


def list_item(row: Row) -> dict[str, Any]:
    """One entry of a record's Emails related list."""
    return _item(row, _LIST_FIELDS)


def email_detail(row: Row, links: Sequence[Row]) -> dict[str, Any]:
    """The email's state: the list entry and everything else the fold knows."""
    detail = _item(row, _DETAIL_FIELDS)
    detail["records"] = [{"module": r["module"], "record_id": r["record_id"]} for r in links]
    return detail


def history_entry(row: Row) -> dict[str, Any]:
    """One event of an email's history, with the fold's decision on it."""
    return {
        "seq": row["stream_seq"],
        "event_id": row["event_id"],
        "type": row["type"],
        "occurred_at": row["occurred_at"],
        "decision": row["decision"],
        "reason": row["reason"],
        "detail": row["detail"],
        # Stored as received: embedded as it is rather than decoded and encoded again.
        "payload": msgspec.Raw(row["payload"].encode()),
    }
