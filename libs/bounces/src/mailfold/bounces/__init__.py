"""mailfold's bounce intelligence: parse bounce and feedback reports, classify each failure.

`parse(raw)` reads a message with the reader for its format (RFC 3464, ARF, Amazon SES, and one
reader per non-standard family) and classifies every recipient with the ordered rule rows of
`classifier`. `classify(...)` is the classifier alone, for SMTP replies seen first hand.
"""

from __future__ import annotations

from mailfold.bounces.classifier import (
    FALLBACK_RULES,
    RULES,
    BounceClassification,
    Rule,
    classify,
    decide,
)
from mailfold.bounces.codes import REPLY_REASONS, STATUS_REASONS
from mailfold.bounces.extract import (
    find_command,
    find_reply_code,
    find_status,
    is_temporary,
    prefer_status,
)
from mailfold.bounces.parser import ParseFailed, parse, parse_strict
from mailfold.bounces.reasons import HARD_REASONS, REASONS, BounceKind, Reason, pseudo_status
from mailfold.bounces.report import ParsedRecipient, ParsedReport

__all__ = [
    "FALLBACK_RULES",
    "HARD_REASONS",
    "REASONS",
    "REPLY_REASONS",
    "RULES",
    "STATUS_REASONS",
    "BounceClassification",
    "BounceKind",
    "ParseFailed",
    "ParsedRecipient",
    "ParsedReport",
    "Reason",
    "Rule",
    "classify",
    "decide",
    "find_command",
    "find_reply_code",
    "find_status",
    "is_temporary",
    "parse",
    "parse_strict",
    "prefer_status",
    "pseudo_status",
]
