"""Bounce classification: status code, reply code and diagnostic text to a reason and a kind."""

from __future__ import annotations

import re
from typing import Final, Literal

__all__ = [
    "FALLBACK_TEXT_RULES",
    "HARD_REASONS",
    "REASONS",
    "REPLY_REASONS",
    "STATUS_REASONS",
    "TEXT_RULES",
    "VENDOR_CODES",
    "BounceKind",
    "classify",
    "find_command",
    "find_reply_code",
    "find_status",
    "is_temporary",
    "kind_of",
    "prefer_status",
    "pseudo_status",
]

BounceKind = Literal["hard", "soft", "undetermined"]

# The vocabulary follows the reason classes of sisimai (https://libsisimai.org, BSD 2-clause), so
# that results can be compared with the reference parser sample by sample.
REASONS: frozenset[str] = frozenset(
    {
        "authfailure",
        "badreputation",
        "blocked",
        "contenterror",
        "delivered",
        "exceedlimit",
        "expired",
        "feedback",
        "filtered",
        "hasmoved",
        "hostunknown",
        "mailboxfull",
        "mailererror",
        "mesgtoobig",
        "networkerror",
        "norelaying",
        "notaccept",
        "notcompliantrfc",
        "onhold",
        "policyviolation",
        "rejected",
        "requireptr",
        "securityerror",
        "spamdetected",
        "speeding",
        "suspend",
        "syntaxerror",
        "systemerror",
        "systemfull",
        "toomanyconn",
        "undefined",
        "userunknown",
        "vacation",
        "virusdetected",
    }
)

# Reasons saying the address itself is bad: further mail to it is pointless.
HARD_REASONS: frozenset[str] = frozenset({"userunknown", "hostunknown", "hasmoved", "notaccept"})

# Of the hard reasons, the one a server may also give temporarily (a 4xx "no mail host right now").
_HARD_UNLESS_TEMPORARY: Final = frozenset({"notaccept"})


def _rx(*phrases: str) -> re.Pattern[str]:
    """One alternation over lower-case regex fragments, matched against normalised text.

    "a.*?b" in a fragment means "a, then b within a sentence or two": the gap is bounded so
    that matching stays linear in the length of the text.
    """
    return re.compile("|".join(f"(?:{p.replace('.*?', _GAP)})" for p in phrases))


_GAP: Final = ".{0,200}?"


# ---------------------------------------------------------------------------------------------
# Diagnostic text patterns, one per reason. Text is lower-cased and whitespace-collapsed before
# matching, so fragments are lower case and a single space stands for any run of whitespace.
# Most phrases are the error messages real MTAs and mailbox providers emit (collected by sisimai's
# reason classes); "a.*?b" means both parts appear in order.
# ---------------------------------------------------------------------------------------------

_MAILBOXFULL = _rx(
    r"452 insufficient disk space",
    r"account disabled temporarly for exceeding receiving limits",
    r"boite du destinataire pleine",
    r"exceeded storage allocation",
    r"full mailbox",
    r"mailbox exceeds allowed size",
    r"mailbox size limit exceeded",
    r"mailbox would exceed maximum allowed storage",
    r"mailfolder is full",
    r"no space left on device",
    r"not sufficient disk space",
    r"quota violation for",
    r"too much mail data",
    r"user has exceeded quota",
    r"user has too many messages on the server",
    r"user's space has been used up",
    r"account is .*?quota",
    r"disk.*?quota",
    r"enough .*?space",
    r"mailbox .*?exceeded.*? limit",
    r"mailbox .*?full",
    r"mailbox .*?quota",
    r"maildir .*?quota",
    r"over .*?quota",
    r"quota .*?exceeded",
    r"inbox is full",
    r"insufficient (?:disk )?storage",
)

_MESGTOOBIG = _rx(
    r"exceeded maximum inbound message size",
    r"exceeded the maximum incoming message size",
    r"line limit exceeded",
    r"max message size exceeded",
    r"message file too big",
    r"message length exceeds administrative limit",
    r"message size exceeds fixed limit",
    r"message size exceeds fixed maximum message size",
    r"message size exceeds maximum value",
    r"message size exceeds my databytes limit",
    r"message too big",
    r"message too large for this ",
    r"message is too large",
    r"size limit",
    r"taille limite du message atteinte",
)

_EXCEEDLIMIT = _rx(r"message header size exceeds limit", r"message too large")

_SUSPEND = _rx(
    r" is currently suspended",
    r" temporary locked",
    r"archived recipient",
    r"boite du destinataire archivee",
    r"email account that you tried to reach is disabled",
    r"has been suspended",
    r"inactive account",
    r"invalid/inactive user",
    r"is a deactivated mailbox",
    r"is unavailable: user is terminated",
    r"mailbox currently suspended",
    r"mailbox disabled",
    r"mailbox is frozen",
    r"mailbox unavailable or access denied",
    r"recipient rejected: temporarily inactive",
    r"recipient suspend the service",
    r"the email account that you tried to reach is inactive",
    r"this account has been disabled or discontinued",
    r"this account has been temporarily suspended",
    r"this address no longer accepts mail",
    r"this mailbox is disabled",
    r"user or domain is disabled",
    r"user suspended",
    r"account is locked",
    r"account (?:has been |is )?disabled",
    r"mailaddress is administrativ\w* disabled",
)

_HASMOVED = _rx(r" has been replaced by ")

_NORELAYING = _rx(
    r"as a relay",
    r"email address is not verified\.",
    r"insecure mail relay",
    r"is not permitted to relay through this server without authentication",
    r"mail server requires authentication when attempting to send to a non-local e-mail address",
    r"no relaying",
    r"not a gateway",
    r"not allowed to relay through this machine",
    r"not an open relay",
    r"not local host",
    r"relay access denied",
    r"relay denied",
    r"relay not permitted",
    r"relaying denied",
    r"relaying mail to ",
    r"specified domain is not allowed",
    r"that domain isn't in my list of allowed rcpthost",
    r"this system is not configured to relay mail",
    r"unable to relay ",
    r"we don't handle mail for",
)

_AUTHFAILURE = _rx(
    r"//spf\.pobox\.com",
    r"bad spf records for",
    r"dmarc policy",
    r"doesn't meet the required authentication level",
    r"please inspect your spf settings",
    r"sender policy framework \(spf\) fail",
    r"sender policy framework violation",
    r"spf \(sender policy framework\) domain authentication fail",
    r"spf check: fail",
    r"the 5322\.from address doesn't meet the authentication requirements",
    r" is not allowed to send mail\..*?_401",
    r"is not allowed to send from <.*? per it's spf record",
    r"dkim (?:signature )?(?:verification )?fail",
    r"unauthenticated email from .*? is not accepted due to domain's dmarc policy",
    r"spf (?:validation |check )?failed",
    r"(?:does not|doesn't) have authentication information",
    r"fails? to pass authentication checks",
)

