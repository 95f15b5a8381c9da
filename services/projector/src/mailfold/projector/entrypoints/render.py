"""An email's audit for a person: its history as a table, then its state."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

_TIME_FORMAT: Final = "%Y-%m-%d %H:%M:%S"


def _time(value: datetime | None) -> str:
    return "-" if value is None else value.strftime(_TIME_FORMAT)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return [line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def _decision(entry: dict[str, Any]) -> tuple[str, str]:
    decision = entry["decision"]
    if entry["reason"]:
        decision = f"{decision} ({entry['reason']})"
    return decision, entry["detail"] or ""


def render_audit(email: dict[str, Any], history: list[dict[str, Any]]) -> str:
    """The audit text: one line per event (seq, time, type, decision, detail), then the state."""
    rows = []
    for entry in history:
        decision, detail = _decision(entry)
        rows.append(
            [str(entry["seq"]), _time(entry["occurred_at"]), entry["type"], decision, detail]
        )
    lines = [f"email {email['email_id']} (org {email['org_id']})", ""]
    lines += _table(["seq", "time (UTC)", "type", "decision", "detail"], rows)
    opens, clicks = email["opens"], email["clicks"]
    summary = [
        ("status", email["status"] or "(waiting for its origin)"),
        ("subject", email["subject"] or "-"),
        ("source", email["source"] or "-"),
        ("direction", email["direction"] or "-"),
        ("from", email["from"] or "-"),
        ("to", ", ".join(email["to"]) or "-"),
        ("sent", _time(email["sent_at"])),
        ("delivered", _time(email["delivered_at"])),
        ("bounced", _time(email["bounced_at"])),
        (
            "opened",
            f"{_time(email['opened_at'])}  (human {opens['human']}, machine {opens['machine']})",
        ),
        (
            "clicked",
            f"{_time(email['clicked_at'])}  (human {clicks['human']}, machine {clicks['machine']})",
        ),
        ("received", _time(email["received_at"])),
        ("deleted", _time(email["deleted_at"])),
        ("records", ", ".join(f"{r['module']}:{r['record_id']}" for r in email["records"]) or "-"),
        (
            "events",
            f"{email['events']} ({email['waiting']} waiting, {email['violations']} violations)",
        ),
    ]
    bounce = email["bounce"]
    if bounce is not None:
        summary.append(
            (
                "bounce",
                f"{bounce['kind']} {bounce['status'] or ''} {bounce['reason'] or ''}".strip(),
            )
        )
    width = max(len(k) for k, _ in summary)
    lines += ["", "state:"]
    lines += [f"  {k.ljust(width)}  {v}" for k, v in summary]
    return "\n".join(lines) + "\n"
