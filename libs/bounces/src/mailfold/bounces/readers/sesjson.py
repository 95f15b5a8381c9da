"""Amazon SES notifications (JSON, possibly inside an SNS envelope) delivered by email."""

from __future__ import annotations

import json
from typing import Any

from mailfold.bounces.message import Bounce, Entry
from mailfold.bounces.readers.base import Reader
from mailfold.bounces.reasons import Reason

__all__ = ["SesNotificationReader"]

# SES bounce subtypes which say more than a generic diagnostic would.
_SES_SUBTYPES = {
    "MailboxFull": Reason.MAILBOXFULL,
    "MessageTooLarge": Reason.MESGTOOBIG,
    "ContentRejected": Reason.CONTENTERROR,
    "AttachmentRejected": Reason.SECURITYERROR,
}


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _json_object(text: str) -> dict[str, Any] | None:
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        return None
    try:
        # Mail systems fold long lines: a line break inside a JSON string is taken as it is.
        value = json.loads(text[start : end + 1], strict=False)
    except ValueError:
        return None
    if isinstance(value, dict) and isinstance(value.get("Message"), str):
        # An SNS envelope: the SES notification is a JSON string inside it.
        try:
            value = json.loads(value["Message"], strict=False)
        except ValueError:
            return None
    return value if isinstance(value, dict) else None


class SesNotificationReader(Reader):
    """A bounce, complaint or delivery notification of Amazon SES, as JSON."""

    name = "amazonses"

    def detect(self, bounce: Bounce) -> bool:
        return "notificationType" in bounce.text and bool(self.read(bounce))

    def read(self, bounce: Bounce) -> list[Entry]:
        note = _json_object(bounce.text) if "notificationType" in bounce.text else None
        if note is None:
            return []
        kind = str(note.get("notificationType") or note.get("eventType") or "")
        mail = _dict(note.get("mail"))
        headers = _dict(mail.get("commonHeaders"))
        message_id = str(headers.get("messageId") or mail.get("messageId") or "").strip("<>")
        return_path = str(mail.get("source") or "").lower()
        entries: list[Entry] = []
        if kind == "Complaint" and isinstance(note.get("complaint"), dict):
            complaint = note["complaint"]
            feedback_type = str(complaint.get("complaintFeedbackType") or "abuse")
            for r in complaint.get("complainedRecipients") or []:
                address = str(r.get("emailAddress", "") if isinstance(r, dict) else r).lower()
                entries.append(
                    Entry(recipient=address, action="complained", feedback_type=feedback_type)
                )
        elif kind == "Bounce" and isinstance(note.get("bounce"), dict):
            data = note["bounce"]
            hint = _SES_SUBTYPES.get(str(data.get("bounceSubType") or ""), "")
            mta = str(data.get("reportingMTA") or "").partition(";")[2].strip()
            for r in data.get("bouncedRecipients") or []:
                if not isinstance(r, dict):
                    continue
                code = str(r.get("diagnosticCode") or "")
                dtype, sep, text = code.partition(";")
                entries.append(
                    Entry(
                        recipient=str(r.get("emailAddress") or "").lower(),
                        action=str(r.get("action") or "failed").lower(),
                        status=str(r.get("status") or ""),
                        diagnostic=text.strip() if sep and " " not in dtype.strip() else code,
                        reporting_mta=mta,
                        reason=hint,
                        reason_is_hint=True,
                    )
                )
        elif kind == "Delivery" and isinstance(note.get("delivery"), dict):
            data = note["delivery"]
            response = str(data.get("smtpResponse") or "")
            for address in data.get("recipients") or []:
                entries.append(
                    Entry(recipient=str(address).lower(), action="delivered", diagnostic=response)
                )
        for e in entries:
            e.source = "SES notification JSON"
            e.message_id = message_id
            e.return_path = return_path
        return entries
