"""Extraction: the status code, reply code and SMTP command a diagnostic text carries."""

from __future__ import annotations

import re
from typing import Final

from mailfold.bounces.codes import REPLY_ANY, REPLY_ORDER

__all__ = [
    "STATUS_SHAPE",
    "find_command",
    "find_reply_code",
    "find_status",
    "is_temporary",
    "normalise",
    "prefer_status",
]

_WS = re.compile(r"\s+")
_STATUS_IN_TEXT = re.compile(r"(?<![\d.vV])([245])\.([0-7])\.(\d{1,3})(?!\d)")
STATUS_SHAPE = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")
_COMMAND = re.compile(
    r"(?<![A-Za-z0-9@.\-])(HELO|EHLO|STARTTLS|AUTH|MAIL FROM|MAIL|RCPT TO|RCPT|DATA|QUIT|XFORWARD)"
    r"(?![A-Za-z0-9@=\-])"
)
# Phrases that name the SMTP command a failure answered, where the command itself is not spelled.
_COMMAND_HINTS: Final = (
    ("end of data", "DATA"),
    ("does not like recipient", "RCPT"),
    ("failed on data command", "DATA"),
    ("failed after i sent the message", "DATA"),
    ("but sender was rejected", "MAIL"),
    ("but my name was rejected", "EHLO"),
    ("but greeting failed", "CONN"),
    ("refused to talk to me", "HELO"),
    ("after initial connection", "CONN"),
)
# Gmail ends a relayed error with "(state N)": the stage of the SMTP session that failed.
_GMAIL_STATE = re.compile(r"\(state (\d{1,2})\)")
_GMAIL_STATES: Final[dict[str, str]] = {
    "6": "MAIL",
    "8": "AUTH",
    "9": "AUTH",
    "12": "AUTH",
    "13": "EHLO",
    "14": "RCPT",
    "15": "DATA",
    "17": "DATA",
    "18": "DATA",
}
# Yahoo and others tag the stage: "... User Unknown [RCPT_TO]".
_SMTP_STAGE_TAG = re.compile(r"\[(RCPT_TO|MAIL_FROM|DATA|BDAT)\]", re.IGNORECASE)
_TEMPORARY_WORDS = re.compile(r" temporar| persistent")
# Wording of a failure that was retried until it timed out: a temporary cause, given up on.
_RETRIED_OUT = re.compile(
    r"retry timeout exceeded|have been failing for a long time|retry time not reached"
)


# Diagnostics longer than this are cut before matching: the reason is in the first lines, and a
# bound keeps the "a.*?b" patterns cheap on hostile input.
_MAX_TEXT: Final = 8192


def normalise(text: str | None) -> str:
    return _WS.sub(" ", text[: _MAX_TEXT * 2]).strip().lower()[:_MAX_TEXT] if text else ""


def find_status(text: str | None, klass: str = "") -> str:
    """The most specific RFC 3463 code in `text` ("" if none); `klass` ("4"/"5") restricts it."""
    if not text or len(text) < 5:
        return ""
    text = text[:_MAX_TEXT]
    found: list[str] = []
    fallback = ""
    for m in _STATUS_IN_TEXT.finditer(text):
        if klass and m.group(1) != klass:
            continue
        code = f"{m.group(1)}.{m.group(2)}.{int(m.group(3))}"
        # X.0.0 and 4.4.7 carry no detail: keep looking for something better.
        if code.endswith(".0.0") or code == "4.4.7":
            fallback = fallback or code
            continue
        found.append(code)
    if not found:
        return fallback
    best = found[0]
    for code in found[1:]:
        best = prefer_status(best, code)
    return best


def find_reply_code(text: str | None, klass: str = "") -> str:
    """An SMTP reply code in `text` ("" if none); `klass` restricts it to 2xx/4xx/5xx.

    Codes are looked for in a fixed order, common failure codes first, and must stand alone
    (not be part of a number, an address or a status code).
    """
    if not text or len(text) < 3 or "x-unix" in text.lower():
        return ""
    padded = f" {text[:_MAX_TEXT]} "
    for code in REPLY_ORDER.get(klass, REPLY_ANY):
        start = padded.find(code)
        while start >= 0:
            before, after = padded[start - 1], padded[start + 3]
            if not ("." <= before <= "9" or "." <= after <= "9"):
                return code
            start = padded.find(code, start + 3)
    return ""


def find_command(text: str | None) -> str:
    """The SMTP command a diagnostic says the failure followed ("RCPT", "DATA", ...), or ""."""
    if not text:
        return ""
    text = text[:_MAX_TEXT]
    low = text.lower()
    for hint, command in _COMMAND_HINTS:
        if hint in low:
            return command
    state = _GMAIL_STATE.search(low)
    if state and state.group(1) in _GMAIL_STATES:
        return _GMAIL_STATES[state.group(1)]
    tag = _SMTP_STAGE_TAG.search(text)
    if tag:
        return tag.group(1)[:4].upper()
    last = ""
    for m in _COMMAND.finditer(text):
        last = m.group(1).split(" ", 1)[0]
    return last


def prefer_status(field: str, in_text: str, reply_code: str = "") -> str:
    """Choose between a Status: field value and a code found in the diagnostic text.

    A generic code (X.0.0, X.Y.0, 4.4.7, 5.3.Z, X.5.Z) gives way to a specific one; when the two
    disagree on the class, the reply code decides.
    """
    if not field:
        return in_text
    if not in_text or field == in_text:
        return field
    if reply_code and field[0] != in_text[0]:
        if reply_code[0] == field[0]:
            return field
        if reply_code[0] == in_text[0]:
            return in_text
    if field.endswith(".0.0"):
        return field if in_text.endswith(".0.0") else in_text
    if ".0" in field and ".0" not in in_text:
        return in_text
    if in_text.endswith(".0.0"):
        return field
    if field in ("4.4.7", "4.7.0") or field.startswith("5.3."):
        return in_text
    if field[1:4] in (".5.1", ".5.2", ".5.4", ".5.5"):
        return in_text
    if field == "5.1.1":
        return field if ".0" in in_text or in_text.startswith("5.5.") else in_text
    if field == "5.1.3" and in_text.startswith("5.7."):
        return in_text
    return field


def is_temporary(text: str) -> bool:
    """True when a status/reply/diagnostic string reads as a temporary (4xx) failure."""
    code = find_status(text) or find_reply_code(text)
    if code.startswith("4"):
        return True
    low = text.lower()
    return bool(_TEMPORARY_WORDS.search(f" {low}") or _RETRIED_OUT.search(low))
