"""Bounce and feedback parser: RFC 3464 DSNs, ARF reports and the text bounces of common MTAs."""

from __future__ import annotations

import base64
import email
import email.message
import email.parser
import json
import quopri
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from mailfold.events.bounces import (
    BounceKind,
    classify,
    find_command,
    find_reply_code,
    find_status,
    is_temporary,
    prefer_status,
    pseudo_status,
)

__all__ = ["ParsedRecipient", "ParsedReport", "parse"]


@dataclass(frozen=True, slots=True)
class ParsedRecipient:
    """One recipient of a bounce or feedback report, classified."""

    recipient: str  # lower-cased address, "" if unknown
    action: str  # "failed" | "delayed" | "delivered" | "relayed" | "expanded" | "complained"
    status: str  # enhanced status "5.1.1" (or sisimai's derived "5.0.9NN"), "" if none
    reply_code: str  # "550" or ""
    reason: str  # one of mailfold.events.bounces.REASONS
    hard: bool
    kind: BounceKind
    diagnostic: str  # the remote diagnostic text, whitespace-collapsed, "" if none
    reporting_mta: str  # "" if unknown
    feedback_type: str  # ARF only ("abuse", "opt-out", ...), else ""
    original_message_id: str  # Message-ID of the original message if found, else ""
    original_return_path: str  # envelope sender of the original (VERP recovery), else ""


@dataclass(frozen=True, slots=True)
class ParsedReport:
    """What a bounce or feedback message says: its format and one entry per recipient."""

    # "rfc3464" | "arf" | "postfix" | "sendmail" | "exim" | "qmail" | "exchange" | "gmail" |
    # "amazonses" | ... | "text" (a notification of no known MTA) | "unknown" (not a bounce)
    format: str
    recipients: tuple[ParsedRecipient, ...]


_UNKNOWN = ParsedReport(format="unknown", recipients=())

# Big inputs are cut: no bounce needs more than this to say what failed, and it bounds the work.
_MAX_BYTES = 1 << 20
_MAX_TEXT = 64 * 1024
_MAX_HEADER = 4096
_MAX_DEPTH = 12
_MAX_DIAGNOSTIC = 4000

_WS = re.compile(r"\s+")
# An address as bounces print it; the local part is bounded (RFC 5321: 64 octets) so that a
# search over a long token stays linear.
_ADDR = (
    r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~\-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9\-]{0,62}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9\-]{1,63}){1,8}"
)
_ADDR_RE = re.compile(_ADDR)
_ADDR_ONLY = re.compile(rf"^\s*<?({_ADDR})>?\s*$")
_STATUS_SHAPE = re.compile(r"^\s*([245]\.\d{1,3}\.\d{1,3})")
_TAGS = re.compile(r"<[^>]*>")
# "550-5.7.1 text 550-5.7.1 more 550 5.7.1 end": the continuation lines of one SMTP reply.
_MULTILINE_REPLY = re.compile(r"\b([245]\d\d)-([245]\.\d{1,3}\.\d{1,3})?")

# ---------------------------------------------------------------------------------------------
# RFC 3464 fields
# ---------------------------------------------------------------------------------------------

_DSN_FIELD = re.compile(
    r"^(original-recipient|final-recipient|x-actual-recipient|action|status|remote-mta|"
    r"diagnostic-code|last-attempt-date|will-retry-until|reporting-mta|received-from-mta|"
    r"arrival-date|x-postfix-sender|original-envelope-id|x-original-message-id)\s*:\s*(.*)$",
    re.IGNORECASE,
)
_DSN_FIELD_INLINE = re.compile(r"^(?:final-recipient|original-recipient)\s*:", re.I | re.M)
_PER_MESSAGE = frozenset({"reporting-mta", "received-from-mta", "arrival-date", "x-postfix-sender"})
_ACTIONS = {
    "failed": "failed",
    "failure": "failed",
    "delayed": "delayed",
    "delivered": "delivered",
    "deliverable": "delivered",
    "relayed": "relayed",
    "expanded": "expanded",
    "expired": "failed",
}

# ---------------------------------------------------------------------------------------------
# Where the returned original message starts in a plain-text bounce.
# ---------------------------------------------------------------------------------------------

_ORIGINAL_START = re.compile(
    r"^(?:[ \t]*-{2,}[ \t]*This is a copy of the message"
    r"|[ \t]*-{2,}[ \t]*Below (?:this|the next) line is a copy of the (?:message|mail header)"
    r"|[ \t]*-{3,}[ \t]*(?:Original message follows|Message header follows|Original Message"
    r"|Undelivered message follows|Original message header follows|Returned message)"
    r"|[ \t]*-{2,}[ \t]*Mensaje original adjunto"
    r"|Content-Type:[ \t]*(?:message/rfc822|text/rfc822-headers?)"
    r"|[ \t]*Original message follows\."
    r"|[ \t]*Included is a copy of the message header:"
    r"|[ \t]*Original message headers:"
    r"|\|-+ ?Message text follows:? ?-+\|"
    r"|[ \t]*-{3,}[ \t]*The header of the original message is following\.?[ \t]*-{3,})",
    re.IGNORECASE | re.MULTILINE,
)

# ---------------------------------------------------------------------------------------------
# Markers of the common MTAs and mailbox providers, in the notification text or in the sender of
# the bounce; each names a format. Informative only: parsing does not depend on the format.
# ---------------------------------------------------------------------------------------------

