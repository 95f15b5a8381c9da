"""The SMTP replies the ingest server gives, with their RFC 3463 enhanced status codes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class Reply:
    """One SMTP reply: `<code> <enhanced status> <text>`."""

    code: int
    status: str
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.status} {self.text}"

    @property
    def ok(self) -> bool:
        """True for a 2xx reply."""
        return 200 <= self.code < 300


RECIPIENT_OK: Final = Reply(250, "2.1.5", "Recipient OK")
ACCEPTED: Final = Reply(250, "2.0.0", "Message accepted")
NO_SUCH_MAILBOX: Final = Reply(550, "5.1.1", "No such mailbox here")
TOO_MANY_RECIPIENTS: Final = Reply(452, "4.5.3", "Too many recipients; send the rest later")
ONE_DESTINATION: Final = Reply(
    452, "4.5.3", "One destination per message; send again for this recipient"
)
SENDER_BLACKLISTED: Final = Reply(550, "5.7.1", "Mail from this sender's domain is refused")
SENDER_NOT_APPROVED: Final = Reply(550, "5.7.1", "Sender is not approved for this dropbox")
TRY_AGAIN_LATER: Final = Reply(451, "4.3.0", "Temporary failure; try again later")
TOO_BIG: Final = Reply(552, "5.3.4", "Message too big")
LINE_TOO_LONG: Final = Reply(500, "5.5.2", "Line too long")
