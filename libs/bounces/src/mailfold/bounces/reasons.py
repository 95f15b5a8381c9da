"""The reason vocabulary: why a message was not delivered, and whether the address is bad."""

from __future__ import annotations

import enum
from typing import Final, Literal

__all__ = ["HARD_REASONS", "REASONS", "BounceKind", "Reason", "pseudo_status"]

BounceKind = Literal["hard", "soft", "undetermined"]


class Reason(enum.StrEnum):
    """One reason class per failed recipient.

    The vocabulary follows the reason classes of sisimai (https://libsisimai.org, BSD 2-clause),
    so that results can be compared with the reference parser sample by sample. Each member
    carries the detail of sisimai's stand-in status code ("5.0.9NN") for a failure whose message
    gives no status code.
    """

    AUTHFAILURE = "authfailure"
    BADREPUTATION = "badreputation"
    BLOCKED = "blocked"
    CONTENTERROR = "contenterror"
    DELIVERED = "delivered"
    EXCEEDLIMIT = "exceedlimit"
    EXPIRED = "expired"
    FEEDBACK = "feedback"
    FILTERED = "filtered"
    HASMOVED = "hasmoved"
    HOSTUNKNOWN = "hostunknown"
    MAILBOXFULL = "mailboxfull"
    MAILERERROR = "mailererror"
    MESGTOOBIG = "mesgtoobig"
    NETWORKERROR = "networkerror"
    NORELAYING = "norelaying"
    NOTACCEPT = "notaccept"
    NOTCOMPLIANTRFC = "notcompliantrfc"
    ONHOLD = "onhold"
    POLICYVIOLATION = "policyviolation"
    REJECTED = "rejected"
    REQUIREPTR = "requireptr"
    SECURITYERROR = "securityerror"
    SPAMDETECTED = "spamdetected"
    SPEEDING = "speeding"
    SUSPEND = "suspend"
    SYNTAXERROR = "syntaxerror"
    SYSTEMERROR = "systemerror"
    SYSTEMFULL = "systemfull"
    TOOMANYCONN = "toomanyconn"
    UNDEFINED = "undefined"
    USERUNKNOWN = "userunknown"
    VACATION = "vacation"
    VIRUSDETECTED = "virusdetected"


REASONS: Final[frozenset[str]] = frozenset(r.value for r in Reason)

# Reasons saying the address itself is bad: further mail to it is pointless.
HARD_REASONS: Final[frozenset[str]] = frozenset(
    {Reason.USERUNKNOWN, Reason.HOSTUNKNOWN, Reason.HASMOVED, Reason.NOTACCEPT}
)

# Of the hard reasons, the one a server may also give temporarily (a 4xx "no mail host right now").
HARD_UNLESS_TEMPORARY: Final[frozenset[str]] = frozenset({Reason.NOTACCEPT})

# sisimai's stand-in code detail per reason, for failures whose message carries no status code.
PSEUDO_CODES: Final[dict[str, str]] = {
    Reason.AUTHFAILURE: "926",
    Reason.BADREPUTATION: "975",
    Reason.BLOCKED: "971",
    Reason.CONTENTERROR: "960",
    Reason.EXCEEDLIMIT: "923",
    Reason.EXPIRED: "947",
    Reason.FILTERED: "910",
    Reason.HASMOVED: "916",
    Reason.HOSTUNKNOWN: "912",
    Reason.MAILBOXFULL: "922",
    Reason.MAILERERROR: "939",
    Reason.MESGTOOBIG: "934",
    Reason.NETWORKERROR: "944",
    Reason.NORELAYING: "909",
    Reason.NOTACCEPT: "932",
    Reason.NOTCOMPLIANTRFC: "974",
    Reason.ONHOLD: "901",
    Reason.POLICYVIOLATION: "972",
    Reason.REJECTED: "918",
    Reason.REQUIREPTR: "973",
    Reason.SECURITYERROR: "970",
    Reason.SPAMDETECTED: "980",
    Reason.SPEEDING: "946",
    Reason.SUSPEND: "921",
    Reason.SYSTEMERROR: "930",
    Reason.SYSTEMFULL: "931",
    Reason.SYNTAXERROR: "902",
    Reason.TOOMANYCONN: "945",
    Reason.USERUNKNOWN: "911",
    Reason.UNDEFINED: "900",
    Reason.VIRUSDETECTED: "981",
}
# A temporary failure can't say the address is gone for good: no 4.0.9xx code for these.
_NO_TEMPORARY_PSEUDO: Final = frozenset({Reason.HASMOVED, Reason.HOSTUNKNOWN, Reason.USERUNKNOWN})


def pseudo_status(reason: str, *, temporary: bool) -> str:
    """sisimai's stand-in code ("5.0.911") for a failure whose message carries no status code.

    The detail 9NN names the reason; the class digit says whether it was temporary.
    """
    detail = PSEUDO_CODES.get(reason)
    if detail is None:
        return ""
    if temporary and reason not in _NO_TEMPORARY_PSEUDO:
        return f"4.0.{detail}"
    return f"5.0.{detail}"