_USERUNKNOWN = _rx(
    r"#5\.1\.1 bad address",
    r"550 address invalid",
    r"5\.1\.0 address rejected\.",
    r"address does not exist",
    r"address not present in directory",
    r"address unknown",
    r"can't accept user",
    r"does not exist\.",
    r"destination addresses were unknown",
    r"destination server rejected recipients",
    r"email address does not exist",
    r"email address could not be found",
    r"invalid address",
    r"invalid mailbox",
    r"invalid recipient",
    r"is not a known user",
    r"is not a valid mailbox",
    r"is not an active address at this host",
    r"mailbox does not exist",
    r"mailbox invalid",
    r"mailbox is inactive",
    r"mailbox is unavailable",
    r"mailbox not present",
    r"mailbox not found",
    r"mailbox unavaiable",
    r"nessun utente simile in questo indirizzo",
    r"no account by that name here",
    r"no existe dicha persona",
    r"no existe ese usuario ",
    r"no mail box available for this user",
    r"no mailbox by that name is currently available",
    r"no mailbox found",
    r"no such address here",
    r"no such mailbox",
    r"no such person at this address",
    r"no such recipient",
    r"no such user",
    r"no thank you rejected: account unavailable",
    r"no valid recipients, bye",
    r"not a valid recipient",
    r"not a valid user here",
    r"not a local address",
    r"not email addresses",
    r"recipient address rejected\. \(in reply to rcpt to command\)",
    r"recipient address rejected: access denied",
    r"recipient address rejected: invalid user",
    r"recipient address rejected: invalid-recipient",
    r"recipient address rejected: unknown user",
    r"recipient address rejected: userunknown",
    r"recipient does not exist",
    r"recipient is not accepted",
    r"recipient is not local",
    r"recipient not exist",
    r"recipient not found",
    r"recipient not ok",
    r"recipient refuses to accept your mail",
    r"recipient unknown",
    r"requested action not taken: mailbox unavailable",
    r"resolver\.adr\.recipient ?notfound",
    r"sorry, user unknown",
    r"sorry, badrcptto",
    r"sorry, no mailbox here by that name",
    r"sorry, your envelope recipient has been denied",
    r"that domain or user isn't in my list of allowed rcpthosts",
    r"the email account that you tried to reach does not exist",
    r"the following recipients was undeliverable",
    r"the user's email name is not found",
    r"there is no one at this address",
    r"this email address is wrong or no longer valid",
    r"this recipient is in my badrecipientto list",
    r"this recipient is not in my validrcptto list",
    r"this spectator does not exist",
    r"unknown mailbox",
    r"unknown recipient",
    r"unknown user",
    r"user does not exist",
    r"user missing home directory",
    r"user not active",
    r"user not exist",
    r"user not found",
    r"user not known",
    r"user unknown",
    r"utilisateur inconnu",
    r"vdeliver: invalid or unknown virtual user",
    r"weil die adresse nicht gefunden wurde oder keine e-mails empfangen kann",
    r"your envelope recipient is in my badrcptto list",
    r"<[^>]*> not found",
    r"<[^>]*>\.\.\. blocked by ",
    r"account .*? does not exist at the organization",
    r"bad.*?recipient",
    r"mailbox .*?does not exist",
    r"mailbox .*?unavailable or access denied",
    r"no .*? in name directory",
    r"non.?existent user",
    r"rcpt <.*? does not exist",
    r"recipient .*? was not found in",
    r"recipient address rejected: user .*? does not exist",
    r"recipient address rejected: user unknown in .*? table",
    r"this user doesn't have a .*? account",
    r"unknown e.?mail address",
    r"unknown local.?part",
    r"user .*? was not found",
    r"user .*? does not exist",
    r"user \(.*?\) unknown",
)

_FILTERED = _rx(
    r"account is protected by",
    r"bounced address",
    r"has restricted sms e-mail",
    r"is not accepting any mail",
    r"message filtered",
    r"message rejected due to user rules",
    r"not found recipient account",
    r"recipient id refuse to receive mail",
    r"recipient is only accepting mail from specific email addresses",
    r"refused due to recipient preferences",
    r"user refuses to receive this mail",
    r"user reject",
    r"you have been blocked by the recipient",
)

_REQUIREPTR = _rx(
    r"access denied\. ip name lookup failed",
    r"all mail servers must have a ptr record with a valid reverse dns entry",
    r"bad dns ptr resource record",
    r"cannot find your hostname",
    r"cannot resolve your address\.",
    r"fix reverse dns for ",
    r"ips with missing ptr records",
    r"no ptr record found\.",
    r"please get a custom reverse dns name from your isp for your host",
    r"ptr record setup",
    r"reverse dns failed",
    r"reverse dns required",
    r"sender ip reverse lookup rejected",
    r"the ip address sending this message does not have a ptr record",
    r"the corresponding forward dns entry does not point to the sending ip",
    r"this system will not accept messages from servers/devices with no reverse dns",
    r"unresolvable relay host name",
    r"we do not accept mail from hosts with dynamic ip or generic dns ptr-records",
    r"domain .*? mismatches client ip",
    r"dns lookup failure: .*? try again later",
    r"reverse dns lookup for host .*? failed permanently",
    r"server access .*? forbidden by invalid rdns record of your mail server",
    r"service permits .*? unverifyable sending ips",
    r"client host rejected: cannot find your reverse hostname",
    r"no reverse dns",
)

_NOTCOMPLIANTRFC = _rx(
    r"this message is not rfc 5322 compliant",
    r"support\.google\.com/mail/\?p=rfcmessagenoncompliant",
    r" multiple .*? header",
)

_BADREPUTATION = _rx(
    r"a poor email reputation score",
    r"has been temporarily rate limited due to ip reputation",
    r"ip/domain reputation problems",
    r"likely suspicious due to the very low reputation",
    r"none/bad reputation",
    r"temporarily deferred due to unexpected volume or user complaints",
    r"the sending mta's poor reputation",
)

_CONTENTERROR = _rx(
    r"duplicate header",
    r"header size exceeds maximum permitted",
    r"improper use of 8-bit data in message header",
    r"message header size, or recipient list, exceeds policy limit",
    r"message mime complexity exceeds the policy maximum",
    r"routing loop detected -- too many received: headers",
    r"this message contain invalid mime headers",
    r"this message contain improperly-formatted binary content",
    r"this message contain text that uses unnecessary base64 encoding",
    r'too many "received" headers',
)

