"""The classifier: ordered rule rows from status, reply code, command and text to a reason.

A failure is described by `Facts` (its status code, reply code, normalised diagnostic text and
the SMTP command it answered). `classify` tries, in order:

1. VENDOR_CODES: identifiers that name the failure exactly (Exchange NDR codes, ...);
2. RULES: one row per reason. A row matches on its own status codes (unless the text vetoes the
   code's reading) or on its phrase table, within the row's gates (the SMTP stages at which the
   wording is evidence, the status readings that allow it);
3. the status code's reading in STATUS_REASONS, unless it is a weak one;
4. FALLBACK_RULES: wording about failures that are not about the address;
5. the weak status readings, then the class of the code (X.6 content, X.7 security);
6. REPLY_REASONS: reply codes that say why on their own;
7. a delay with nothing else is "expired", a refusal at HELO "blocked", text matching no row
   "onhold", and nothing at all "undefined".

Adding a reason is adding a row (and its phrase table); changing a precedence is moving a row or
changing its fields. Every decision names the step and row that made it, for `--explain`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from mailfold.bounces.codes import KNOWN_REPLIES, REPLY_REASONS, STATUS_REASONS, STATUS_WEAK
from mailfold.bounces.extract import (
    STATUS_SHAPE,
    find_command,
    find_reply_code,
    find_status,
    is_temporary,
    normalise,
)
from mailfold.bounces.phrases import PHRASES, REJECTED_NOT, VENDOR_CODES
from mailfold.bounces.reasons import (
    HARD_REASONS,
    HARD_UNLESS_TEMPORARY,
    BounceKind,
    Reason,
)

__all__ = [
    "FALLBACK_RULES",
    "RULES",
    "BounceClassification",
    "Facts",
    "Rule",
    "classify",
    "decide",
    "kind_of",
]

R = Reason

# SMTP commands after which the message content has not been seen yet: a rejection there cannot
# be about spam, viruses or the recipient's content filter.
BEFORE_DATA: Final = frozenset({"CONN", "EHLO", "HELO", "MAIL", "RCPT"})
# Status readings too vague to contradict a sender-rejection wording.
_VAGUE: Final = frozenset({"", R.ONHOLD, R.UNDEFINED, R.SECURITYERROR, R.SYSTEMERROR})
_ANY: Final[frozenset[str]] = frozenset()


@dataclass(frozen=True, slots=True)
class Facts:
    """What is known about one failure, normalised."""

    status: str  # "5.1.1" or ""
    reply: str  # "550" or ""
    text: str  # lower-case, whitespace-collapsed diagnostic
    command: str  # "RCPT", "DATA", ... or ""
    mailer: bool  # the local delivery program failed (Diagnostic-Code: x-unix)
    delayed: bool  # the report is a delay notice

    @property
    def content_stage(self) -> bool:
        """The failure came after the content was sent (or at a stage nobody recorded)."""
        return self.command not in BEFORE_DATA

    @property
    def by_status(self) -> str:
        """What the status code says on its own ("" when it says nothing)."""
        return status_reason(self.status)


@dataclass(frozen=True, slots=True)
class Rule:
    """One row of the first pass: a reason and when its evidence counts.

    `codes` are status codes (with or without the class digit) that prove the reason on their
    own, unless `code_vetoes` says otherwise: the code's reading gives way when the text says one
    of these reasons, or (`narrow_vetoes`) when it is one code and the text says one reason. `code_needs` asks the text to agree
    before a code counts. `skip_codes` never prove this reason, whatever the text says.

    The phrase table counts when the stage gates allow: `content_only` rows need the content to
    have been sent; `text_commands` (when not empty) name the commands after which the wording
    counts, `text_status` the status readings with which it counts at any stage, and
    `text_not_status` the readings that cancel it. `content_aliases` are reasons whose wording,
    said to the content (after DATA), means this reason.
    """

    reason: Reason
    codes: frozenset[str] = _ANY
    code_vetoes: tuple[Reason, ...] = ()
    narrow_vetoes: tuple[tuple[str, Reason], ...] = ()
    code_needs: tuple[Reason, ...] = ()
    skip_codes: frozenset[str] = _ANY
    content_only: bool = False
    text_commands: frozenset[str] = _ANY
    text_status: frozenset[str] = _ANY
    text_not_status: frozenset[str] = _ANY
    content_aliases: tuple[Reason, ...] = ()

    def code_proves(self, facts: Facts) -> bool:
        """The status code alone proves this reason, and the text does not contradict it."""
        status = facts.status
        if not status or not (status[2:] in self.codes or status in self.codes):
            return False
        if status[2:] in self.skip_codes:
            return False
        if self.code_needs and not any(says(r, facts.text) for r in self.code_needs):
            return False
        if any(status[2:] == code and says(r, facts.text) for code, r in self.narrow_vetoes):
            return False
        return not any(says(r, facts.text) for r in self.code_vetoes)

    def text_proves(self, facts: Facts) -> str | None:
        """The words that prove this reason at the stage the failure happened, or None.

        The gates are checked before the phrase table: most rows are ruled out without a search.
        """
        if facts.status[2:] in self.skip_codes:
            return None
        if not self._gated(facts):
            found = wording(self.reason, facts.text)
            if found is not None:
                return found
        elif not (self.content_aliases and facts.content_stage):
            return None
        elif wording(self.reason, facts.text) is not None:
            return None  # its own wording, ruled out by the gates: no alias either
        if not facts.content_stage:
            return None
        for alias in self.content_aliases:
            if (said := wording(alias, facts.text)) is not None:
                return f"{said} (said to the content)"
        return None

    def _gated(self, facts: Facts) -> bool:
        """The row's stage gates rule its wording out for this failure."""
        if self.content_only and not facts.content_stage:
            return True
        by_status = facts.by_status
        if by_status in self.text_not_status and facts.command != "MAIL":
            return True
        if not self.text_commands and not self.text_status:
            return False
        return not (facts.command in self.text_commands or by_status in self.text_status)


