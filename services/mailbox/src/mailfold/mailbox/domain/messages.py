"""What the events need from a mailbox message's headers, read without ever raising."""

from __future__ import annotations

import email.header
import email.utils
import functools
import re
from dataclasses import dataclass
from typing import Final

MAX_SUBJECT: Final = 998
MAX_MESSAGE_ID: Final = 998
MAX_ADDRESSES: Final = 500
_WS: Final = re.compile(r"\s+")
_ADDRESS: Final = re.compile(r"^[^@\s<>()\[\],;:\"]{1,64}@[A-Za-z0-9.-]{1,253}$")
_BOUNCE_SENDERS: Final = ("mailer-daemon", "postmaster", "mail-daemon")
_BOUNCE_SUBJECT: Final = re.compile(
    r"undeliver|delivery (?:status|failure|has failed)|returned mail|failure notice|"
    r"mail delivery failed|non.?delivery",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class Summary:
    """The header fields an event carries; empty where the message has none."""

    from_addr: str = ""
    to: tuple[str, ...] = ()
    cc: tuple[str, ...] = ()
    bcc: tuple[str, ...] = ()
    subject: str = ""
    message_id: str = ""
    date_ms: int | None = None
    content_type: str = ""

    @property
    def recipients(self) -> tuple[str, ...]:
        """To, Cc and Bcc in order."""
        return (*self.to, *self.cc, *self.bcc)

    @property
    def looks_like_bounce(self) -> bool:
        """A delivery report, or a non-standard bounce from a mailer daemon: worth parsing."""
        if self.content_type.startswith("multipart/report"):
            return True
        local = self.from_addr.partition("@")[0].lower()
        return local in _BOUNCE_SENDERS or bool(_BOUNCE_SUBJECT.search(self.subject))


_WANTED: Final = frozenset(
    {"from", "to", "cc", "bcc", "subject", "message-id", "date", "content-type"}
)
_FOLD: Final = re.compile(r"\r?\n[ \t]+")


def _fields(section: bytes) -> dict[str, str]:
    """The first value of each wanted header, unfolded; 8-bit bytes read as UTF-8.

    A mailbox sync reads every message of a folder, so this reads only the fields the events
    carry rather than building the stdlib's full message object.
    """
    text = _FOLD.sub(" ", section.decode("utf-8", "replace"))
    found: dict[str, str] = {}
    for line in text.splitlines():
        name, colon, value = line.partition(":")
        key = name.strip().lower()
        if colon and key in _WANTED and key not in found:
            found[key] = " ".join(value.split())
    return found


def _text(value: str) -> str:
    if "=?" not in value:
        return value
    try:
        text = str(email.header.make_header(email.header.decode_header(value)))
    except Exception:  # undecodable encoded words: keep the raw text
        return value
    return _WS.sub(" ", text).strip()


@functools.lru_cache(maxsize=4096)
def addresses_in(value: str) -> tuple[str, ...]:
    """The valid addresses of an address-list header, each once (case-insensitively), in order."""
    if not value:
        return ()
    try:
        pairs = email.utils.getaddresses([value])
    except Exception:  # a header the stdlib cannot split holds no address we can trust
        return ()
    seen: dict[str, str] = {}
    for _name, addr in pairs:
        addr = addr.strip()
        if _ADDRESS.match(addr) and addr.lower() not in seen:
            seen[addr.lower()] = addr
            if len(seen) >= MAX_ADDRESSES:
                break
    return tuple(seen.values())


def _date_ms(value: str) -> int | None:
    if not value:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
        return None if when.tzinfo is None else int(when.timestamp() * 1000)
    except (TypeError, ValueError, IndexError, OverflowError, OSError):
        return None


def header_section(raw: bytes) -> bytes:
    """The bytes up to the blank line that ends the header section."""
    ends = [i for i in (raw.find(b"\r\n\r\n"), raw.find(b"\n\n")) if i >= 0]
    return raw[: min(ends) + 2] if ends else raw


def summarise(raw: bytes) -> Summary:
    """From, To, Cc, Bcc, Subject, Message-ID, Date and Content-Type; never raises."""
    try:
        fields = _fields(header_section(raw))
        senders = addresses_in(fields.get("from", ""))
        return Summary(
            from_addr=senders[0] if senders else "",
            to=addresses_in(fields.get("to", "")),
            cc=addresses_in(fields.get("cc", "")),
            bcc=addresses_in(fields.get("bcc", "")),
            subject=_text(fields.get("subject", ""))[:MAX_SUBJECT],
            message_id=fields.get("message-id", "")[:MAX_MESSAGE_ID],
            date_ms=_date_ms(fields.get("date", "")),
            content_type=fields.get("content-type", "").lower(),
        )
    except Exception:  # a header that defeats every decoder: nothing can be attributed
        return Summary()