# Phrases that name the recipient, not the sender, and so must not count as "rejected".
_REJECTED_NOT = _rx(
    r"5\.1\.0 address rejected", r"recipient address rejected", r"sender ip address rejected"
)
_REJECTED = _rx(
    r"access denied \(in reply to mail from command\)",
    r"access denied \(sender blacklisted\)",
    r"address rejected",
    r"administrative prohibition",
    r"batv failed to verify",
    r"batv validation failure",
    r"backscatter protection detected an invalid or expired email address",
    r"because the sender isn't on the recipient's list of senders to accept mail from",
    r"bogus mail from",
    r"can't determine purported responsible address",
    r"connections not accepted from servers without a valid sender domain",
    r"denied \[bouncedeny\]",
    r"denied by secumail valid-address-filter",
    r"delivery not authorized, message refused",
    r"does not exist e2110",
    r"domain of sender address ",
    r"email address is on senderfilterconfig list",
    r"emetteur invalide",
    r"empty envelope senders not allowed",
    r"envelope blocked - ",
    r"error: no third-party dsns",
    r"from: domain is invalid\. please provide a valid from:",
    r"fully qualified email address required",
    r"invalid domain, see <url:",
    r"invalid sender",
    r"is not a registered gateway user",
    r"mail from not owned by user",
    r"message rejected: email address is not verified",
    r"mx records for ",
    r"null sender is not allowed",
    r"recipient addresses rejected : access denied",
    r"recipient not accepted\. \(batv: no tag",
    r"returned mail not accepted here",
    r"rfc 1035 violation: recursive cname records for",
    r"rule imposed mailbox access for",
    r"sending this from a different address or alias using the ",
    r"sender address has been blacklisted",
    r"sender email address rejected",
    r"sender is in my black list",
    r"sender is spammer",
    r"sender not pre-approved",
    r"sender rejected",
    r"sender domain is empty",
    r"sender verify failed",
    r"sender was rejected",
    r"spam reporting address",
    r"syntax error: empty email address",
    r"the message has been rejected by batv defense",
    r"this server does not accept mail from",
    r"transaction failed unsigned dsn for",
    r"unroutable sender address",
    r"you are not allowed to post to this mailing list",
    r"you are sending to/from an address that has been blacklisted",
    r"your access to submit messages to this e-mail system has been rejected",
    r"your email address has been blacklisted",
)

_HOSTUNKNOWN = _rx(
    r"domain does not exist",
    r"domain is not reachable",
    r"domain must exist",
    r"host or domain name not found",
    r"host unknown",
    r"host unreachable",
    r"mail domain mentioned in email address is unknown",
    r"name or service not known",
    r"no such domain",
    r"recipient address rejected: unknown domain name",
    r"recipient domain must exist",
    r"the account or domain may not exist",
    r"unknown host",
    r"unroutable address",
    r"unrouteable address",
    r"553 .*? does not exist",
    r"all host address lookups failed permanently",
    r"all relevant mx records point to non-existent hosts",
    r"couldn't find any host named",
    r"couldn't find any host by that name",
    r"domain not found",
)

_SPAMDETECTED = _rx(
    r" - spam",
    r"//www\.spamhaus\.org/help/help_spam_16\.htm",
    r"//dsbl\.org/help/help_spam_16\.htm",
    r"//mail\.163\.com/help/help_spam_16\.htm",
    r"554 5\.7\.0 reject, id=",
    r"appears to be unsolicited",
    r"blacklisted url in message",
    r"block for spam",
    r"blocked by policy: no spam please",
    r"blocked by spamassassin",
    r"blocked for abuse\. see http://att\.net/blocks",
    r"cannot be forwarded because it was detected as spam",
    r"considered unsolicited bulk e-mail \(spam\) by our mail filters",
    r"content filter rejection",
    r"cyberoam anti spam engine has identified this email as a bulk email",
    r"denied due to spam list",
    r"high probability of spam",
    r"is classified as spam and is rejected",
    r"listed in work\.drbl\.imedia\.ru",
    r"the mail server detected your message as spam and has prevented delivery\.",
    r"mail appears to be unsolicited",
    r"mail content denied",
    r"may consider spam",
    r"message considered as spam or virus",
    r"message contains spam or virus",
    r"message content rejected",
    r"message detected as spam",
    r"message filtered",
    r"message looks like spam",
    r"message is being rejected as it seems to be a spam",
    r"message refused by mailmarshal spamprofiler",
    r"message refused by trustwave seg spamprofiler",
    r"message rejected as spam",
    r"message rejected because of unacceptable content",
    r"message rejected due to suspected spam content",
    r"message rejected for policy reasons",
    r"message was rejected for possible spam/virus content",
    r"our email server thinks this email is spam",
    r"our system has detected that this message is ",
    r"probable spam",
    r"reject bulk\.advertising",
    r"rejected: spamassassin score ",
    r"rejected - bulk email",
    r"rejecting banned content",
    r"rejecting mail content",
    r"related to content with spam-like characteristics",
    r"sender domain listed at ",
    r"sending address not accepted due to spam filter",
    r"spam blocked",
    r"spam check",
    r"spam content matched",
    r"spam detected",
    r"spam email",
    r"spam message rejected\.",
    r"spam not accepted",
    r"spam refused",
    r"spam rejection",
    r"spam score ",
    r"spambouncer identified spam",
    r"spamming not allowed",
    r"too many spam complaints",
    r"too much spam\.",
    r"the email message was detected as spam",
    r"the message has been rejected by spam filtering engine",
    r"the message was rejected due to classification as bulk mail",
    r"the content of this message looked like spam",
    r"this message appears to be spam",
    r"this message has been identified as spam",
    r"this message has been scored as spam with a probability",
    r"this message was classified as spam",
    r"this message was rejected by recurrent pattern detection system",
    r"transaction failed spam message not queued",
    r"we dont accept spam",
    r"your email appears similar to spam we have received before",
    r"your email breaches local uribl policy",
    r"your email had spam-like ",
    r"your email is considered spam",
    r"your email is probably spam",
    r"your email was detected as spam",
    r"your message as spam and has prevented delivery",
    r"your message has been temporarily blocked by our filter",
    r"your message has been rejected because it appears to be spam",
    r"your message has triggered a spam block",
    r"your message may contain the spam contents",
    r"your message failed several antispam checks",
    r"greylisted.*? please try again in",
    r"mail score \(.*? over ",
    r"mail rejete\. mail rejected\. .*?506",
    r"our filters rate at and above .*? percent probability of being spam",
    r"rejected by .*? \(spam\)",
    r"rejected due to spam .*?(?:classification|content)",
    r"rule imposed as .*? is blacklisted on",
    r"spam .*? exceeded",
    r"this message scored .*? spam points",
)