def wording(reason: str, text: str) -> str | None:
    """The words of `reason`'s phrase table in the text (a sender rejection never names the
    recipient), or None."""
    if not text:
        return None
    m = PHRASES[reason].search(text)
    if m is None or (reason == R.REJECTED and REJECTED_NOT.search(text) is not None):
        return None
    return m.group(0)[:80]


def says(reason: str, text: str) -> bool:
    """The text uses the wording of `reason`."""
    return wording(reason, text) is not None


def status_reason(status: str) -> str:
    """The reason a status code gives on its own ("" if none)."""
    if not status or not STATUS_SHAPE.match(status):
        return ""
    if status in STATUS_REASONS:
        return STATUS_REASONS[status]
    return STATUS_REASONS.get(status[2:], "")


def _codes(*codes: str) -> frozenset[str]:
    return frozenset(codes)


# The rows, in order: e.g. "mailbox full" text beats a 5.1.1 code, but a 5.2.2 code beats "user
# unknown" text.
RULES: Final[tuple[Rule, ...]] = (
    Rule(R.MAILBOXFULL, codes=_codes("2.2")),
    # X.2.3 is the per-mailbox limit: exceedlimit, whatever the wording.
    Rule(R.MESGTOOBIG, codes=_codes("3.4", "7.16"), skip_codes=_codes("2.3")),
    Rule(R.EXCEEDLIMIT, codes=_codes("2.3")),
    Rule(R.SUSPEND),
    Rule(R.HASMOVED),
    Rule(R.NORELAYING),
    Rule(R.AUTHFAILURE, codes=_codes("7.20", "7.21", "7.22", "7.23", "7.24", "7.26", "7.29")),
    # A X.1.1 code next to text about relaying, blocking, a full or moved mailbox or a null MX is
    # a generic code: the text names the real reason. "No such user" wording counts at RCPT, or
    # where the status code already says so.
    Rule(
        R.USERUNKNOWN,
        codes=_codes("1.0", "1.1", "1.3", "5.4.1"),
        code_vetoes=(R.NORELAYING, R.BLOCKED, R.MAILBOXFULL, R.HASMOVED, R.NOTACCEPT, R.REJECTED),
        text_commands=_codes("RCPT"),
        text_status=_codes(R.USERUNKNOWN),
    ),
    # "No such user" said to the message itself (after DATA, or at a stage nobody recorded) is
    # the recipient's filter talking, not a directory lookup: sisimai's reading.
    Rule(
        R.FILTERED,
        codes=_codes("1.4", "2.0", "2.1", "2.4"),
        code_needs=(R.USERUNKNOWN, R.FILTERED),
        content_only=True,
        content_aliases=(R.USERUNKNOWN,),
    ),
    Rule(R.REQUIREPTR, codes=_codes("7.25")),
    Rule(R.NOTCOMPLIANTRFC),
    Rule(R.BADREPUTATION),
    Rule(
        R.CONTENTERROR,
        codes=_codes("6.0", "6.1", "6.2", "6.3", "6.5", "6.6", "6.7", "6.8", "6.9"),
        code_vetoes=(R.SPAMDETECTED,),
    ),
    # Sender-rejection wording counts at MAIL FROM, after DATA (unless the code says the address
    # is unknown), or when the code is vague.
    Rule(
        R.REJECTED,
        codes=_codes("1.7", "1.8"),
        text_commands=_codes("MAIL", "DATA"),
        text_status=_VAGUE,
        text_not_status=_codes(R.USERUNKNOWN),
    ),
    # X.4.4 only says "unable to route": a null MX or a DNS failure is more specific.
    Rule(
        R.HOSTUNKNOWN,
        codes=_codes("1.2", "5.4.4"),
        code_vetoes=(R.NETWORKERROR,),
        narrow_vetoes=(("4.4", R.NOTACCEPT),),
    ),
    Rule(R.NOTACCEPT, codes=_codes("1.10", "7.27")),
    Rule(R.SPAMDETECTED, codes=_codes("7.28"), content_only=True),
    Rule(R.SPEEDING),
    Rule(R.TOOMANYCONN, codes=_codes("5.3")),
    Rule(R.BLOCKED, codes=_codes("4.2.1", "4.7.1", "4.7.2")),
)

