"""A bounce message decoded: its notification text, report parts and returned original.

Readers work on a `Bounce` and produce `Entry` values (one recipient in progress each); the
MIME walking, header reading and the search for the returned message are here, shared.
"""

from __future__ import annotations

import base64
import email
import email.message
import email.parser
import quopri
import re
from dataclasses import dataclass, field

__all__ = [
    "ADDR",
    "ADDR_ONLY",
    "ADDR_RE",
    "DELAY_TEXT",
    "DSN_FIELD",
    "DSN_FIELD_INLINE",
    "MAX_BYTES",
    "MAX_DIAGNOSTIC",
    "MAX_TEXT",
    "STATUS_FIELD",
    "WS",
    "Bounce",
    "Entry",
    "decode",
    "embedded_message",
    "header",
    "original_ids",
    "original_recipient",
]

# Big inputs are cut: no bounce needs more than this to say what failed, and it bounds the work.
MAX_BYTES = 1 << 20
MAX_TEXT = 64 * 1024
MAX_HEADER = 4096

MAX_DIAGNOSTIC = 4000
_MAX_DEPTH = 12

WS = re.compile(r"\s+")
# An address as bounces print it; the local part is bounded (RFC 5321: 64 octets) so that a
# search over a long token stays linear.
ADDR = (
    r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~\-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9\-]{0,62}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9\-]{1,63}){1,8}"
)
ADDR_RE = re.compile(ADDR)
ADDR_ONLY = re.compile(rf"^\s*<?({ADDR})>?\s*$")
STATUS_FIELD = re.compile(r"^\s*([245]\.\d{1,3}\.\d{1,3})")
_TAGS = re.compile(r"<[^>]*>")

DSN_FIELD = re.compile(
    r"^(original-recipient|final-recipient|x-actual-recipient|action|status|remote-mta|"
    r"diagnostic-code|last-attempt-date|will-retry-until|reporting-mta|received-from-mta|"
    r"arrival-date|x-postfix-sender|original-envelope-id|x-original-message-id)\s*:\s*(.*)$",
    re.IGNORECASE,
)
DSN_FIELD_INLINE = re.compile(r"^(?:final-recipient|original-recipient)\s*:", re.I | re.M)

# ---------------------------------------------------------------------------------------------
# Where the returned original message starts in a plain-text bounce.
# ---------------------------------------------------------------------------------------------

_ORIGINAL_START = re.compile(
    r"^(?:[ \t]*-{2,}[ \t]*This is a copy of the message"
    r"|[ \t]*-{2,}[ \t]*Below (?:this|the next) line is a copy of the (?:message|mail header)"
    r"|[ \t]*-{3,}[ \t]*(?:Original message follows|Message header follows|Original Message"
    r"|Undelivered message follows|Original message header follows|Returned message"
    r"|Unsent message follows)"
    r"|[ \t]*-{2,}[ \t]*Mensaje original adjunto"
    r"|Content-Type:[ \t]*(?:message/rfc822|text/rfc822-headers?)"
    r"|[ \t]*Original message follows\."
    r"|[ \t]*Included is a copy of the message header:"
    r"|[ \t]*Original message headers:"
    r"|\|-+ ?Message text follows:? ?-+\|"
    r"|[ \t]*-{3,}[ \t]*The header of the original message is following\.?[ \t]*-{3,})",
    re.IGNORECASE | re.MULTILINE,
)

# A notification which says delivery is still being tried: a delay, not a failure.
DELAY_TEXT = re.compile(
    r"has not yet been delivered|could not send message for past|Delayed Mail|still being retried"
    r"|will continue to try|Delivery attempts will continue|This is only a warning|delivery delayed"
    r"|Warning: message .* delayed|Delivery Status Notification \(Delay\)"
    r"|Delivery to the following recipients? has been delayed",
    re.IGNORECASE,
)


