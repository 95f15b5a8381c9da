"""parse(): from the bytes of a bounce or feedback message to one classified entry per recipient."""

from __future__ import annotations

import email
import email.message
import hashlib
import logging
from collections.abc import Callable

from mailfold.bounces.message import (
    DELAY_TEXT,
    MAX_BYTES,
    Bounce,
    collect,
    embedded_message,
    header,
    inline_original,
    original_ids,
    original_recipient,
)
from mailfold.bounces.readers import GENERIC, choose
from mailfold.bounces.report import ParsedRecipient, ParsedReport, finish

__all__ = ["ParseFailed", "parse", "parse_strict"]

UNKNOWN = ParsedReport(format="unknown", recipients=())
_HEAD = 16 * 1024
_log = logging.getLogger("mailfold.bounces")


class ParseFailed(Exception):
    """The parser raised on a message: a bug to fix, reported with the message's digest."""

    def __init__(self, digest: str, error: BaseException) -> None:
        super().__init__(f"bounce parser failed on message sha256:{digest}: {error!r}")
        self.digest = digest
        self.error = error


def parse_strict(raw: bytes) -> ParsedReport:
    """Parse a bounce or feedback message; raises ParseFailed if the parser itself fails.

    A message that is simply not a bounce gives format "unknown" and no recipients.
    """
    if not raw or not raw.strip():
        return UNKNOWN
    try:
        return _parse(raw[:MAX_BYTES])
    except Exception as exc:
        raise ParseFailed(hashlib.sha256(raw).hexdigest(), exc) from exc


def parse(raw: bytes, on_error: Callable[[ParseFailed], None] | None = None) -> ParsedReport:
    """Parse a bounce or feedback message into one classified entry per recipient.

    Never raises. A parser failure is never silent: it is handed to `on_error` (callers count
    it and log it with the message's digest), or logged here when no handler is given, and the
    message reads as format "unknown" with no recipients, so that it is still kept.
    """
    try:
        return parse_strict(raw)
    except ParseFailed as failed:
        if on_error is not None:
            on_error(failed)
        else:
            _log.error("bounce parser failed", extra={"sha256": failed.digest}, exc_info=failed)
        return UNKNOWN


def _is_report(msg: email.message.Message | None) -> bool:
    return msg is not None and msg.get_content_type() == "multipart/report"


def _parse(raw: bytes, depth: int = 0) -> ParsedReport:
    msg = email.message_from_bytes(raw)
    bounce = Bounce(headers=msg)
    collect(msg, bounce, top=True)
    full_text = bounce.text
    if bounce.original is None:
        inline_original(bounce)
    reader = choose(bounce)
    entries = reader.read(bounce)
    if not entries and depth == 0:
        # A bounce forwarded inline (quoted or not) by a person or a mail system.
        embedded = embedded_message(full_text)
        if embedded:
            inner = _parse(embedded.encode("utf-8", errors="replace"), depth + 1)
            if inner.recipients:
                return inner
    if not entries and depth == 0 and _is_report(bounce.original):
        # The returned message is itself a bounce (a report relayed back): read that one.
        assert bounce.original is not None
        inner = _parse(bounce.original.as_bytes()[:MAX_BYTES], depth + 1)
        if inner.recipients:
            return inner
    if not entries and reader is not GENERIC:
        entries = original_recipient(bounce)
    if not entries:
        return UNKNOWN
    subject = header(msg, "subject")
    # A delay notice says so in its first lines.
    delayed = bool(DELAY_TEXT.search(bounce.text[:_HEAD]) or DELAY_TEXT.search(subject))
    message_id, return_path = original_ids(bounce)
    recipients: tuple[ParsedRecipient, ...] = tuple(
        finish(
            e,
            delayed_notice=delayed,
            message_id=e.message_id or message_id,
            return_path=e.return_path or return_path,
        )
        for e in entries
    )
    return ParsedReport(format=reader.name, recipients=recipients)