_FORMAT_MARKERS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("qmail", re.compile(r"This is the qmail-send program|\(#[45]\.\d\.\d+\)\s*$", re.M)),
    (
        "exim",
        re.compile(
            r"This message was created automatically by mail delivery software"
            r"|A message that you sent (?:could not|has not yet|contained one or more)"
        ),
    ),
    (
        "postfix",
        re.compile(
            r"This is the mail system at host|The Postfix program|This is the Postfix program"
            r"|^X-Postfix-Queue-ID:",
            re.M,
        ),
    ),
    (
        "sendmail",
        re.compile(
            r"-{5} Transcript of session follows -{5}"
            r"|-{5} The following addresses had (?:permanent fatal|transient non-fatal) errors"
        ),
    ),
    (
        "exchange",
        re.compile(
            r"Your message to .* couldn't be delivered|Delivery has failed to these recipients"
            r"|Diagnostic information for administrators"
        ),
    ),
    ("gmail", re.compile(r"Delivery to the following recipients? (?:failed|has been delayed)")),
    ("courier", re.compile(r"running the Courier mail server")),
    ("opensmtpd", re.compile(r"This is the MAILER-DAEMON, please DO NOT REPLY")),
    ("exchange", re.compile(r"did not reach the following recipient")),
    ("domino", re.compile(r"was not delivered to:\s*$", re.M)),
    ("yahoo", re.compile(r"Sorry, we were unable to deliver your message to the following")),
)
_SENDER_MARKERS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("gmail", re.compile(r"@googlemail\.com|@google\.com", re.I)),
    ("office365", re.compile(r"@outlook\.com|\.onmicrosoft\.com|@microsoft\.com", re.I)),
    ("amazonses", re.compile(r"amazonses\.com", re.I)),
    ("yahoo", re.compile(r"yahoo", re.I)),
)

# ---------------------------------------------------------------------------------------------
# Lines of a human-readable notification that name a recipient, and the lines around them.
# ---------------------------------------------------------------------------------------------

# "<rcpt>: text" / "<rcpt> (expanded from <alias>): text" (Postfix, qmail and their clones)
_LINE_ANGLE_COLON = re.compile(
    rf"^[ \t]{{0,4}}<({_ADDR})>(?:[ \t]*\(expanded from <?({_ADDR})>?\))?[ \t]*:[ \t]*(.*)$"
)
# "<rcpt>... text" (Sendmail)
_LINE_ANGLE_DOTS = re.compile(rf"^[ \t]{{0,4}}<({_ADDR})>\.\.\.[ \t]*(.*)$")
# "  rcpt: text" / "  rcpt <alias>: text" (Exim's indented forms, generic "address: error")
_LINE_BARE_COLON = re.compile(rf"^[ \t]{{0,4}}<?({_ADDR})>?(?:[ \t]+<[^>]*>)?[ \t]*:[ \t]+(\S.*)$")
# "John Smith<mailto:rcpt>" (Exchange)
_LINE_MAILTO = re.compile(rf"^[^<>]*<mailto:({_ADDR})>\s*$", re.IGNORECASE)
# "rcpt on 2010/01/01 0:00" followed by indented error lines (Exchange 2003)
_LINE_ADDR_ON = re.compile(rf"^[ \t]{{0,4}}<?({_ADDR})>?[ \t]+(on \S.*\d.*)$")
# "rcpt ... unknown host" (old Exim)
_LINE_ADDR_DOTS = re.compile(rf"^[ \t]*<?({_ADDR})>?[ \t]+\.\.\.[ \t]*(\S.*)$")
# "<text of two words or more>: <rcpt>" ("User's mailbox is full: <x@y>"), not a header ("To: x")
_LINE_TEXT_THEN_ADDR = re.compile(
    rf"^([A-Za-z][\w'-]*(?:[ \t]+[\w'.,()-]+)+)[ \t]*:[ \t]*<?({_ADDR})>?\.?$"
)
# ... where the text is only a list heading ("Did not reach the following recipient: x@y")
_LIST_INTRO = re.compile(r"recipients?$|address(?:es)?$|following", re.IGNORECASE)
# "  pipe to |/usr/bin/prog" / "  save to /var/mail/x" (Exim), "|/usr/bin/prog" (Sendmail)
_LINE_LOCAL_DELIVERY = re.compile(
    r'^(?:[ \t]{1,4}((?:pipe to |save to )\S.*)|[ \t]{0,4}("\|[^"]+"|\|/\S.*))$'
)
_LOCAL_DELIVERY_KEY = re.compile(r'^(?:pipe to |save to |"?\||/)')
# "generated by x@y" / "(ultimately generated from x@y)" / "(expanded from: <x@y>)"
_GENERATED = re.compile(
    rf"^\(?(?:ultimately )?(?:generated (?:by|from)|expanded from:?)\s+<?({_ADDR})>?\)?$",
    re.IGNORECASE,
)
# "(reason: 550 ...)" under a Sendmail address line
_LINE_REASON = re.compile(r"^\s*\(reason:\s*(.*?)\)?\s*$", re.IGNORECASE)
# The line before the original sender's address in Exim's "A message sent by <x> could not..."
_SENT_BY = re.compile(r"(?:sent|sender) by:?$|^the sender is:?$", re.IGNORECASE)
# A dashed section heading ("----- The following addresses had permanent fatal errors -----")
_SECTION_RULE = re.compile(r"^-{3,}.*-{3,}$")
# Lines introducing the diagnostic of a bounce when no line names the recipient with it
_DIAG_INTRO = re.compile(
    r"^\s*(?:The error that the other server returned was:|Remote Server returned|Technical details"
    r"|Diagnostic information for administrators:|The following message to <|Reason:|Error:"
    r"|because:$)",
    re.IGNORECASE,
)