# Second pass, for text no row explained: failures that are not about the address. Spam
# wording still needs the content to have been sent (before DATA it is about the sending host);
# a virus can only have been found in the content, whatever stage the report names.
FALLBACK_RULES: Final[tuple[Rule, ...]] = tuple(
    Rule(r, content_only=r == R.SPAMDETECTED)
    for r in (
        R.MAILBOXFULL,
        R.AUTHFAILURE,
        R.BADREPUTATION,
        R.SPEEDING,
        R.SPAMDETECTED,
        R.VIRUSDETECTED,
        R.POLICYVIOLATION,
        R.NORELAYING,
        R.SYSTEMERROR,
        R.NETWORKERROR,
        R.SUSPEND,
        R.CONTENTERROR,
        R.SYSTEMFULL,
        R.NOTACCEPT,
        R.EXPIRED,
        R.SECURITYERROR,
        R.MAILERERROR,
        R.SYNTAXERROR,
    )
)


@dataclass(frozen=True, slots=True)
class BounceClassification:
    """A reason, its kind and the rule that decided it (`step:detail`)."""

    reason: str
    kind: BounceKind
    rule: str


def _first_pass(facts: Facts) -> tuple[str, str]:
    text = facts.text
    for pattern, vendor_reason in VENDOR_CODES:
        code = pattern.search(text) if text else None
        if code is not None:
            return vendor_reason, f'vendor-code:{vendor_reason} "{code.group(0)[:80]}"'
    for rule in RULES:
        if rule.code_proves(facts):
            return rule.reason, f"status-code:{rule.reason}({facts.status})"
        if text and (found := rule.text_proves(facts)) is not None:
            return rule.reason, f'phrase:{rule.reason} "{found}"'
    return "", ""