_VIRUSDETECTED = _rx(
    r"it has a potentially executable attachment",
    r"the message was rejected because it contains prohibited virus or spam content",
    r"this form of attachment has been used by recent viruses or other malware",
    r"virus detected",
    r"virus phishing/malicious_url detected",
    r"your message was infected with a virus",
)

_SPEEDING = _rx(
    r"mail sent from your ip address has been temporarily rate limited",
    r"please try again slower",
    r"receiving mail at a rate that prevents additional messages from being delivered",
    r"receiving mail too quickly",
)

_TOOMANYCONN = _rx(
    r"all available ips are at maximum connection limit",
    r"connection rate limit exceeded",
    r"exceeds per-domain connection limit for",
    r"has exceeded the max emails per hour ",
    r"throttling failure: daily message quota exceeded",
    r"throttling failure: maximum sending rate exceeded",
    r"too many connections",
    r"too many concurrent smtp connections",
    r"too many errors from your ip",
    r"too many recipients",
    r"too many smtp sessions for this host",
    r"trop de connexions, ",
    r"we have already made numerous attempts to deliver this message",
)

_BLOCKED = _rx(
    r" said: 550 blocked",
    r"but my name was rejected",
    r"//www\.spamcop\.net/bl\.",
    r"bad sender ip address",
    r"banned sending ip",
    r"blacklisted by",
    r"blocked using ",
    r"blocked - see http",
    r"dnsbl:attrbl",
    r"client host rejected: abus detecte gu_eib_0[24]",
    r"client host rejected: may not be mail exchanger",
    r"client host rejected: was not authenticated",
    r"confirm this mail server",
    r"connection dropped",
    r"connection refused by",
    r"connection reset by peer",
    r"connection was dropped by remote host",
    r"connections not accepted from ip addresses on spamhaus xbl",
    r"currently sending spam see: ",
    r"domain does not exist:",
    r"dynamic/zombied/spam ips blocked",
    r"error: no valid recipients from ",
    r"esmtp not accepting connections",
    r"extreme bad ip profile",
    r"go away",
    r"helo command rejected:",
    r"host network not allowed",
    r"hosts with dynamic ip",
    r"invalid ip for sending mail of domain",
    r"is in a black list",
    r"is not allowed to send mail from",
    r"mailfrom domain is listed in spamhaus",
    r"no access from mail server",
    r"no matches to nameserver query",
    r"not currently accepting mail from your ip",
    r"part of their network is on our block list",
    r"please use the smtp server of your isp",
    r"refused - see http",
    r"rejected - multi-blacklist",
    r"rejected because the sending mta or the sender has not passed validation",
    r"rejecting open proxy",
    r"sender ip address rejected",
    r"server access forbidden by your ip ",
    r"service not available, closing transmission channel",
    r"smtp error from remote mail server after initial connection:",
    r"sorry, that domain isn't in my list of allowed rcpthosts",
    r"sorry, your remotehost looks suspiciously like spammer",
    r"to submit messages to this e-mail system has been rejected",
    r"too many spams from your ip",
    r"too many unwanted messages have been sent from the following ip address above",
    r"was blocked by ",
    r"we do not accept mail from dynamic ips",
    r"you are not allowed to connect",
    r"you are sending spam",
    r"your ip address is listed in the rbl",
    r"your network is temporary blacklisted",
    r"your server requires confirmation",
    r"\(.*?@.*?:blocked\)",
    r"access from ip address .*? blocked",
    r"client host .*? blocked using",
    r"connections will not be accepted from .*? because the ip is in spamhaus's list",
    r"dnsbl:rbl .*?>_is_blocked",
    r"email blocked by .*?(?:\.barracudacentral\.org|spamhaus)",
    r"host .*? refused to talk to me: .*? blocked",
    r"ip .*? is blocked by earthlink",
    r"is in an .*?rbl on ",
    r"mail server at .*? is blocked",
    r"mail from .*? refused:",
    r"mail from .*? refused, see .*?orbs",
    r"message from .*? rejected based on blacklist",
    r"messages from .*? temporarily deferred due to user complaints",
    r"server ip .*? listed as abusive",
    r"sorry! your ip address.*? is blocked by rbl",
    r"the (?:domain|email|ip).*? is blacklisted",
    r"your access ip.*? has been rejected",
    r"your sender's ip address is listed at .*?\.abuseat\.org",
    r"listed (?:at|in|on|by) (?:the )?(?:spamhaus|spamcop|barracuda|sorbs|dnsbl|rbl)",
)

_POLICYVIOLATION = _rx(
    r"an illegal attachment on your message",
    r"because the recipient is not accepting mail with ",
    r"by non-member to a members-only list",
    r"closed mailing list",
    r"denied by policy",
    r"email not accepted for policy reasons",
    r"email rejected due to security policies",
    r"header are not accepted",
    r"header error",
    r"local policy violation",
    r"message bounced due to organizational settings",
    r"message given low priority",
    r"message not accepted for policy reasons",
    r"message rejected due to local policy",
    r"messages with multiple addresses",
    r"rejected for policy reasons",
    r"protocol violation",
    r"the email address used to send your message is not subscribed to this group",
    r"the message was rejected by organization policy",
    r"this message was blocked because its content presents a potential",
    r"we do not accept messages containing images or other attachments",
    r"you're using a mass mailer",
    r"you have exceeded the.*?allowable number of posts without solving a captcha",
)

_SYSTEMERROR = _rx(
    r"aliasing/forwarding loop broken",
    r"can't create user output file",
    r"could not load drd for domain",
    r"internal error reading data",
    r"internal server error: operation now in progress",
    r"interrupted system call",
    r"it encountered an error while being processed",
    r"it would create a mail loop",
    r"local configuration error",
    r"local error in processing",
    r"loop was found in the mail exchanger",
    r"loops back to myself",
    r"mail system configuration error",
    r"queue file write error",
    r"recipient deferred because there is no mdb",
    r"remote server is misconfigured",
    r"server configuration error",
    r"service currently unavailable",
    r"system config error",
    r"temporary local problem",
    r"timeout waiting for input",
    r"transaction failed ",
    r"unable to connect .*?daemon",
    r"delivery to (?:file|pipe) forbidden",
    r"local delivery failed",
    r"lmtp error after ",
    r"unable to (?:contact|login into) ldap server",
    r"temporary failure in ldap lookup",
    r"timeout while performing search on ldap server",
    r"illegal value in ldap attribute",
    r"ldap attribute is not given but mandatory",
    r"too many results returned but needs to be unique",
    r"(?:permanent|temporary) error while executing qmail-forward",
    r"(?:automatic homedir creator crashed|temporary error in automatic homedir creation)",
    r"bad interpreter: no such file or directory",
    r"\bunable to (?:chdir|switch|open|read|write|create|stat|forward|lock)\b",
)