# SMTP session transcripts: Sendmail's ">>> RCPT To:<x>" / "<<< 550 ..." and the MTA's own
# verdict line "550 5.1.1 <x>... User unknown"; Postfix's " In:  RCPT TO:<x>" / " Out: 550 ..."
_TRANSCRIPT_START = re.compile(r"Transcript of session follows", re.IGNORECASE)
_SENDMAIL_SENT = re.compile(r"^>>>\s*(.*)$")
_SENDMAIL_RECV = re.compile(r"^<<<\s*(.*)$")
_SENDMAIL_TALKING = re.compile(r"^\.\.\. while talking to ", re.IGNORECASE)
_TRANSCRIPT_REPLY = re.compile(r"^([245]\d\d)[ -]")
_SESSION_LINE = re.compile(r"^\s{1,4}(In|Out):\s+(\S.*)$")

# A notification which says delivery is still being tried: a delay, not a failure.
_DELAY_TEXT = re.compile(
    r"has not yet been delivered|could not send message for past|Delayed Mail|still being retried"
    r"|will continue to try|Delivery attempts will continue|This is only a warning|delivery delayed"
    r"|Warning: message .* delayed|Delivery Status Notification \(Delay\)"
    r"|Delivery to the following recipients? has been delayed",
    re.IGNORECASE,
)

# Feedback reports: RFC 5965 fields, Microsoft's JMRP and Apple's unsubscribe notices.
_APPLE_UNSUBSCRIBE = "x-apple-unsubscribe"
_JMRP_HEADER = "x-hmxmroriginalrecipient"
_COMPLAINT_SUBJECT = re.compile(r"complaint about message from", re.IGNORECASE)
_FEEDBACK_FIELD = re.compile(
    r"^(feedback-type|original-rcpt-to|removal-recipient|reporting-mta)\s*:\s*(.*)$",
    re.IGNORECASE | re.MULTILINE,
)


@dataclass(slots=True)
class _Entry:
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
    fields: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class _Bounce:
    """The parts of a bounce message that matter, decoded."""

    headers: email.message.Message
    text: str = ""  # the human-readable notification
    dsn: list[str] = field(default_factory=list)  # message/delivery-status bodies
    feedback: list[str] = field(default_factory=list)  # message/feedback-report bodies
    original: email.message.Message | None = None  # headers of the returned message


def parse(raw: bytes) -> ParsedReport:
    """Parse a bounce or feedback message into one classified entry per recipient.

    Never raises: a message that cannot be read as a bounce gives format "unknown" and no
    recipients.
    """
    if not raw or not raw.strip():
        return _UNKNOWN
    try:
        return _parse(raw[:_MAX_BYTES])
    except Exception:
        return _UNKNOWN


def _parse(raw: bytes, depth: int = 0) -> ParsedReport:
    msg = email.message_from_bytes(raw)
    bounce = _Bounce(headers=msg)
    _collect(msg, bounce, top=True)
    full_text = bounce.text
    if bounce.original is None:
        _inline_original(bounce)

    report = _parse_arf(bounce) or _parse_ses_notification(bounce)
    if report is not None:
        return report

    entries = _dsn_entries(bounce.dsn) if bounce.dsn else []
    if not bounce.dsn and _DSN_FIELD_INLINE.search(bounce.text):
        # Some MTAs print the RFC 3464 fields inline in a plain-text body.
        entries = _dsn_entries([bounce.text])
    fmt = _detect_format(bounce, entries)
    scanned = _scan_text(bounce)
    entries = _merge(entries, scanned)
    if not entries:
        entries = _fallback_recipients(bounce, scanned)
    if not entries and depth == 0:
        # A bounce forwarded inline (quoted or not) by a person or a mail system.
        embedded = _embedded_message(full_text)
        if embedded:
            inner = _parse(embedded.encode("utf-8", errors="replace"), depth + 1)
            if inner.recipients:
                return inner
    if not entries and fmt != "unknown":
        entries = _original_recipient(bounce)
    if not entries:
        return ParsedReport(format="unknown", recipients=())
    if fmt == "unknown":
        fmt = "text"  # a plain-text notification of no MTA we recognise
    subject = _header(msg, "subject")
    delayed = bool(_DELAY_TEXT.search(bounce.text) or _DELAY_TEXT.search(subject))
    original_id, return_path = _original_ids(bounce)
    recipients = tuple(
        _finish(e, delayed_notice=delayed, message_id=original_id, return_path=return_path)
        for e in entries
    )
    return ParsedReport(format=fmt, recipients=recipients)


_QUOTE = re.compile(r"^> ?", re.MULTILINE)
_EMBEDDED_START = re.compile(
    r"^(?:From [^\n]*\n)?(?=(?:(?:Return-Path|Received|Date|From|To|Subject|Message-I[Dd]|"
    r"MIME-Version|Delivered-To|Content-Type):[^\n]*\n(?:[ \t][^\n]*\n)*){3})",
    re.MULTILINE,
)


def _embedded_message(text: str) -> str:
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


def _original_recipient(bounce: _Bounce) -> list[_Entry]:
    """A bounce that names no recipient: the original message's To: is the one it bounced for."""
    if bounce.original is None:
        return []
    a = _ADDR_RE.search(_header(bounce.original, "to"))
    if a is None:
        return []
    return [_Entry(recipient=a.group(0).lower())]


