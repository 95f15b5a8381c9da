"""What a parsed report says per recipient, and how an entry in progress becomes one."""

from __future__ import annotations

import re
from dataclasses import dataclass

from mailfold.bounces.classifier import decide, kind_of
from mailfold.bounces.extract import (
    find_command,
    find_reply_code,
    find_status,
    is_temporary,
    prefer_status,
)
from mailfold.bounces.message import MAX_DIAGNOSTIC, WS, Entry
from mailfold.bounces.reasons import BounceKind, Reason, pseudo_status

__all__ = ["ACTIONS", "ParsedRecipient", "ParsedReport", "finish"]

ACTIONS = {
    "failed": "failed",
    "failure": "failed",
    "delayed": "delayed",
    "delivered": "delivered",
    "deliverable": "delivered",
    "relayed": "relayed",
    "expanded": "expanded",
    "expired": "failed",
    "complained": "complained",
    "autoreplied": "autoreplied",
}

# "550-5.7.1 text 550-5.7.1 more 550 5.7.1 end": the continuation lines of one SMTP reply.
_MULTILINE_REPLY = re.compile(r"\b([245]\d\d)-([245]\.\d{1,3}\.\d{1,3})?")
# Characters no event field may carry (NUL above all): dropped from every string.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class ParsedRecipient:
    """One recipient of a bounce or feedback report, classified.

    No string field holds a NUL or another control character.
    """

    recipient: str  # lower-cased address, "" if unknown
    # "failed" | "delayed" | "delivered" | "relayed" | "expanded" | "complained" | "autoreplied"
    action: str
    status: str  # enhanced status "5.1.1" (or sisimai's derived "5.0.9NN"), "" if none
    reply_code: str  # "550" or ""
    reason: str  # one of mailfold.bounces.Reason
    hard: bool
    kind: BounceKind
    diagnostic: str  # the remote diagnostic text, whitespace-collapsed, "" if none
    reporting_mta: str  # "" if unknown
    feedback_type: str  # feedback reports only ("abuse", "opt-out", ...), else ""
    original_message_id: str  # Message-ID of the original message if found, else ""
    original_return_path: str  # envelope sender of the original (VERP recovery), else ""
    # How each field was decided, for `mailfold dsn parse --explain`: (field, how) pairs.
    explanation: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class ParsedReport:
    """What a bounce or feedback message says: the reader that read it and one entry per recipient.

    `format` names the reader ("rfc3464", "arf", "postfix", "gmail", ...), "text" for a
    notification of no known format, "unknown" when the message is not a bounce.
    """

    format: str
    recipients: tuple[ParsedRecipient, ...]


def clean(text: str) -> str:
    """Text without control characters (NUL above all), whitespace collapsed."""
    return WS.sub(" ", _CONTROL.sub(" ", text)).strip()


def _clean_diagnostic(text: str) -> str:
    """Collapse whitespace and drop the reply-code prefixes of multi-line SMTP replies."""
    text = clean(text)
    m = _MULTILINE_REPLY.search(text)
    if m and (m.group(2) or text.count(f"{m.group(1)}-") > 1):
        code = m.group(1)
        status = m.group(2) or ""
        if status:
            text = text.replace(f"{code}-{status} ", "").replace(f"{code} {status} ", "")
            text = text.replace(f"{code}-{status}", "").replace(f"{code} {status}", "")
        text = re.sub(rf"\b{code}[- ]", "", text)
        text = f"{code} {status} {text}" if status else f"{code} {text}"
        text = WS.sub(" ", text).strip()
    return text


def _complaint(e: Entry, message_id: str, return_path: str) -> ParsedRecipient:
    return ParsedRecipient(
        recipient=clean(e.recipient),
        action="complained",
        status="",
        reply_code="",
        reason=Reason.FEEDBACK.value,
        hard=False,
        kind="soft",
        diagnostic=clean(e.diagnostic)[:1000],
        reporting_mta=clean(e.reporting_mta),
        feedback_type=clean(e.feedback_type) or "abuse",
        original_message_id=clean(message_id),
        original_return_path=clean(return_path),
        explanation=(
            ("recipient", e.source or "feedback report"),
            ("reason", "feedback report"),
            ("feedback_type", "Feedback-Type" if e.feedback_type else "default: abuse"),
        ),
    )


def finish(e: Entry, *, delayed_notice: bool, message_id: str, return_path: str) -> ParsedRecipient:
    """Classify one entry: status, reply code, reason and kind, with how each was decided."""
    if e.action == "complained":
        return _complaint(e, message_id, return_path)
    diagnostic = _clean_diagnostic(e.diagnostic[: MAX_DIAGNOSTIC * 2])[:MAX_DIAGNOSTIC]
    in_text = find_status(diagnostic)
    reply = e.reply_code or find_reply_code(diagnostic, in_text[:1])
    status = prefer_status(e.status, in_text, reply)
    how_status = "Status field" if status and status == e.status else "diagnostic text"
    command = e.command or find_command(diagnostic)
    action = ACTIONS.get(e.action, "")
    if not action:
        action = "delayed" if delayed_notice else "failed"
    d = decide(
        status=status,
        reply_code=reply,
        diagnostic=diagnostic,
        command=command,
        diagnostic_type=e.diagnostic_type,
        action=action,
    )
    reason, kind, rule = d.reason, d.kind, d.rule
    if e.reason and (not e.reason_is_hint or reason in (Reason.ONHOLD, Reason.UNDEFINED)):
        reason, rule = e.reason, "stated by the report format"
        kind = kind_of(reason, f"{status} {reply} {diagnostic}")
    if reason == Reason.DELIVERED and action in ("failed", "delayed"):
        action = "delivered"
    if reason == Reason.VACATION:
        status, reply, how_status = "", "", "an automatic reply carries no status"
    elif not status and reason not in (Reason.DELIVERED, Reason.FEEDBACK):
        evidence = f"{reply} {diagnostic}".strip()
        temporary = is_temporary(evidence) if evidence else action == "delayed"
        status = pseudo_status(reason, temporary=temporary)
        how_status = f"stand-in code for {reason}"
    if status and reply and status[0] != reply[0]:
        # The reply code belongs to another exchange than the status: find one that fits.
        again = find_reply_code(diagnostic, status[0])
        reply = again if again.startswith(status[0]) else ""
    return ParsedRecipient(
        recipient=clean(e.recipient),
        action=action,
        status=status,
        reply_code=reply,
        reason=str(reason),
        hard=kind == "hard",
        kind=kind,
        diagnostic=diagnostic,
        reporting_mta=clean(e.reporting_mta),
        feedback_type="",
        original_message_id=clean(message_id),
        original_return_path=clean(return_path),
        explanation=(
            ("recipient", e.source or "reader"),
            ("status", how_status if status else "none found"),
            ("reply_code", "reader" if e.reply_code else "diagnostic text" if reply else "none"),
            ("reason", rule),
            ("kind", f"{kind}: {reason} is {'' if kind == 'hard' else 'not '}a bad address"),
        ),
    )
