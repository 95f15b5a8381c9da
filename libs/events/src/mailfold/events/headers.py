"""What the events need from a raw message's headers (SMTP arrivals, mailbox sync), read without
ever raising."""

from __future__ import annotations

import email.header
import email.parser
import email.policy
import email.utils
import functools
import re
from dataclasses import dataclass
from email.message import Message
from typing import Final

from mailfold.events.addresses import is_address

__all__ = ["MAX_ADDRESSES", "MessageSummary", "addresses_in", "header_section", "summarise"]

MAX_SUBJECT: Final = 998  # RFC 5322's line limit; a longer subject is cut, not refused
MAX_MESSAGE_ID: Final = 998
MAX_ADDRESSES: Final = 500  # per header; more is a mailing-list blast, the rest is ignored
_CACHED_HEADER: Final = 256  # address headers up to this length are remembered (they repeat)

_WS = re.compile(r"\s+")
_HEADER_PARSER: Final = email.parser.BytesHeaderParser(policy=email.policy.compat32)


@dataclass(frozen=True, slots=True)
class MessageSummary:
    """The header fields an event carries; empty where the message has none."""

    from_addr: str = ""
    to: tuple[str, ...] = ()
    cc: tuple[str, ...] = ()
    bcc: tuple[str, ...] = ()
    subject: str = ""
    message_id: str = ""
    date_ms: int | None = None  # the Date: header, in Unix milliseconds
    content_type: str = ""  # lower-cased, parameters included

    @property
    def recipients(self) -> tuple[str, ...]:
        """To, Cc and Bcc in order."""
        return (*self.to, *self.cc, *self.bcc)


def _text(value: object) -> str:
    """A header value as clean text: RFC 2047 words decoded, raw 8-bit read as UTF-8."""
    try:
        if isinstance(value, email.header.Header):
            text = str(value)
        else:
            text = str(email.header.make_header(email.header.decode_header(str(value))))
    except Exception:  # undecodable encoded words: keep the raw text
        text = str(value)
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return _WS.sub(" ", text).strip()


def _raw(msg: Message, name: str) -> str:
    value = msg.get(name)
    if value is None:
        return ""
    text = str(value).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return _WS.sub(" ", text).strip()


def addresses_in(value: str) -> tuple[str, ...]:
    """The valid addresses of an address-list header, each once (case-insensitively), in order."""
    if not value:
        return ()
    if len(value) <= _CACHED_HEADER:
        return _cached_addresses(value)
    return _addresses(value)


@functools.lru_cache(maxsize=4096)
def _cached_addresses(value: str) -> tuple[str, ...]:
    # The same From: and To: values come back message after message (a customer, the mailbox);
    # splitting them is most of the cost of reading the headers.
    return _addresses(value)


def _addresses(value: str) -> tuple[str, ...]:
    try:
        pairs = email.utils.getaddresses([value])
    except Exception:  # a header the stdlib cannot split holds no address we can trust
        return ()
    seen: dict[str, str] = {}
    for _name, addr in pairs:
        addr = addr.strip()
        if is_address(addr) and addr.lower() not in seen:
            seen[addr.lower()] = addr
            if len(seen) >= MAX_ADDRESSES:
                break
    return tuple(seen.values())


def _date_ms(value: str) -> int | None:
    if not value:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        return None
    try:
        return int(when.timestamp() * 1000)
    except (OverflowError, OSError, ValueError):
        return None


def header_section(raw: bytes) -> bytes:
    """The bytes up to the blank line that ends the header section (the body is never read)."""
    ends = [i for i in (raw.find(b"\r\n\r\n"), raw.find(b"\n\n")) if i >= 0]
    return raw[: min(ends) + 2] if ends else raw


def summarise(raw: bytes) -> MessageSummary:
    """From, To, Cc, Bcc, Subject, Message-ID, Date and Content-Type of a raw message; never
    raises."""
    try:
        msg = _HEADER_PARSER.parsebytes(header_section(raw))
    except Exception:  # the stdlib parser is lenient; this only guards against its bugs
        return MessageSummary()
    try:
        senders = addresses_in(_raw(msg, "from"))
        return MessageSummary(
            from_addr=senders[0] if senders else "",
            to=addresses_in(_raw(msg, "to")),
            cc=addresses_in(_raw(msg, "cc")),
            bcc=addresses_in(_raw(msg, "bcc")),
            subject=_text(msg.get("subject", ""))[:MAX_SUBJECT],
            message_id=_raw(msg, "message-id")[:MAX_MESSAGE_ID],
            date_ms=_date_ms(_raw(msg, "date")),
            content_type=_raw(msg, "content-type").lower(),
        )
    except Exception:  # a header that defeats every decoder: keep what the envelope says
        return MessageSummary()