# ---------------------------------------------------------------------------------------------
# MIME walking
# ---------------------------------------------------------------------------------------------


def _header(msg: email.message.Message, name: str) -> str:
    try:
        value = msg.get(name)
    except Exception:
        return ""
    if value is None:
        return ""
    return _WS.sub(" ", str(value)[:_MAX_HEADER]).strip()


def _decode(part: email.message.Message) -> str:
    try:
        payload = part.get_payload(decode=True)
    except Exception:
        payload = None
    if isinstance(payload, bytes):
        text = _text_of(payload, part.get_content_charset())
    else:
        raw = part.get_payload()
        text = raw if isinstance(raw, str) else ""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text[:_MAX_TEXT]


def _text_of(data: bytes, charset: str | None) -> str:
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
        return _undo_transfer_encoding(text, part)[:_MAX_TEXT]
    return _decode(part)


def _undo_transfer_encoding(text: str, part: email.message.Message) -> str:
    """The stdlib reads these parts as header blocks before decoding them: decode afterwards."""
    cte = str(part.get("content-transfer-encoding", "")).strip().lower()
    try:
        if cte == "base64":
            data = base64.b64decode(_WS.sub("", text), validate=False)
        elif cte == "quoted-printable":
            data = quopri.decodestring(text.encode("ascii", errors="replace"))
        else:
            return text
    except ValueError:
        return text
    return _text_of(data, part.get_content_charset())


def _collect(
    part: email.message.Message, bounce: _Bounce, *, top: bool = False, depth: int = 0
) -> None:
    """Sort the MIME parts of a bounce into notification text, reports and the original."""
    ctype = part.get_content_type()
    if part.is_multipart() and ctype != "message/rfc822" and not ctype.startswith("message/"):
        if depth >= _MAX_DEPTH:
            return
        for sub in part.get_payload():
            if isinstance(sub, email.message.Message):
                _collect(sub, bounce, depth=depth + 1)
        epilogue = part.epilogue
        if top and epilogue and _DSN_FIELD_INLINE.search(epilogue):
            # Another report appended after the closing boundary (concatenated DSNs).
            bounce.dsn.append(epilogue.replace("\r\n", "\n")[:_MAX_TEXT])
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
            bounce.original = email.parser.HeaderParser().parsestr(_decode(part).lstrip())
    elif ctype.startswith("text/") or top:
        if bounce.original is not None and not top:
            return
        if part.get_filename() and not top:
            return
        text = _decode(part)
        if ctype == "text/html":
            if bounce.text:
                return
            text = _TAGS.sub(" ", re.sub(r"(?i)<br\s*/?>|</p>|</div>|</tr>", "\n", text))
        if len(bounce.text) < _MAX_TEXT * 4:
            bounce.text = f"{bounce.text}\n{text}" if bounce.text else text


def _inline_original(bounce: _Bounce) -> None:
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
    bounce.original = email.parser.HeaderParser().parsestr(rest[:_MAX_TEXT])


def _original_ids(bounce: _Bounce) -> tuple[str, str]:
    orig = bounce.original
    if orig is None:
        return "", ""
    mid = _header(orig, "message-id")
    m = re.search(r"<([^<>\s]+)>", mid)
    message_id = m.group(1) if m else mid.strip("<> ")
    return_path = ""
    for name in ("return-path", "x-postfix-sender", "sender"):
        value = _header(orig, name)
        found = _ADDR_RE.search(value)
        if found:
            return_path = found.group(0).lower()
            break
    if not return_path:
        envelope = re.search(rf"envelope-from <?({_ADDR})", str(orig.get("received", "")))
        if envelope:
            return_path = envelope.group(1).lower()
    if not return_path:
        for block in bounce.dsn:
            m2 = re.search(rf"(?im)^X-Postfix-Sender:\s*rfc822;\s*<?({_ADDR})", block)
            if m2:
                return_path = m2.group(1).lower()
                break
    return message_id[:998], return_path


# ---------------------------------------------------------------------------------------------
# RFC 3464 delivery-status fields
# ---------------------------------------------------------------------------------------------


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
        m = _DSN_FIELD.match(line.strip())
        if m:
            name, value = m.group(1).lower(), m.group(2).strip()
    if name:
        yield name, value


def _address_value(value: str) -> str:
    """The address of "rfc822; user@example.org" (or the raw value for non-rfc822 types)."""
    _, _, rest = value.rpartition(";")
    rest = rest.strip() or value.strip()
    m = _ADDR_RE.search(rest)
    if m:
        return m.group(0).lower()
    return rest.strip("<> ").lower()


def _dsn_entries(blocks: Iterable[str]) -> list[_Entry]:
    entries: list[_Entry] = []
    per_message: dict[str, str] = {}
    for block in blocks:
        current: _Entry | None = None
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
                    current = _Entry()
                    entries.append(current)
                    closed = False
                current.recipient = _address_value(value)
                if value.partition(";")[2].strip()[:1] in ("|", "/"):
                    # A pipe or a file: local delivery by a program, not SMTP.
                    current.diagnostic_type = "x-unix"
                continue
            if name == "original-recipient":
                if current is None or closed or "original-recipient" in current.fields:
                    current = _Entry()
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
                    current = _Entry()
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
                m = _STATUS_SHAPE.match(value)
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
        e.reporting_mta = reporting
        if e.recipient or e.diagnostic or e.status:
            result.append(e)
    return result