# Exim's address parser and other reports of a malformed address or command.
_SYNTAXERROR = _rx(
    r"angle-brackets nested too deep",
    r'expected word or "<"',
    r"domain missing in source-routed address",
    r"malformed address:",
)

_NETWORKERROR = _rx(
    r"could not connect and send the mail to",
    r"dns records for the destination computer could not be found",
    r"hop count exceeded - possible mail loop",
    r"host is unreachable",
    r"host name lookup failure",
    r"host not found, try again",
    r"mail forwarding loop for ",
    r"malformed name server reply",
    r"malformed or unexpected name server reply",
    r"maximum forwarding loop count exceeded",
    r"message looping",
    r"message probably in a routing loop",
    r"no route to host",
    r"too many hops",
    r"unable to resolve route ",
    r"unrouteable mail domain",
    r"sorry, i wasn't able to establish an smtp connection",
    r"sorry\. although i'm listed as a best-preference mx or a for that host",
)

_SYSTEMFULL = _rx(
    r"mail system full",
    r"requested mail action aborted: exceeded storage allocation",
    r"not enough free space",
)

_NOTACCEPT = _rx(
    r"does not accept mail \(nullmx\)",
    r"host/domain does not accept mail",
    r"host does not accept mail",
    r"mail receiving disabled",
    r"name server: \.: host not found",
    r"no mx record found for domain=",
    r"no route for current request",
    r"smtp protocol returned a permanent error",
    r"an mx or srv record indicated no smtp service",
    r"no host found for existing smtp connection",
    r"couldn't find a mail exchanger or ip address",
    r"null mx",
)

_EXPIRED = _rx(
    r"connection timed out",
    r"could not find a gateway for",
    r"delivery attempts will continue to be",
    r"delivery expired",
    r"delivery time expired",
    r"failed to deliver to domain ",
    r"giving up on",
    r"have been failing for a long time",
    r"has been delayed",
    r"it has not been collected after",
    r"message expired after sitting in queue for",
    r"message expired, cannot connect to remote server",
    r"message expired, connection refulsed",
    r"message timed out",
    r"retry time not reached for any host after a long failure period",
    r"retry timeout exceeded",
    r"server did not respond",
    r"this message has been in the queue too long",
    r"unable to deliver message after multiple retries",
    r"was not reachable within the allowed queue period",
    r"your message could not be delivered for more than",
    r"could not be delivered for.*? days",
    r"message could not be delivered for too long",
)

_SECURITYERROR = _rx(
    r"account not subscribed to ses",
    r"authentication credentials invalid",
    r"authentication failure",
    r"authentication required",
    r"authentication turned on in your email client",
    r"executable files are not allowed in compressed files",
    r"insecure mail relay",
    r"recipient address rejected: access denied",
    r"sorry, you don't authenticate or the domain isn't in my list of allowed rcpthosts",
    r"unauthenticated senders not allowed",
    r"verification failure",
    r"you are not authorized to send mail, authentication is required",
    r"authentication failed; server .*? said: ",
    r"authentification invalide.*?305",
    r"authentification requise.*?402",
    r"domain .*? is a dead domain",
    r"user .*? is not authorized to perform ses:sendrawemail on resource",
    r"must issue a starttls command first",
    r"tls required",
)

_MAILERERROR = _rx(
    r" \|\| exit ",
    r"procmail: ",
    r"bin/procmail",
    r"bin/maidrop",
    r"command failed: ",
    r"command died with status ",
    r"command output:",
    r"mailer error",
    r"pipe to \|/",
    r"x-unix; ",
)

_VACATION = _rx(
    r"i am away on vacation",
    r"i am away until",
    r"i am out of the office",
    r"i will be traveling for work on",
)

# Error identifiers which name the failure exactly: Microsoft Exchange / Office 365 NDR codes
# ("550 5.1.1 RESOLVER.ADR.RecipNotFound; not found"), directory lookups and Gmail's DNS
# diagnostics. Checked before anything else.
VENDOR_CODES: Final[tuple[tuple[re.Pattern[str], str], ...]] = (
    (re.compile(r"resolver\.adr\.(?:ex)?recip(?:ient)?notfound"), "userunknown"),
    # Directory lookups of Exchange 2003 and Lotus Domino: the address is not in the directory.
    (
        re.compile(
            r"account does not exist at the organization"
            r"|not listed in (?:domino directory|public name & address book)"
        ),
        "userunknown",
    ),
    # Yahoo ("554 delivery error: dd This user doesn't have a yahoo.com account") and Orange /
    # La Poste ("Adresse destinataire invalide. Invalid recipient. LPN007_416") say the mailbox
    # does not exist, whatever the SMTP stage they report it at.
    (re.compile(r"this user doesn't have a [\w.-]+ account"), "userunknown"),
    (re.compile(r"destinataire invalide\. invalid recipient\. \w+_41[68]\b"), "userunknown"),
    (re.compile(r"smtpsend\.dns\.nonexistentdomain"), "hostunknown"),
    (re.compile(r"smtpsend\.dns\.mxloopback"), "networkerror"),
    (re.compile(r"resolver\.adr\.(?:badprimary|invalidinsmtp|ambiguous)"), "systemerror"),
    (re.compile(r"resolver\.adr\.reciplimit"), "toomanyconn"),
    (re.compile(r"resolver\.rst\.authrequired"), "securityerror"),
    (re.compile(r"resolver\.rst\.notauthorized"), "rejected"),
    (re.compile(r"resolver\.rst\.recipsizelimit"), "exceedlimit"),
    (re.compile(r"queue\.expired"), "expired"),
    (
        re.compile(r"dns error: (?:domain name not found|dns server returned answer with no data)"),
        "hostunknown",
    ),
    (
        re.compile(
            r"dns error: could not contact dns servers"
            r"|the recipient server did not accept our requests to connect"
        ),
        "expired",
    ),
)