def _second_pass(facts: Facts) -> tuple[str, str]:
    by_status = facts.by_status
    if by_status and by_status not in STATUS_WEAK and not facts.mailer:
        return by_status, f"status-code:{facts.status}"
    for rule in FALLBACK_RULES:
        if rule.content_only and not facts.content_stage:
            continue
        if (found := wording(rule.reason, facts.text)) is not None:
            return rule.reason, f'fallback-phrase:{rule.reason} "{found}"'
    if by_status:
        return by_status, f"weak-status-code:{facts.status}"
    if facts.status[:3] in ("5.6", "4.6"):
        return R.CONTENTERROR, f"status-class:{facts.status[:3]}"
    if facts.status[:3] in ("5.7", "4.7"):
        return R.SECURITYERROR, f"status-class:{facts.status[:3]}"
    if facts.mailer:
        return R.MAILERERROR, "diagnostic-type:x-unix"
    by_reply = REPLY_REASONS.get(facts.reply, "")
    if by_reply:
        return by_reply, f"reply-code:{facts.reply}"
    if facts.delayed:
        return R.EXPIRED, "action:delayed"
    if facts.command in ("EHLO", "HELO"):
        # Refused at the greeting: the sending host itself is not welcome.
        return R.BLOCKED, f"command:{facts.command}"
    if (found := wording(R.VACATION, facts.text)) is not None:
        return R.VACATION, f'phrase:vacation "{found}"'
    return (R.ONHOLD, "no-rule-matched") if facts.text else (R.UNDEFINED, "nothing-to-go-on")


def _reason(facts: Facts) -> tuple[str, str]:
    if facts.status.startswith("2."):
        return R.DELIVERED, f"status-code:{facts.status}"
    if not facts.mailer:
        reason, rule = _first_pass(facts)
        if reason:
            return reason, rule
        if facts.reply == "525":
            return R.SUSPEND, "reply-code:525"
    return _second_pass(facts)


def decide(
    *,
    status: str | None,
    reply_code: str | None,
    diagnostic: str | None,
    command: str | None = None,
    diagnostic_type: str | None = None,
    action: str | None = None,
) -> BounceClassification:
    """Like `classify`, with the rule that decided."""
    code = (status or "").strip()
    if code and not STATUS_SHAPE.match(code):
        code = ""
    text = normalise(diagnostic)
    reply = (reply_code or "").strip()
    if reply not in KNOWN_REPLIES:
        reply = find_reply_code(text, code[:1])
    if not code:
        code = find_status(text, reply[:1])
    cmd = (command or "").strip().upper().split(" ", 1)[0] or find_command(diagnostic or "")
    mailer = (diagnostic_type or "").strip().lower().startswith("x-unix")
    delayed = (action or "").strip().lower() == "delayed"
    if not code and not reply and not text and not mailer:
        if delayed:
            return BounceClassification(R.EXPIRED, "soft", "action:delayed")
        return BounceClassification(R.UNDEFINED, "undetermined", "nothing-to-go-on")
    facts = Facts(status=code, reply=reply, text=text, command=cmd, mailer=mailer, delayed=delayed)
    reason, rule = _reason(facts)
    return BounceClassification(
        str(reason), kind_of(reason, " ".join(x for x in (code, reply, text) if x)), rule
    )


def classify(
    *,
    status: str | None,
    reply_code: str | None,
    diagnostic: str | None,
    command: str | None = None,
    diagnostic_type: str | None = None,
    action: str | None = None,
) -> tuple[str, BounceKind]:
    """Map an enhanced status code, an SMTP reply code and a diagnostic text to (reason, kind).

    `status` ("5.1.1"), `reply_code` ("550") and `diagnostic` (the server's words) may each be
    empty. The optional `command` is the SMTP command the failure answered ("RCPT", "DATA"); it
    is read from the diagnostic when not given. `diagnostic_type` is the DSN's Diagnostic-Code
    type ("smtp", "x-unix"); `action` the DSN action ("failed", "delayed"). The order of the
    rules is in this module's docstring.

    The kind is "hard" when the address itself is bad (the reasons in HARD_REASONS, a null MX
    only when the failure was not temporary), "soft" for any other failure, and "undetermined"
    only when there is nothing to go on.
    """
    d = decide(
        status=status,
        reply_code=reply_code,
        diagnostic=diagnostic,
        command=command,
        diagnostic_type=diagnostic_type,
        action=action,
    )
    return d.reason, d.kind


def kind_of(reason: str, evidence: str = "") -> BounceKind:
    """Hard or soft, for a reason and the status/reply/diagnostic text that led to it."""
    if reason not in HARD_REASONS:
        return "soft"
    if reason in HARD_UNLESS_TEMPORARY and evidence:
        code = find_status(evidence) or find_reply_code(evidence)
        if not code.startswith("5") and is_temporary(evidence):
            return "soft"
    return "hard"