# ---------------------------------------------------------------------------------------------
# Human-readable bounce text
# ---------------------------------------------------------------------------------------------


def _own_addresses(bounce: _Bounce) -> frozenset[str]:
    """Addresses of the bounce itself (its sender and the original sender): never recipients."""
    found = set()
    for name in ("to", "from", "return-path", "reply-to"):
        for m in _ADDR_RE.finditer(_header(bounce.headers, name)):
            found.add(m.group(0).lower())
    return frozenset(found)


@dataclass(slots=True)
class _Scanned:
    """What the text of a bounce says per recipient."""

    order: list[str] = field(default_factory=list)
    diagnostic: dict[str, str] = field(default_factory=dict)
    alias: dict[str, str] = field(default_factory=dict)
    command: dict[str, str] = field(default_factory=dict)
    replies: list[str] = field(default_factory=list)  # what the remote server said ("<<<")
    session_command: str = ""  # the last command sent in a transcript (">>>")
    loose: list[str] = field(default_factory=list)  # diagnostic lines not tied to an address
    loose_status: str = ""

    def add(self, rcpt: str, text: str = "", alias: str = "") -> None:
        if rcpt not in self.diagnostic:
            self.order.append(rcpt)
            self.diagnostic[rcpt] = ""
        if text:
            joined = f"{self.diagnostic[rcpt]} {text}" if self.diagnostic[rcpt] else text
            self.diagnostic[rcpt] = joined
        if alias and rcpt not in self.alias:
            self.alias[rcpt] = alias


_NOBODY: frozenset[str] = frozenset()


def _is_rcpt_candidate(addr: str, own: frozenset[str]) -> bool:
    """Not one of `own`, nor a mail system's role address."""
    local = addr.partition("@")[0]
    return addr not in own and local not in ("postmaster", "mailer-daemon", "mailer_daemon")


def _scan_text(bounce: _Bounce) -> _Scanned:
    """Read the recipients and their errors from the human-readable part of a bounce.

    Recognises the line shapes the common MTAs use rather than each MTA: "<rcpt>: error"
    (Postfix, qmail), an indented address followed by indented error lines (Exim, Gmail),
    "<rcpt>" with "(reason: ...)" and an SMTP transcript (Sendmail), and "In:/Out:" session
    transcripts (Postfix's SMTP server reports).
    """
    out = _Scanned()
    text = bounce.text
    if not text:
        return out
    own = _own_addresses(bounce)
    current = ""
    in_transcript = False
    capture_loose = False
    intro_pending = False
    prev = ""
    for raw_line in text.split("\n"):
        line = raw_line.rstrip()
        stripped = line.strip()
        if not stripped:
            current = ""
            # A heading such as "because:" is followed by a blank line, then the error.
            capture_loose = capture_loose and intro_pending
            continue
        previous, prev = prev, stripped
        if _TRANSCRIPT_START.search(line):
            in_transcript = True
            current = ""
            continue
        if _SECTION_RULE.match(stripped):
            current = ""
            in_transcript = False
            continue
        if _DSN_FIELD.match(stripped):
            # RFC 3464 fields printed in the text (a broken MIME structure): read elsewhere.
            current = ""
            capture_loose = False
            continue
        session = _SESSION_LINE.match(line)
        if session:
            _session_line(out, session.group(1).lower(), session.group(2).strip())
            continue
        if in_transcript and _transcript_line(out, stripped):
            continue
        # The bracketed shapes are specific enough to trust even for the bounce's own addresses
        # (a bounce of a message sent to oneself); the looser shapes below are not.
        m = _LINE_ANGLE_COLON.match(line)
        if m and _is_rcpt_candidate(m.group(1).lower(), _NOBODY):
            current = m.group(1).lower()
            out.add(current, m.group(3).strip(), (m.group(2) or "").lower())
            continue
        m = _LINE_ANGLE_DOTS.match(line)
        if m and _is_rcpt_candidate(m.group(1).lower(), _NOBODY):
            current = m.group(1).lower()
            out.add(current, m.group(2).strip())
            continue
        m = _LINE_LOCAL_DELIVERY.match(line)
        if m:
            current = (m.group(1) or m.group(2)).strip().strip('"')
            out.add(current)
            continue
        m = _ADDR_ONLY.match(line) or _LINE_MAILTO.match(line)
        if m and not _SENT_BY.search(previous) and _is_rcpt_candidate(m.group(1).lower(), own):
            current = m.group(1).lower()
            out.add(current)
            continue
        m = _LINE_BARE_COLON.match(line) or _LINE_ADDR_ON.match(line)
        if m and _is_rcpt_candidate(m.group(1).lower(), own):
            current = m.group(1).lower()
            out.add(current, m.group(2).strip())
            continue
        m = _LINE_ADDR_DOTS.match(line)
        if m and _is_rcpt_candidate(m.group(1).lower(), own):
            current = m.group(1).lower()
            out.add(current, m.group(2).strip())
            continue
        m = _LINE_TEXT_THEN_ADDR.match(stripped)
        if m and not current and _is_rcpt_candidate(m.group(2).lower(), own):
            # "User's mailbox is full: <rcpt>" / "Did not reach the following recipient: rcpt"
            out.add(m.group(2).lower(), stripped if _LIST_INTRO.search(m.group(1)) else m.group(1))
            continue
        if current:
            alias = _GENERATED.match(stripped)
            if alias:
                out.add(current, alias=alias.group(1).lower())
                continue
            reason = _LINE_REASON.match(stripped)
            out.add(current, reason.group(1) if reason else stripped)
            continue
        if _DIAG_INTRO.match(stripped):
            capture_loose = True
            rest = stripped.split(":", 1)[1].strip() if ":" in stripped else ""
            intro_pending = not rest
            if rest:
                out.loose.append(rest)
            continue
        if capture_loose:
            intro_pending = False
            out.loose.append(stripped)
    if out.replies and not out.session_command:
        # Replies with no command sent: the server refused the connection or the greeting.
        out.session_command = "EHLO"
    return out