_TEXT: Final[dict[str, re.Pattern[str]]] = {
    "authfailure": _AUTHFAILURE,
    "badreputation": _BADREPUTATION,
    "blocked": _BLOCKED,
    "contenterror": _CONTENTERROR,
    "exceedlimit": _EXCEEDLIMIT,
    "expired": _EXPIRED,
    "filtered": _FILTERED,
    "hasmoved": _HASMOVED,
    "hostunknown": _HOSTUNKNOWN,
    "mailboxfull": _MAILBOXFULL,
    "mailererror": _MAILERERROR,
    "mesgtoobig": _MESGTOOBIG,
    "networkerror": _NETWORKERROR,
    "norelaying": _NORELAYING,
    "notaccept": _NOTACCEPT,
    "notcompliantrfc": _NOTCOMPLIANTRFC,
    "policyviolation": _POLICYVIOLATION,
    "rejected": _REJECTED,
    "requireptr": _REQUIREPTR,
    "securityerror": _SECURITYERROR,
    "spamdetected": _SPAMDETECTED,
    "speeding": _SPEEDING,
    "suspend": _SUSPEND,
    "systemerror": _SYSTEMERROR,
    "systemfull": _SYSTEMFULL,
    "toomanyconn": _TOOMANYCONN,
    "syntaxerror": _SYNTAXERROR,
    "userunknown": _USERUNKNOWN,
    "vacation": _VACATION,
    "virusdetected": _VIRUSDETECTED,
}

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
_STATUS_WEAK: Final = frozenset(
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

# ---------------------------------------------------------------------------------------------
# The rule tables (see classify() for the order they are tried in). TEXT_RULES rows are (reason,
# text pattern, status codes which are evidence on their own); rows are tried in order, so e.g.
# "mailbox full" text beats a 5.1.1 code, but a 5.2.2 code beats "user unknown" text. To add a
# phrase, add it to the reason's pattern above; to add a reason, add a row.
# ---------------------------------------------------------------------------------------------

TEXT_RULES: Final[tuple[tuple[str, re.Pattern[str], frozenset[str]], ...]] = (
    ("mailboxfull", _MAILBOXFULL, frozenset({"2.2"})),
    ("mesgtoobig", _MESGTOOBIG, frozenset({"3.4", "7.16"})),
    ("exceedlimit", _EXCEEDLIMIT, frozenset({"2.3"})),
    ("suspend", _SUSPEND, frozenset()),
    ("hasmoved", _HASMOVED, frozenset()),
    ("norelaying", _NORELAYING, frozenset()),
    (
        "authfailure",
        _AUTHFAILURE,
        frozenset({"7.20", "7.21", "7.22", "7.23", "7.24", "7.26", "7.29"}),
    ),
    ("userunknown", _USERUNKNOWN, frozenset({"1.0", "1.1", "1.3", "5.4.1"})),
    ("filtered", _FILTERED, frozenset({"1.4", "2.0", "2.1", "2.4"})),
    ("requireptr", _REQUIREPTR, frozenset({"7.25"})),
    ("notcompliantrfc", _NOTCOMPLIANTRFC, frozenset()),
    ("badreputation", _BADREPUTATION, frozenset()),
    (
        "contenterror",
        _CONTENTERROR,
        frozenset({"6.0", "6.1", "6.2", "6.3", "6.5", "6.6", "6.7", "6.8", "6.9"}),
    ),
    ("rejected", _REJECTED, frozenset({"1.7", "1.8"})),
    ("hostunknown", _HOSTUNKNOWN, frozenset({"1.2", "5.4.4"})),
    ("notaccept", _NOTACCEPT, frozenset({"1.10", "7.27"})),
    ("spamdetected", _SPAMDETECTED, frozenset({"7.28"})),
    ("speeding", _SPEEDING, frozenset()),
    ("toomanyconn", _TOOMANYCONN, frozenset({"5.3"})),
    ("blocked", _BLOCKED, frozenset({"4.2.1", "4.7.1", "4.7.2"})),
)

# Second pass, for text no first-pass rule explained: failures that are not about the address.
FALLBACK_TEXT_RULES: Final[tuple[str, ...]] = (
    "mailboxfull",
    "authfailure",
    "badreputation",
    "speeding",
    "spamdetected",
    "virusdetected",
    "policyviolation",
    "norelaying",
    "systemerror",
    "networkerror",
    "suspend",
    "contenterror",
    "systemfull",
    "notaccept",
    "expired",
    "securityerror",
    "mailererror",
    "syntaxerror",
)

# SMTP commands after which the message content has not been seen yet: a rejection there cannot
# be about spam, viruses or the recipient's content filter.
_BEFORE_DATA: Final = frozenset({"CONN", "EHLO", "HELO", "MAIL", "RCPT"})
_CONTENT_REASONS: Final = frozenset({"spamdetected", "virusdetected", "filtered"})

_WS = re.compile(r"\s+")
_STATUS_IN_TEXT = re.compile(r"(?<![\d.vV])([245])\.([0-7])\.(\d{1,3})(?!\d)")
_STATUS_SHAPE = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")
_COMMAND = re.compile(
    r"(?<![A-Za-z0-9@.\-])(HELO|EHLO|STARTTLS|AUTH|MAIL FROM|MAIL|RCPT TO|RCPT|DATA|QUIT|XFORWARD)"
    r"(?![A-Za-z0-9@\-])"
)
# Phrases that name the SMTP command a failure answered, where the command itself is not spelled.
_COMMAND_HINTS: Final = (
    ("end of data", "DATA"),
    ("does not like recipient", "RCPT"),
    ("failed on data command", "DATA"),
    ("failed after i sent the message", "DATA"),
    ("but sender was rejected", "MAIL"),
    ("but my name was rejected", "EHLO"),
    ("but greeting failed", "CONN"),
    ("refused to talk to me", "HELO"),
    ("after initial connection", "CONN"),
)
# Gmail ends a relayed error with "(state N)": the stage of the SMTP session that failed.
_GMAIL_STATE = re.compile(r"\(state (\d{1,2})\)")
_GMAIL_STATES: Final[dict[str, str]] = {
    "6": "MAIL",
    "8": "AUTH",
    "9": "AUTH",
    "12": "AUTH",
    "13": "EHLO",
    "14": "RCPT",
    "15": "DATA",
    "17": "DATA",
    "18": "DATA",
}
# Yahoo and others tag the stage: "... User Unknown [RCPT_TO]".
_SMTP_STAGE_TAG = re.compile(r"\[(RCPT_TO|MAIL_FROM|DATA|BDAT)\]", re.IGNORECASE)
_TEMPORARY_WORDS = re.compile(r" temporar| persistent")
# Wording of a failure that was retried until it timed out: a temporary cause, given up on.
_RETRIED_OUT = re.compile(
    r"retry timeout exceeded|have been failing for a long time|retry time not reached"
)

# SMTP reply codes in the order they are looked for (RFC 5321, 4954, 5248, 7504): the common
# failure codes first, so "550 ... 503 bad sequence" yields 550.
_REPLY_ORDER: Final[dict[str, tuple[str, ...]]] = {
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
_REPLY_ANY: Final = _REPLY_ORDER["5"] + _REPLY_ORDER["4"] + _REPLY_ORDER["2"]
_KNOWN_REPLIES: Final = frozenset(_REPLY_ANY)


# Diagnostics longer than this are cut before matching: the reason is in the first lines, and a
# bound keeps the "a.*?b" patterns cheap on hostile input.
_MAX_TEXT: Final = 8192


def _norm(text: str | None) -> str:
    return _WS.sub(" ", text[: _MAX_TEXT * 2]).strip().lower()[:_MAX_TEXT] if text else ""


def find_status(text: str | None, klass: str = "") -> str:
    """The most specific RFC 3463 code in `text` ("" if none); `klass` ("4"/"5") restricts it."""
    if not text or len(text) < 5:
        return ""
    text = text[:_MAX_TEXT]
    found: list[str] = []
    fallback = ""
    for m in _STATUS_IN_TEXT.finditer(text):
        if klass and m.group(1) != klass:
            continue
        code = f"{m.group(1)}.{m.group(2)}.{int(m.group(3))}"
        # X.0.0 and 4.4.7 carry no detail: keep looking for something better.
        if code.endswith(".0.0") or code == "4.4.7":
            fallback = fallback or code
            continue
        found.append(code)
    if not found:
        return fallback
    best = found[0]
    for code in found[1:]:
        best = prefer_status(best, code)
    return best


def find_reply_code(text: str | None, klass: str = "") -> str:
    """An SMTP reply code in `text` ("" if none); `klass` restricts it to 2xx/4xx/5xx.

    Codes are looked for in a fixed order, common failure codes first, and must stand alone
    (not be part of a number, an address or a status code).
    """
    if not text or len(text) < 3 or "x-unix" in text.lower():
        return ""
    padded = f" {text[:_MAX_TEXT]} "
    for code in _REPLY_ORDER.get(klass, _REPLY_ANY):
        start = padded.find(code)
        while start >= 0:
            before, after = padded[start - 1], padded[start + 3]
            if not ("." <= before <= "9" or "." <= after <= "9"):
                return code
            start = padded.find(code, start + 3)
    return ""


def find_command(text: str | None) -> str:
    """The SMTP command a diagnostic says the failure followed ("RCPT", "DATA", ...), or ""."""
    if not text:
        return ""
    text = text[:_MAX_TEXT]
    low = text.lower()
    for hint, command in _COMMAND_HINTS:
        if hint in low:
            return command
    state = _GMAIL_STATE.search(low)
    if state and state.group(1) in _GMAIL_STATES:
        return _GMAIL_STATES[state.group(1)]
    tag = _SMTP_STAGE_TAG.search(text)
    if tag:
        return tag.group(1)[:4].upper()
    last = ""
    for m in _COMMAND.finditer(text):
        last = m.group(1).split(" ", 1)[0]
    return last


def prefer_status(field: str, in_text: str, reply_code: str = "") -> str:
    """Choose between a Status: field value and a code found in the diagnostic text.

    A generic code (X.0.0, X.Y.0, 4.4.7, 5.3.Z, X.5.Z) gives way to a specific one; when the two
    disagree on the class, the reply code decides.
    """
    if not field:
        return in_text
    if not in_text or field == in_text:
        return field
    if reply_code and field[0] != in_text[0]:
        if reply_code[0] == field[0]:
            return field
        if reply_code[0] == in_text[0]:
            return in_text
    if field.endswith(".0.0"):
        return field if in_text.endswith(".0.0") else in_text
    if ".0" in field and ".0" not in in_text:
        return in_text
    if in_text.endswith(".0.0"):
        return field
    if field in ("4.4.7", "4.7.0") or field.startswith("5.3."):
        return in_text
    if field[1:4] in (".5.1", ".5.2", ".5.4", ".5.5"):
        return in_text
    if field == "5.1.1":
        return field if ".0" in in_text or in_text.startswith("5.5.") else in_text
    if field == "5.1.3" and in_text.startswith("5.7."):
        return in_text
    return field


def is_temporary(text: str) -> bool:
    """True when a status/reply/diagnostic string reads as a temporary (4xx) failure."""
    code = find_status(text) or find_reply_code(text)
    if code.startswith("4"):
        return True
    low = text.lower()
    return bool(_TEMPORARY_WORDS.search(f" {low}") or _RETRIED_OUT.search(low))


def _status_reason(status: str) -> str:
    if not status or not _STATUS_SHAPE.match(status):
        return ""
    if status in STATUS_REASONS:
        return STATUS_REASONS[status]
    return STATUS_REASONS.get(status[2:], "")


def _status_evidence(status: str, codes: frozenset[str]) -> bool:
    return bool(status) and (status[2:] in codes or status in codes)


_PSEUDO_CODES: Final[dict[str, str]] = {
    "authfailure": "926",
    "badreputation": "975",
    "blocked": "971",
    "contenterror": "960",
    "exceedlimit": "923",
    "expired": "947",
    "filtered": "910",
    "hasmoved": "916",
    "hostunknown": "912",
    "mailboxfull": "922",
    "mailererror": "939",
    "mesgtoobig": "934",
    "networkerror": "944",
    "norelaying": "909",
    "notaccept": "932",
    "notcompliantrfc": "974",
    "onhold": "901",
    "policyviolation": "972",
    "rejected": "918",
    "requireptr": "973",
    "securityerror": "970",
    "spamdetected": "980",
    "speeding": "946",
    "suspend": "921",
    "systemerror": "930",
    "systemfull": "931",
    "syntaxerror": "902",
    "toomanyconn": "945",
    "userunknown": "911",
    "undefined": "900",
    "virusdetected": "981",
}
# A temporary failure can't say the address is gone for good: no 4.0.9xx code for these.
_NO_TEMPORARY_PSEUDO: Final = frozenset({"hasmoved", "hostunknown", "userunknown"})


def pseudo_status(reason: str, *, temporary: bool) -> str:
    """sisimai's stand-in code ("5.0.911") for a failure whose message carries no status code.

    The detail 9NN names the reason; the class digit says whether it was temporary.
    """
    detail = _PSEUDO_CODES.get(reason)
    if detail is None:
        return ""
    if temporary and reason not in _NO_TEMPORARY_PSEUDO:
        return f"4.0.{detail}"
    return f"5.0.{detail}"


def _text_says(reason: str, text: str) -> bool:
    return bool(text) and _TEXT[reason].search(text) is not None


def _first_pass(status: str, text: str, command: str, by_status: str) -> str:
    """The specific reasons, in order, each proved by its own status code or by the text."""
    for pattern, vendor_reason in VENDOR_CODES:
        if text and pattern.search(text):
            return vendor_reason
    content_stage = command not in _BEFORE_DATA
    for reason, pattern, codes in TEXT_RULES:
        if reason == "mesgtoobig" and status[2:] == "2.3":
            continue  # X.2.3 is the per-mailbox limit: exceedlimit, whatever the wording
        if _status_evidence(status, codes) and _status_holds(reason, status, text):
            return reason
        if not text or pattern.search(text) is None:
            if reason == "filtered" and content_stage and _text_says("userunknown", text):
                # "No such user" said to the message itself (after DATA, or at a stage nobody
                # recorded) is the recipient's filter talking, not a directory lookup: sisimai's
                # reading, which the corpus labels follow.
                return reason
            continue
        if reason in _CONTENT_REASONS and not content_stage:
            continue
        if reason == "userunknown" and command != "RCPT" and by_status != "userunknown":
            continue
        if reason == "rejected" and not _rejected_applies(text, command, by_status):
            continue
        return reason
    return ""


def _status_holds(reason: str, status: str, text: str) -> bool:
    """Whether a status code's own reading survives what the diagnostic text says."""
    if reason == "userunknown":
        # A X.1.1 code next to text about relaying, blocking, a full or moved mailbox or a null
        # MX is a generic code: the text names the real reason.
        vetoes = ("norelaying", "blocked", "mailboxfull", "hasmoved", "notaccept")
        if any(_text_says(r, text) for r in vetoes):
            return False
        return not (_text_says("rejected", text) and _REJECTED_NOT.search(text) is None)
    if reason == "hostunknown":
        # X.4.4 only says "unable to route": a null MX or a DNS failure is more specific.
        if status[2:] == "4.4" and _text_says("notaccept", text):
            return False
        return not _text_says("networkerror", text)
    if reason == "filtered":
        return _text_says("userunknown", text) or _text_says("filtered", text)
    if reason == "contenterror":
        return not _text_says("spamdetected", text)
    return True


def _rejected_applies(text: str, command: str, by_status: str) -> bool:
    """Sender-rejection wording counts at MAIL FROM, after DATA, or when the code is vague."""
    if _REJECTED_NOT.search(text):
        return False
    if command == "MAIL":
        return True
    if command == "DATA":
        return by_status != "userunknown"
    return by_status in ("", "onhold", "undefined", "securityerror", "systemerror")


def _reason(status: str, reply: str, text: str, command: str, mailer: bool, delayed: bool) -> str:
    if status.startswith("2."):
        return "delivered"
    by_status = _status_reason(status)
    if not mailer:
        reason = _first_pass(status, text, command, by_status)
        if reason:
            return reason
        if reply == "525":
            return "suspend"
    # Second pass: what the status code says, unless it is one a diagnostic may refine.
    if by_status and by_status not in _STATUS_WEAK and not mailer:
        return by_status
    content_stage = command not in _BEFORE_DATA
    for reason in FALLBACK_TEXT_RULES:
        if _text_says(reason, text) and (content_stage or reason not in _CONTENT_REASONS):
            return reason
    if by_status:
        return by_status
    if status[:3] in ("5.6", "4.6"):
        return "contenterror"
    if status[:3] in ("5.7", "4.7"):
        return "securityerror"
    if mailer:
        return "mailererror"
    by_reply = REPLY_REASONS.get(reply, "")
    if by_reply:
        return by_reply
    if delayed:
        return "expired"
    if command in ("EHLO", "HELO"):
        # Refused at the greeting: the sending host itself is not welcome.
        return "blocked"
    if _text_says("vacation", text):
        return "vacation"
    return "onhold" if text else "undefined"


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
    type ("smtp", "x-unix"); `action` the DSN action ("failed", "delayed").

    The rules are tried in this order, the first that applies wins:

    1. VENDOR_CODES: identifiers that name the failure exactly (Exchange NDR codes, ...);
    2. TEXT_RULES: reason by reason, its own status codes or its wording in the text, with
       context gates (content reasons only after DATA, sender rejections only at MAIL FROM or
       with a vague code, "no such user" only at RCPT or with a X.1.1 code);
    3. the status code's reading in STATUS_REASONS, unless it is a generic one;
    4. FALLBACK_TEXT_RULES: wording about failures that are not about the address;
    5. the generic status readings, then the class of the code (X.6 content, X.7 security);
    6. REPLY_REASONS: reply codes that say why on their own;
    7. a delay with nothing else is "expired", a refusal at HELO "blocked", text matching no
       rule "onhold", and nothing at all "undefined".

    The kind is "hard" when the address itself is bad (the reasons in HARD_REASONS, a null MX
    only when the failure was not temporary), "soft" for any other failure, and "undetermined"
    only when there is nothing to go on.
    """
    code = (status or "").strip()
    if code and not _STATUS_SHAPE.match(code):
        code = ""
    text = _norm(diagnostic)
    reply = (reply_code or "").strip()
    if reply not in _KNOWN_REPLIES:
        reply = find_reply_code(text, code[:1])
    if not code:
        code = find_status(text, reply[:1])
    cmd = (command or "").strip().upper().split(" ", 1)[0] or find_command(diagnostic or "")
    mailer = (diagnostic_type or "").strip().lower().startswith("x-unix")
    delayed = (action or "").strip().lower() == "delayed"
    if not code and not reply and not text and not mailer:
        return ("expired", "soft") if delayed else ("undefined", "undetermined")
    reason = _reason(code, reply, text, cmd, mailer, delayed)
    return reason, kind_of(reason, " ".join(x for x in (code, reply, text) if x))


def kind_of(reason: str, evidence: str = "") -> BounceKind:
    """Hard or soft, for a reason and the status/reply/diagnostic text that led to it."""
    if reason not in HARD_REASONS:
        return "soft"
    if reason in _HARD_UNLESS_TEMPORARY and evidence:
        code = find_status(evidence) or find_reply_code(evidence)
        if not code.startswith("5") and is_temporary(evidence):
            return "soft"
    return "hard"
