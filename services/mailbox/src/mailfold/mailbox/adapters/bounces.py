"""The project's bounce parser, behind one function: the only import of it in this service."""

from __future__ import annotations

from dataclasses import dataclass

from mailfold.bounces import parse


@dataclass(frozen=True, slots=True)
class BounceFact:
    """One failed recipient of a bounce, with what the parser concluded."""

    recipient: str
    original_message_id: str
    status: str
    reply_code: str
    reason: str
    kind: str  # "hard" | "soft" | "undetermined"
    diagnostic: str
    reporting_mta: str


def failed_recipients(raw: bytes) -> list[BounceFact]:
    """The permanently failed recipients a bounce reports; empty for anything else."""
    report = parse(raw)
    return [
        BounceFact(
            recipient=r.recipient,
            original_message_id=r.original_message_id,
            status=r.status,
            reply_code=r.reply_code,
            reason=str(r.reason),
            kind=str(r.kind),
            diagnostic=r.diagnostic,
            reporting_mta=r.reporting_mta,
        )
        for r in report.recipients
        if r.action == "failed" and r.recipient
    ]