def _transcript_line(out: _Scanned, stripped: str) -> bool:
    """A line of a Sendmail-style transcript; True when it was consumed."""
    sent = _SENDMAIL_SENT.match(stripped)
    if sent:
        out.session_command = find_command(sent.group(1)) or out.session_command
        return True
    recv = _SENDMAIL_RECV.match(stripped)
    if recv:
        if recv.group(1) not in out.replies:
            out.replies.append(recv.group(1))
        return True
    if _SENDMAIL_TALKING.match(stripped):
        return True
    if _TRANSCRIPT_REPLY.match(stripped):
        # The local MTA's own verdict ("550 5.1.1 <rcpt>... User unknown"): second-hand, so it
        # only fills in where the report itself says nothing.
        out.loose.append(stripped)
        out.loose_status = out.loose_status or find_status(stripped)
        return True
    if stripped.startswith(("Message: ", "Warning: ")):
        out.loose.append(stripped)
        return True
    return False


def _session_line(out: _Scanned, direction: str, value: str) -> None:
    """One "In:"/"Out:" line of a Postfix SMTP session transcript."""
    if direction == "in":
        command = find_command(value)
        if command:
            out.session_command = command
        if command == "RCPT":
            a = _ADDR_RE.search(value)
            if a:
                out.add(a.group(0).lower())
        return
    code = find_reply_code(value[:3])
    if code[:1] in ("4", "5") and out.order:
        rcpt = out.order[-1]
        if not out.diagnostic.get(rcpt):
            out.add(rcpt, value)
            out.command.setdefault(rcpt, out.session_command)


def _merge(entries: list[_Entry], scanned: _Scanned) -> list[_Entry]:
    """Add what the text says to the DSN entries, or make entries from the text alone."""
    local: dict[int, str] = {}  # id(entry) -> the pipe or file it was delivered to
    if entries:
        _annotate(entries, scanned, local)
    else:
        entries = _entries_from_text(scanned)
    single = len(entries) == 1
    # Text not tied to an address can only be attributed when there is one recipient.
    loose = " ".join(scanned.loose) if single else ""
    replies = " ".join(scanned.replies) if single else ""
    for e in entries:
        if loose and _vague(e.diagnostic):
            e.diagnostic = loose
        if scanned.loose_status and not e.status:
            e.status = scanned.loose_status
        if replies and replies not in e.diagnostic:
            # What the remote server replied is the most precise diagnostic there is.
            e.diagnostic = f"{replies} {e.diagnostic}".strip()
        if not e.command and scanned.session_command:
            e.command = scanned.session_command
        key = local.get(id(e), "")
        if key and key not in e.diagnostic:
            e.diagnostic = f"{key} {e.diagnostic}".strip()
    return entries


def _vague(diagnostic: str) -> bool:
    """A Diagnostic-Code that says nothing (empty, or a bare exit status like "77")."""
    text = diagnostic.strip()
    return not text or text.isdigit()


def _entries_from_text(scanned: _Scanned) -> list[_Entry]:
    """Entries for a bounce with no RFC 3464 part: one per recipient its text names."""
    entries = []
    for key in scanned.order:
        alias = scanned.alias.get(key, "")
        local = _LOCAL_DELIVERY_KEY.match(key) is not None
        e = _Entry(recipient=alias if alias and local else key)
        e.alias = alias if e.recipient != alias else ""
        e.diagnostic = scanned.diagnostic.get(key, "")
        e.command = scanned.command.get(key, "")
        if local:
            e.diagnostic_type = "x-unix"
            e.diagnostic = f"{key} {e.diagnostic}".strip()
        entries.append(e)
    return entries


def _annotate(entries: list[_Entry], scanned: _Scanned, local: dict[int, str]) -> None:
    """Improve each DSN entry with what the text says about the same recipient."""
    by_alias = {v: k for k, v in scanned.alias.items()}
    for e in entries:
        key = e.recipient if e.recipient in scanned.diagnostic else ""
        key = key or (e.alias if e.alias in scanned.diagnostic else "")
        key = key or by_alias.get(e.recipient, "") or by_alias.get(e.alias, "")
        if not key and len(entries) == 1 and len(scanned.order) == 1:
            key = scanned.order[0]
        if not key:
            continue
        alt = scanned.diagnostic.get(key, "")
        if alt and not (_vague(e.diagnostic) and scanned.loose):
            e.diagnostic = _better_diagnostic(e.diagnostic, alt, e.status)
        e.command = e.command or scanned.command.get(key, "")
        if _LOCAL_DELIVERY_KEY.match(key):
            local[id(e)] = key


def _better_diagnostic(field_text: str, alt: str, status: str) -> str:
    """The Diagnostic-Code, unless the notification text says the same and more.

    MTAs often put a shortened reply in the field and the whole one (with the SMTP command it
    answered) in the text: "550 user unknown" versus "... said: 550 5.1.1 user unknown (in
    reply to RCPT TO command)".
    """
    f = _WS.sub(" ", field_text).strip()
    a = _WS.sub(" ", alt).strip()
    if not f or f.isdigit():
        return a
    if f.lower() in a.lower() and len(a) > len(f):
        return a
    if (not status or status.endswith(".0.0")) and find_status(a) and not find_status(f):
        return a
    if "(in reply to" in a and "(in reply to" not in f:
        return f"{f} {a[a.index('(in reply to') :]}"
    return f


