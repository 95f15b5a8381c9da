"""RFC 3464 delivery status notifications: the message/delivery-status fields, per recipient."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from mailfold.bounces.message import ADDR_RE, DSN_FIELD, STATUS_FIELD, Entry

__all__ = ["dsn_entries"]

_PER_MESSAGE = frozenset({"reporting-mta", "received-from-mta", "arrival-date", "x-postfix-sender"})


def _field_lines(text: str) -> Iterator[tuple[str, str] | None]:
    """(name, value) per DSN field with folded lines joined; None at a blank line."""
    name = ""
    value = ""
    for line in text.split("\n"):
        if not line.strip():
            if name:
                yield name, value
                name = ""
            yield None
            continue
        if name and line[:1] in (" ", "\t"):
            value = f"{value} {line.strip()}"
            continue
        if name:
            yield name, value
            name = ""
        m = DSN_FIELD.match(line.strip())
        if m:
            name, value = m.group(1).lower(), m.group(2).strip()
    if name:
        yield name, value


def _address_value(value: str) -> str:
    """The address of "rfc822; user@example.org" (or the raw value for non-rfc822 types)."""
    _, _, rest = value.rpartition(";")
    rest = rest.strip() or value.strip()
    m = ADDR_RE.search(rest)
    if m:
        return m.group(0).lower()
    return rest.strip("<> ").lower()


def dsn_entries(blocks: Iterable[str]) -> list[Entry]:
    entries: list[Entry] = []
    per_message: dict[str, str] = {}
    for block in blocks:
        current: Entry | None = None
        closed = False
        for item in _field_lines(block):
            if item is None:
                closed = current is not None
                continue
            name, value = item
            if name in _PER_MESSAGE:
                per_message.setdefault(name, value)
                continue
            if name == "final-recipient":
                if current is None or closed or current.recipient:
                    current = Entry()
                    entries.append(current)
                    closed = False
                current.recipient = _address_value(value)
                current.source = "Final-Recipient field"
                if value.partition(";")[2].strip()[:1] in ("|", "/"):
                    # A pipe or a file: local delivery by a program, not SMTP.
                    current.diagnostic_type = "x-unix"
                continue
            if name == "original-recipient":
                if current is None or closed or "original-recipient" in current.fields:
                    current = Entry()
                    entries.append(current)
                    closed = False
                current.fields[name] = value
                current.alias = _address_value(value)
                continue
            if current is None or closed:
                if (
                    name in ("action", "status", "diagnostic-code", "remote-mta")
                    and current is None
                ):
                    current = Entry()
                    entries.append(current)
                    closed = False
                elif current is None:
                    continue
                else:
                    closed = False
            current.fields.setdefault(name, value)
            if name == "action":
                current.action = value.strip().lower().split(" ", 1)[0].rstrip(";.")
            elif name == "status":
                m = STATUS_FIELD.match(value)
                current.status = m.group(1) if m else ""
            elif name == "diagnostic-code":
                dtype, sep, text = value.partition(";")
                if sep and len(dtype) < 20 and " " not in dtype.strip():
                    current.diagnostic_type = dtype.strip().lower()
                    current.diagnostic = text.strip()
                else:
                    current.diagnostic = value.strip()
            elif name == "x-actual-recipient":
                if value.partition(";")[2].strip()[:1] in ("|", "/"):
                    current.diagnostic_type = current.diagnostic_type or "x-unix"
                elif not current.alias:
                    current.alias = _address_value(value)
    mta = per_message.get("reporting-mta", "")
    reporting = mta.partition(";")[2].strip() if ";" in mta else mta.strip()
    result = []
    for e in entries:
        if not e.recipient and e.alias:
            e.recipient = e.alias
            e.source = "Original-Recipient field"
        e.reporting_mta = reporting
        if e.recipient or e.diagnostic or e.status:
            result.append(e)
    return result