@dataclass(slots=True)
class Entry:
    """A recipient in progress, before classification."""

    recipient: str = ""
    alias: str = ""
    action: str = ""
    status: str = ""
    reply_code: str = ""
    diagnostic: str = ""
    diagnostic_type: str = ""
    command: str = ""
    reporting_mta: str = ""
    source: str = ""  # where the recipient was found, for --explain
    feedback_type: str = ""  # feedback reports: "abuse", "opt-out", ...
    reason: str = ""  # a reason the format itself states (an auto-reply, a refused group post)
    reason_is_hint: bool = False  # ... or only suggests, for when the diagnostic says nothing
    message_id: str = ""  # the original's Message-ID when the format states it apart
    return_path: str = ""  # the original's envelope sender when the format states it apart
    fields: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Bounce:
    """The parts of a bounce message that matter, decoded."""

    headers: email.message.Message
    text: str = ""  # the human-readable notification
    dsn: list[str] = field(default_factory=list)  # message/delivery-status bodies
    feedback: list[str] = field(default_factory=list)  # message/feedback-report bodies
    original: email.message.Message | None = None  # headers of the returned message
    names: list[str] = field(default_factory=list)  # file names of the parts, in order
    _heads: dict[str, str] = field(default_factory=dict)

    def head(self, name: str) -> str:
        """A header of the bounce itself, whitespace-collapsed ("" if absent); read once."""
        value = self._heads.get(name)
        if value is None:
            value = self._heads[name] = header(self.headers, name)
        return value


_QUOTE = re.compile(r"^> ?", re.MULTILINE)
_EMBEDDED_START = re.compile(
    r"^(?:From [^\n]*\n)?(?=(?:(?:Return-Path|Received|Date|From|To|Subject|Message-I[Dd]|"
    r"MIME-Version|Delivered-To|Content-Type):[^\n]*\n(?:[ \t][^\n]*\n)*){3})",
    re.MULTILINE,
)


def embedded_message(text: str) -> str:
    """The text of a message forwarded inside this one (unquoting "> " lines), or ""."""
    if text.count("\n>") > 5:
        text = _QUOTE.sub("", text)
    m = _EMBEDDED_START.search(text)
    if m is None:
        return ""
    body = text[m.start() :]
    if body.startswith("From "):
        body = body.split("\n", 1)[1] if "\n" in body else ""
    return body


def original_recipient(bounce: Bounce) -> list[Entry]:
    """A bounce that names no recipient: the original message's To: is the one it bounced for."""
    if bounce.original is None:
        return []
    a = ADDR_RE.search(header(bounce.original, "to"))
    if a is None:
        return []
    return [Entry(recipient=a.group(0).lower(), source="returned message's To:")]


# ---------------------------------------------------------------------------------------------
# MIME walking
# ---------------------------------------------------------------------------------------------


def header(msg: email.message.Message, name: str) -> str:
    try:
        value = msg.get(name)
    except Exception:
        return ""
    if value is None:
        return ""
    return WS.sub(" ", str(value)[:MAX_HEADER]).strip()


def decode(part: email.message.Message) -> str:
    try:
        payload = part.get_payload(decode=True)
    except Exception:
        payload = None
    if isinstance(payload, bytes):
        text = text_of(payload, part.get_content_charset())
    else:
        raw = part.get_payload()
        text = raw if isinstance(raw, str) else ""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text[:MAX_TEXT]


def text_of(data: bytes, charset: str | None) -> str:
    try:
        return data.decode(charset or "utf-8", errors="replace")
    except (LookupError, TypeError):
        return data.decode("utf-8", errors="replace")


def _blocks_text(part: email.message.Message) -> str:
    """The body of a message/delivery-status or feedback-report part, as field lines."""
    payload = part.get_payload()
    if isinstance(payload, list):
        # The stdlib parses these parts as a list of header blocks.
        chunks = []
        for block in payload:
            if isinstance(block, email.message.Message):
                lines = [f"{k}: {v}" for k, v in block.items()]
                body = block.get_payload()
                if isinstance(body, str) and body.strip():
                    lines.append(body)
                chunks.append("\n".join(lines))
        text = "\n\n".join(chunks).replace("\r\n", "\n")
        return _undo_transfer_encoding(text, part)[:MAX_TEXT]
    return decode(part)


def _undo_transfer_encoding(text: str, part: email.message.Message) -> str:
    """The stdlib reads these parts as header blocks before decoding them: decode afterwards."""
    cte = str(part.get("content-transfer-encoding", "")).strip().lower()
    try:
        if cte == "base64":
            data = base64.b64decode(WS.sub("", text), validate=False)
        elif cte == "quoted-printable":
            data = quopri.decodestring(text.encode("ascii", errors="replace"))
        else:
            return text
    except ValueError:
        return text
    return text_of(data, part.get_content_charset())