def _fallback_recipients(bounce: _Bounce, scanned: _Scanned) -> list[_Entry]:
    """Exim's X-Failed-Recipients header, when no line of the text names the recipients."""
    failed = _header(bounce.headers, "x-failed-recipients")
    addrs = [m.group(0).lower() for m in _ADDR_RE.finditer(failed)]
    if not addrs or not bounce.text:
        return []
    diag = " ".join(scanned.loose) or _WS.sub(" ", bounce.text).strip()[:2000]
    return [_Entry(recipient=a, diagnostic=diag) for a in addrs]


def _detect_format(bounce: _Bounce, entries: list[_Entry]) -> str:
    text = bounce.text
    for name, pattern in _FORMAT_MARKERS:
        if pattern.search(text):
            return name
    sender = f"{_header(bounce.headers, 'from')} {_header(bounce.headers, 'message-id')}"
    for name, pattern in _SENDER_MARKERS:
        if pattern.search(sender):
            return name
    subject = _header(bounce.headers, "subject")
    if (
        subject.startswith("Undelivered Mail Returned to Sender")
        or "SMTP server: errors" in subject
    ):
        return "postfix"
    if subject.endswith("see transcript for details"):
        return "sendmail"
    if "(qmail " in " ".join(str(h) for h in bounce.headers.get_all("received", [])):
        return "qmail"
    return "rfc3464" if entries or bounce.dsn else "unknown"


# ---------------------------------------------------------------------------------------------
# ARF (RFC 5965) and the non-standard complaint formats around it
# ---------------------------------------------------------------------------------------------


def _parse_arf(bounce: _Bounce) -> ParsedReport | None:
    feedback = _feedback_fields(bounce)
    if feedback is None:
        return None
    feedback_type, rcpts, mta = feedback
    original = bounce.original
    if not rcpts and original is not None:
        # As sisimai does: the reported recipient is the To: of the enclosed message.
        for name in ("to", "delivered-to", "x-original-to"):
            a = _ADDR_RE.search(_header(original, name))
            if a:
                rcpts.append(a.group(0).lower())
                break
    message_id, return_path = _original_ids(bounce)
    diagnostic = _WS.sub(" ", bounce.text).strip()[:1000]
    return ParsedReport(
        format="arf",
        recipients=tuple(
            ParsedRecipient(
                recipient=r,
                action="complained",
                status="",
                reply_code="",
                reason="feedback",
                hard=False,
                kind="soft",
                diagnostic=diagnostic,
                reporting_mta=mta,
                feedback_type=feedback_type,
                original_message_id=message_id,
                original_return_path=return_path,
            )
            for r in rcpts or [""]
        ),
    )


def _feedback_fields(bounce: _Bounce) -> tuple[str, list[str], str] | None:
    """(feedback type, reported recipients, reporting MTA) of a feedback report, else None."""
    msg = bounce.headers
    original = bounce.original
    rcpts: list[str] = []
    if bounce.feedback:
        feedback_type, mta = "", ""
        for block in bounce.feedback:
            for m in _FEEDBACK_FIELD.finditer(block):
                name, value = m.group(1).lower(), m.group(2).strip()
                if name == "feedback-type":
                    feedback_type = feedback_type or value.split(" ", 1)[0].lower()
                elif name == "reporting-mta":
                    mta = mta or (value.partition(";")[2].strip() if ";" in value else value)
                else:
                    a = _ADDR_RE.search(value)
                    if a and a.group(0).lower() not in rcpts:
                        rcpts.append(a.group(0).lower())
        return feedback_type or "abuse", rcpts, mta
    if _header(msg, _APPLE_UNSUBSCRIBE).lower() == "true":
        # Apple Mail's one-click unsubscribe, sent from the subscriber's own address.
        a = _ADDR_RE.search(_header(msg, "from"))
        return "opt-out", [a.group(0).lower()] if a else [], ""
    if original is None:
        return None
    jmrp = _header(original, _JMRP_HEADER)
    complaint = bool(_COMPLAINT_SUBJECT.search(_header(msg, "subject")))
    if jmrp or (complaint and msg.get_content_type() == "multipart/mixed"):
        # Microsoft's JMRP and Amazon SES forward complaints as the message itself.
        a = _ADDR_RE.search(jmrp)
        return "abuse", [a.group(0).lower()] if a else [], ""
    return None


# ---------------------------------------------------------------------------------------------
# Amazon SES notifications (JSON, possibly inside an SNS envelope) delivered by email
# ---------------------------------------------------------------------------------------------

# SES bounce subtypes which say more than a generic diagnostic would.
_SES_SUBTYPES = {
    "MailboxFull": "mailboxfull",
    "MessageTooLarge": "mesgtoobig",
    "ContentRejected": "contenterror",
    "AttachmentRejected": "securityerror",
}


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _json_object(text: str) -> dict[str, Any] | None:
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        return None
    try:
        value = json.loads(text[start : end + 1])
    except ValueError:
        return None
    if isinstance(value, dict) and isinstance(value.get("Message"), str):
        # An SNS envelope: the SES notification is a JSON string inside it.
        try:
            value = json.loads(value["Message"])
        except ValueError:
            return None
    return value if isinstance(value, dict) else None


