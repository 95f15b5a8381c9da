"""ARF (RFC 5965) feedback reports, and the non-standard complaint formats around them.

Microsoft's JMRP and Amazon SES forward the complained-about message itself; Apple Mail's
one-click unsubscribe comes from the subscriber's own address with `X-Apple-Unsubscribe: true`.
"""

from __future__ import annotations

import re

from mailfold.bounces.message import ADDR_RE, WS, Bounce, Entry, header
from mailfold.bounces.readers.base import Reader

__all__ = ["ArfReader"]

_APPLE_UNSUBSCRIBE = "x-apple-unsubscribe"
_JMRP_HEADER = "x-hmxmroriginalrecipient"
_COMPLAINT_SUBJECT = re.compile(r"complaint about message from", re.IGNORECASE)
_FEEDBACK_FIELD = re.compile(
    r"^(feedback-type|original-rcpt-to|removal-recipient|reporting-mta)\s*:\s*(.*)$",
    re.IGNORECASE | re.MULTILINE,
)


class ArfReader(Reader):
    """Feedback reports: one complaint per reported recipient."""

    name = "arf"

    def detect(self, bounce: Bounce) -> bool:
        return _feedback_fields(bounce) is not None

    def read(self, bounce: Bounce) -> list[Entry]:
        feedback = _feedback_fields(bounce)
        if feedback is None:
            return []
        feedback_type, rcpts, mta = feedback
        source = "Original-Rcpt-To field" if rcpts else "returned message's To:"
        original = bounce.original
        if not rcpts and original is not None:
            # As sisimai does: the reported recipient is the To: of the enclosed message.
            for name in ("to", "delivered-to", "x-original-to"):
                a = ADDR_RE.search(header(original, name))
                if a:
                    rcpts.append(a.group(0).lower())
                    break
        diagnostic = WS.sub(" ", bounce.text).strip()[:1000]
        return [
            Entry(
                recipient=r,
                action="complained",
                diagnostic=diagnostic,
                reporting_mta=mta,
                feedback_type=feedback_type,
                source=source,
            )
            for r in rcpts or [""]
        ]


def _feedback_fields(bounce: Bounce) -> tuple[str, list[str], str] | None:
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
                    a = ADDR_RE.search(value)
                    if a and a.group(0).lower() not in rcpts:
                        rcpts.append(a.group(0).lower())
        return feedback_type or "abuse", rcpts, mta
    if header(msg, _APPLE_UNSUBSCRIBE).lower() == "true":
        # Apple Mail's one-click unsubscribe, sent from the subscriber's own address.
        a = ADDR_RE.search(header(msg, "from"))
        return "opt-out", [a.group(0).lower()] if a else [], ""
    if original is None:
        return None
    jmrp = header(original, _JMRP_HEADER)
    complaint = bool(_COMPLAINT_SUBJECT.search(header(msg, "subject")))
    if jmrp or (complaint and msg.get_content_type() == "multipart/mixed"):
        # Microsoft's JMRP and Amazon SES forward complaints as the message itself.
        a = ADDR_RE.search(jmrp)
        return "abuse", [a.group(0).lower()] if a else [], ""
    return None