def collect(
    part: email.message.Message, bounce: Bounce, *, top: bool = False, depth: int = 0
) -> None:
    """Sort the MIME parts of a bounce into notification text, reports and the original."""
    ctype = part.get_content_type()
    if part.is_multipart() and ctype != "message/rfc822" and not ctype.startswith("message/"):
        if depth >= _MAX_DEPTH:
            return
        for sub in part.get_payload():
            if isinstance(sub, email.message.Message):
                collect(sub, bounce, depth=depth + 1)
        epilogue = part.epilogue
        if top and epilogue and DSN_FIELD_INLINE.search(epilogue):
            # Another report appended after the closing boundary (concatenated DSNs).
            bounce.dsn.append(epilogue.replace("\r\n", "\n")[:MAX_TEXT])
        return
    if ctype == "message/delivery-status" or ctype == "message/global-delivery-status":
        bounce.dsn.append(_blocks_text(part))
    elif ctype == "message/feedback-report":
        bounce.feedback.append(_blocks_text(part))
    elif ctype in ("message/rfc822", "message/global"):
        if bounce.original is None:
            inner = part.get_payload()
            if isinstance(inner, list) and inner and isinstance(inner[0], email.message.Message):
                bounce.original = inner[0]
    elif ctype in ("text/rfc822-headers", "text/rfc822-header", "message/global-headers"):
        if bounce.original is None:
            bounce.original = email.parser.HeaderParser().parsestr(decode(part).lstrip())
    elif ctype.startswith(("text/", "multipart/")) or top:
        # (A multipart part that is not one has lost its boundary: its body is read as text.)
        if bounce.original is not None and not top:
            return
        name = part.get_filename()
        if name and not top:
            bounce.names.append(str(name).lower()[:100])
            # A named text part is an attachment, unless it is the notification itself.
            if bounce.text or bounce.dsn:
                return
        text = decode(part)
        if ctype == "text/html":
            if bounce.text:
                return
            text = _TAGS.sub(" ", re.sub(r"(?i)<br\s*/?>|</p>|</div>|</tr>", "\n", text))
        if len(bounce.text) < MAX_TEXT * 4:
            bounce.text = f"{bounce.text}\n{text}" if bounce.text else text


def inline_original(bounce: Bounce) -> None:
    """Split a plain-text bounce at the returned message and read its headers."""
    m = _ORIGINAL_START.search(bounce.text)
    if m is None:
        return
    rest = bounce.text[m.end() :]
    bounce.text = bounce.text[: m.start()]
    nl = rest.find("\n")
    rest = rest[nl + 1 :] if nl >= 0 else ""
    rest = rest.lstrip("\n")
    # Some MTAs put a MIME part header before the returned headers.
    if rest[:13].lower() == "content-type:" or rest[:26].lower() == "content-transfer-encoding:":
        cut = rest.find("\n\n")
        rest = rest[cut + 2 :] if cut >= 0 else ""
    bounce.original = email.parser.HeaderParser().parsestr(rest[:MAX_TEXT])


def original_ids(bounce: Bounce) -> tuple[str, str]:
    orig = bounce.original
    if orig is None:
        return "", ""
    mid = header(orig, "message-id")
    m = re.search(r"<([^<>\s]+)>", mid)
    message_id = m.group(1) if m else mid.strip("<> ")
    return_path = ""
    for name in ("return-path", "x-postfix-sender", "sender"):
        value = header(orig, name)
        found = ADDR_RE.search(value)
        if found:
            return_path = found.group(0).lower()
            break
    if not return_path:
        envelope = re.search(rf"envelope-from <?({ADDR})", str(orig.get("received", "")))
        if envelope:
            return_path = envelope.group(1).lower()
    if not return_path:
        for block in bounce.dsn:
            m2 = re.search(rf"(?im)^X-Postfix-Sender:\s*rfc822;\s*<?({ADDR})", block)
            if m2:
                return_path = m2.group(1).lower()
                break
    return message_id[:998], return_path