def _parse_ses_notification(bounce: _Bounce) -> ParsedReport | None:
    if "notificationType" not in bounce.text:
        return None
    note = _json_object(bounce.text)
    if note is None:
        return None
    kind = str(note.get("notificationType") or note.get("eventType") or "")
    mail = _dict(note.get("mail"))
    headers = _dict(mail.get("commonHeaders"))
    message_id = str(headers.get("messageId") or mail.get("messageId") or "").strip("<>")
    return_path = str(mail.get("source") or "").lower()
    recipients: list[ParsedRecipient] = []
    if kind == "Complaint" and isinstance(note.get("complaint"), dict):
        complaint = note["complaint"]
        feedback_type = str(complaint.get("complaintFeedbackType") or "abuse")
        for r in complaint.get("complainedRecipients") or []:
            address = str(r.get("emailAddress", "") if isinstance(r, dict) else r).lower()
            recipients.append(
                ParsedRecipient(
                    recipient=address,
                    action="complained",
                    status="",
                    reply_code="",
                    reason="feedback",
                    hard=False,
                    kind="soft",
                    diagnostic="",
                    reporting_mta="",
                    feedback_type=feedback_type,
                    original_message_id=message_id,
                    original_return_path=return_path,
                )
            )
        return ParsedReport(format="amazonses", recipients=tuple(recipients))
    entries: list[_Entry] = []
    subtype = ""
    if kind == "Bounce" and isinstance(note.get("bounce"), dict):
        data = note["bounce"]
        subtype = str(data.get("bounceSubType") or "")
        mta = str(data.get("reportingMTA") or "").partition(";")[2].strip()
        for r in data.get("bouncedRecipients") or []:
            if not isinstance(r, dict):
                continue
            code = str(r.get("diagnosticCode") or "")
            dtype, sep, text = code.partition(";")
            entries.append(
                _Entry(
                    recipient=str(r.get("emailAddress") or "").lower(),
                    action=str(r.get("action") or "failed").lower(),
                    status=str(r.get("status") or ""),
                    diagnostic=text.strip() if sep and " " not in dtype.strip() else code,
                    reporting_mta=mta,
                )
            )
    elif kind == "Delivery" and isinstance(note.get("delivery"), dict):
        data = note["delivery"]
        response = str(data.get("smtpResponse") or "")
        for address in data.get("recipients") or []:
            entries.append(
                _Entry(recipient=str(address).lower(), action="delivered", diagnostic=response)
            )
    if not entries:
        return None
    results = []
    for e in entries:
        r = _finish(e, delayed_notice=False, message_id=message_id, return_path=return_path)
        if r.reason in ("onhold", "undefined") and subtype in _SES_SUBTYPES:
            r = replace(r, reason=_SES_SUBTYPES[subtype])
        results.append(r)
    return ParsedReport(format="amazonses", recipients=tuple(results))


# ---------------------------------------------------------------------------------------------
# Classification of one recipient
# ---------------------------------------------------------------------------------------------


def _clean_diagnostic(text: str) -> str:
    """Collapse whitespace and drop the reply-code prefixes of multi-line SMTP replies."""
    text = _WS.sub(" ", text).strip()
    m = _MULTILINE_REPLY.search(text)
    if m and (m.group(2) or text.count(f"{m.group(1)}-") > 1):
        code = m.group(1)
        status = m.group(2) or ""
        if status:
            text = text.replace(f"{code}-{status} ", "").replace(f"{code} {status} ", "")
            text = text.replace(f"{code}-{status}", "").replace(f"{code} {status}", "")
        text = re.sub(rf"\b{code}[- ]", "", text)
        text = f"{code} {status} {text}" if status else f"{code} {text}"
        text = _WS.sub(" ", text).strip()
    return text


def _finish(
    e: _Entry, *, delayed_notice: bool, message_id: str, return_path: str
) -> ParsedRecipient:
    diagnostic = _clean_diagnostic(e.diagnostic[: _MAX_DIAGNOSTIC * 2])[:_MAX_DIAGNOSTIC]
    in_text = find_status(diagnostic)
    reply = e.reply_code or find_reply_code(diagnostic, in_text[:1])
    status = prefer_status(e.status, in_text, reply)
    command = e.command or find_command(diagnostic)
    action = _ACTIONS.get(e.action, "")
    if not action:
        action = "delayed" if delayed_notice else "failed"
    reason, kind = classify(
        status=status,
        reply_code=reply,
        diagnostic=diagnostic,
        command=command,
        diagnostic_type=e.diagnostic_type,
        action=action,
    )
    if reason == "delivered" and action in ("failed", "delayed"):
        action = "delivered"
    if not status and reason not in ("delivered", "feedback", "vacation"):
        evidence = f"{reply} {diagnostic}".strip()
        temporary = is_temporary(evidence) if evidence else action == "delayed"
        status = pseudo_status(reason, temporary=temporary)
    if status and reply and status[0] != reply[0]:
        # The reply code belongs to another exchange than the status: find one that fits.
        again = find_reply_code(diagnostic, status[0])
        reply = again if again.startswith(status[0]) else ""
    return ParsedRecipient(
        recipient=e.recipient,
        action=action,
        status=status,
        reply_code=reply,
        reason=reason,
        hard=kind == "hard",
        kind=kind,
        diagnostic=diagnostic,
        reporting_mta=e.reporting_mta,
        feedback_type="",
        original_message_id=message_id,
        original_return_path=return_path,
    )
