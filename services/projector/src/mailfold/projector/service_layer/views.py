"""What the query API and the audit show: plain dicts built from projection rows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import msgspec


class Row(Protocol):
    """A row by column name (an asyncpg Record, a dict)."""

    def __getitem__(self, key: str, /) -> Any: ...


def _bounce(row: Row) -> dict[str, Any] | None:
    if row["bounced_at"] is None:
        return None
    return {
        "recipient": row["bounce_recipient"],
        "kind": row["bounce_kind"],
        "status": row["bounce_status"],
        "reply_code": row["bounce_reply_code"],
        "reason": row["bounce_reason"],
        "diagnostic": row["bounce_diagnostic"],
    }


def list_item(row: Row) -> dict[str, Any]:
    """One entry of a record's Emails related list."""
    return {
        "email_id": row["email_id"],
        "subject": row["subject"],
        "direction": row["direction"],
        "source": row["source_display"],
        "status": row["status"],
        "from": row["from_addr"],
        "to": list(row["to_addrs"]),
        "email_at": row["email_at"],
        "sent_at": row["sent_at"],
        "delivered_at": row["delivered_at"],
        "bounced_at": row["bounced_at"],
        "opened_at": row["opened_at"],
        "opens": {"human": row["opens_human"], "machine": row["opens_machine"]},
        "clicked_at": row["clicked_at"],
        "clicks": {"human": row["clicks_human"], "machine": row["clicks_machine"]},
        "received_at": row["received_at"],
        "bounce": _bounce(row),
    }


def email_detail(row: Row, links: Sequence[Row]) -> dict[str, Any]:
    """The email's state: the list entry and everything else the fold knows."""
    detail = list_item(row)
    if detail["bounce"] is not None:
        detail["bounce"]["reporting_mta"] = row["bounce_reporting_mta"]
    detail.update(
        {
            "org_id": row["org_id"],
            "source_code": row["source"],
            "transport": row["transport"],
            "crm_originated": row["crm_originated"],
            "cc": list(row["cc_addrs"]),
            "composed_at": row["composed_at"],
            "rejected_at": row["rejected_at"],
            "deleted_at": row["deleted_at"],
            "complained_at": row["complained_at"],
            "first_machine_open_at": row["first_machine_open_at"],
            "deferrals": row["deferrals"],
            "complaints": row["complaints"],
            "rejection": None
            if row["rejected_at"] is None
            else {"reason": row["rejection_reason"], "detail": row["rejection_detail"]},
            "waiting": row["waiting_count"],
            "violations": row["violation_count"],
            "events": row["event_count"],
            "campaign_id": row["campaign_id"],
            "records": [{"module": r["module"], "record_id": r["record_id"]} for r in links],
        }
    )
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
