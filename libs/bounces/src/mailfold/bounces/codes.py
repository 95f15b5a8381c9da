"""Code tables: what RFC 3463 enhanced status codes and SMTP reply codes say on their own."""

from __future__ import annotations

from typing import Final

__all__ = ["KNOWN_REPLIES", "REPLY_ORDER", "REPLY_REASONS", "STATUS_REASONS", "STATUS_WEAK"]

# ---------------------------------------------------------------------------------------------
# Enhanced status codes (RFC 3463 and the IANA registry) to reasons. Keys without a class digit
# ("1.1") hold for 4.x.x and 5.x.x alike; a full key ("5.1.0") is more specific and wins.
# ---------------------------------------------------------------------------------------------

STATUS_REASONS: Final[dict[str, str]] = {
    "1.0": "userunknown",
    "1.1": "userunknown",  # bad destination mailbox address
    "1.2": "hostunknown",  # bad destination system address
    "1.3": "userunknown",  # bad destination mailbox address syntax
    "1.4": "filtered",  # destination mailbox address ambiguous
    "1.6": "hasmoved",  # mailbox has moved, no forwarding address
    "1.7": "rejected",  # bad sender's mailbox address syntax
    "1.8": "rejected",  # bad sender's system address
    "1.9": "systemerror",  # relayed to a non-compliant mailer
    "1.10": "notaccept",  # recipient address has null MX (RFC 7505)
    "2.0": "filtered",
    "2.1": "filtered",  # mailbox disabled, not accepting messages
    "2.2": "mailboxfull",
    "2.3": "exceedlimit",  # message length exceeds administrative limit
    "2.4": "filtered",  # mailing list expansion problem
    "3.0": "systemerror",
    "3.1": "systemfull",
    "3.2": "notaccept",  # system not accepting network messages
    "3.3": "systemerror",
    "3.4": "mesgtoobig",
    "3.5": "systemerror",
    "4.0": "networkerror",
    "4.1": "expired",  # no answer from host
    "4.2": "networkerror",  # bad connection
    "4.3": "systemerror",  # directory server failure
    "4.4": "hostunknown",  # unable to route
    "4.5": "systemfull",  # mail system congestion
    "4.6": "networkerror",  # routing loop detected
    "4.7": "expired",  # delivery time expired
    "4.8": "networkerror",
    "5.2": "syntaxerror",
    "5.3": "toomanyconn",  # too many recipients
    "5.4": "systemerror",
    "5.5": "systemerror",
    "5.6": "syntaxerror",
    "6.0": "contenterror",
    "6.1": "contenterror",
    "6.2": "contenterror",
    "6.3": "contenterror",
    "6.5": "contenterror",
    "6.6": "contenterror",
    "6.7": "contenterror",
    "6.8": "contenterror",
    "6.9": "contenterror",
    "7.0": "securityerror",
    "7.1": "securityerror",  # delivery not authorised, message refused
    "7.2": "securityerror",
    "7.3": "securityerror",
    "7.4": "securityerror",
    "7.5": "securityerror",
    "7.6": "securityerror",
    "7.7": "securityerror",
    "7.8": "securityerror",
    "7.9": "securityerror",
    "7.10": "securityerror",
    "7.11": "securityerror",
    "7.12": "securityerror",
    "7.13": "suspend",  # user account disabled
    "7.14": "securityerror",
    "7.15": "securityerror",
    "7.16": "mesgtoobig",
    "7.17": "hasmoved",  # mailbox owner has changed
    "7.18": "hasmoved",  # domain owner has changed
    "7.19": "securityerror",
    "7.20": "authfailure",  # no passing DKIM signature
    "7.21": "authfailure",
    "7.22": "authfailure",
    "7.23": "authfailure",  # SPF validation failed
    "7.24": "authfailure",
    "7.25": "requireptr",  # reverse DNS validation failed
    "7.26": "authfailure",  # multiple authentication checks failed
    "7.27": "notaccept",  # sender address has null MX
    "7.28": "spamdetected",  # mail flood of similar abusive messages
    "7.29": "authfailure",  # ARC validation failed
    # Class-specific readings: the temporary form of these codes means something else.
    "4.2.1": "blocked",
    "4.4.4": "networkerror",
    "4.7.1": "blocked",
    "4.7.2": "blocked",
    "4.5.3": "systemerror",
    "4.5.5": "systemerror",
    "5.4.1": "userunknown",  # Exchange Online: recipient address rejected, access denied
    "4.3.0": "",
    "4.4.0": "",
    "4.5.0": "",
    "4.7.0": "",
    "5.4.2": "",
    "5.4.5": "",
    "5.4.7": "",
    "5.4.8": "",
    "5.5.0": "",
    "5.5.1": "",
    "5.5.2": "syntaxerror",
}

# Reasons a status code alone may be wrong about: when the text or a later check says something
# more specific, that wins (sisimai's "retry" set).
STATUS_WEAK: Final = frozenset(
    {
        "undefined",
        "onhold",
        "systemerror",
        "securityerror",
        "expired",
        "networkerror",
        "hostunknown",
        "userunknown",
    }
)

# SMTP reply codes (RFC 5321, 4954, 5248, 7504) which on their own say why.
REPLY_REASONS: Final[dict[str, str]] = {
    "401": "syntaxerror",
    "402": "syntaxerror",
    "403": "syntaxerror",
    "404": "syntaxerror",
    "405": "syntaxerror",
    "406": "syntaxerror",
    "407": "syntaxerror",
    "501": "syntaxerror",
    "502": "syntaxerror",
    "503": "syntaxerror",
    "504": "syntaxerror",
    "505": "syntaxerror",
    "506": "syntaxerror",
    "507": "syntaxerror",
    "521": "notaccept",  # host does not accept mail (RFC 7504)
    "556": "notaccept",  # domain does not accept mail (RFC 7504)
    "525": "suspend",  # user account disabled (RFC 5248)
    "523": "securityerror",
    "530": "securityerror",
    "534": "securityerror",
    "535": "securityerror",
    "538": "securityerror",
}


# SMTP reply codes in the order they are looked for in a text (RFC 5321, 4954, 5248, 7504):
# the common failure codes first, so "550 ... 503 bad sequence" yields 550.
REPLY_ORDER: Final[dict[str, tuple[str, ...]]] = {
    "5": (
        "550",
        "552",
        "553",
        "551",
        "521",
        "525",
        "523",
        "524",
        "530",
        "533",
        "534",
        "535",
        "538",
        "555",
        "556",
        "554",
        "500",
        "501",
        "502",
        "503",
        "504",
    ),
    "4": ("421", "450", "451", "452", "422", "430", "432", "453", "454", "455", "458", "459"),
    "2": ("211", "214", "220", "221", "235", "250", "251", "252", "253", "334", "354"),
}
REPLY_ANY: Final = REPLY_ORDER["5"] + REPLY_ORDER["4"] + REPLY_ORDER["2"]
KNOWN_REPLIES: Final = frozenset(REPLY_ANY)
