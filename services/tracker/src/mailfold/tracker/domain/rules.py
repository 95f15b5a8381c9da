"""Machine detection as data: rules on the user agent and the client network, first match wins.

Every open and click is recorded; a rule only decides its verdict and label. docs/tracker.md
explains each rule and how to add one.
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from mailfold.events import Verdict
from mailfold.tracker.domain.network import IPAddress, NetworkSet, parse_networks


class Interaction(enum.StrEnum):
    """What the recipient's client did: loaded the pixel or followed a link."""

    OPEN = "open"
    CLICK = "click"


class Field(enum.StrEnum):
    """What a rule's pattern is matched against."""

    USER_AGENT = "user_agent"  # a regular expression, searched case-insensitively
    CLIENT_NETWORK = "client_network"  # CIDRs, comma or space separated; the untruncated client


BOTH: Final = frozenset(Interaction)
OPENS: Final = frozenset({Interaction.OPEN})
CLICKS: Final = frozenset({Interaction.CLICK})


@dataclass(frozen=True, slots=True)
class DetectionRule:
    """One detection rule: when `pattern` matches `field`, the interaction gets `verdict`/`label`."""

    label: str
    verdict: Verdict
    field: Field
    pattern: str
    applies_to: frozenset[Interaction] = BOTH
    note: str = ""


@dataclass(frozen=True, slots=True)
class Classification:
    """The verdict on one open or click, and the label of the rule that decided it."""

    verdict: Verdict
    label: str = ""


HUMAN: Final = Classification(Verdict.HUMAN)


def _machine(
    label: str, pattern: str, note: str, applies_to: frozenset[Interaction] = BOTH
) -> DetectionRule:
    return DetectionRule(label, Verdict.MACHINE, Field.USER_AGENT, pattern, applies_to, note)


# Apple's own address block (AS714). Mail Privacy Protection fetches through Apple's relay, whose
# egress also spans partner CDN ranges; MAILFOLD_TRACKER_APPLE_EGRESS_FILE adds Apple's published
# egress list.
APPLE_NETWORKS: Final = "17.0.0.0/8"

RULES: Final[tuple[DetectionRule, ...]] = (
    _machine(
        "no_user_agent",
        r"^\s*$",
        "every mail client and browser sends a user agent; its absence is a script",
    ),
    _machine(
        "apple_mpp",
        r"^Mozilla/5\.0$",
        "Apple Mail Privacy Protection prefetches images with exactly this user agent",
        OPENS,
    ),
    DetectionRule(
        "apple_mpp",
        Verdict.MACHINE,
        Field.CLIENT_NETWORK,
        APPLE_NETWORKS,
        OPENS,
        "pixel fetched from Apple's network: Mail Privacy Protection's relay, not a reader",
    ),
    _machine("google_image_proxy", r"GoogleImageProxy", "Gmail fetches images through its proxy"),
    _machine("yahoo_image_proxy", r"YahooMailProxy", "Yahoo Mail fetches images through its proxy"),
    _machine(
        "microsoft_office",
        r"Microsoft Office|ms-office|MSOffice",
        "Office checks and previews links before the browser opens them (Safe Links, "
        "protocol discovery); on opens this is Outlook rendering the message, a person",
        CLICKS,
    ),
    _machine("bing_preview", r"BingPreview", "Microsoft's link preview and Safe Links scanner"),
    _machine("mimecast", r"Mimecast", "Mimecast URL Protect scanner"),
    _machine("proofpoint", r"Proofpoint|pfpt", "Proofpoint URL Defense scanner"),
    _machine("barracuda", r"Barracuda", "Barracuda link protection scanner"),
    _machine("cisco_ironport", r"IronPort|\bCisco\b", "Cisco Secure Email (IronPort) scanner"),
    _machine("symantec", r"Symantec|MessageLabs", "Symantec (Broadcom) email security scanner"),
    _machine("fireeye", r"FireEye|Trellix", "FireEye (Trellix) email security scanner"),
    _machine(
        "security_scanner",
        r"Sophos|Forcepoint|Trend ?Micro|Zscaler|Fortinet|FortiGuard|Palo ?Alto|Check ?Point",
        "other secure email gateways that follow links to check them",
    ),
    _machine(
        "headless_browser",
        r"HeadlessChrome|PhantomJS|Puppeteer|Playwright|Selenium|SlimerJS",
        "automated browsers, as sandboxes and scanners use",
    ),
    _machine(
        "http_library",
        r"python-requests|python-urllib|python-httpx|aiohttp|\bcurl/|\bWget/|Go-http-client"
        r"|okhttp|^Java/|Apache-HttpClient|libwww-perl|node-fetch|\baxios/|undici|HTTPie/|PycURL"
        r"|^Ruby\b|^Dart/",
        "HTTP libraries and command-line tools: scripts, not people",
    ),
    _machine(
        "bot",
        r"Googlebot|bingbot|Applebot|YandexBot|DuckDuckBot|Slackbot|Slack-ImgProxy|Twitterbot"
        r"|LinkedInBot|Discordbot|TelegramBot|WhatsApp|facebookexternalhit|SkypeUriPreview"
        r"|\bbot\b|crawler|spider|https?://",
        "crawlers and chat link previews (a URL inside a user agent is a bot's calling card)",
    ),
    _machine(
        "minimal_user_agent",
        r"^Mozilla/[\d.]+$",
        "a browser always names its platform and engine; a bare product token is a script",
        CLICKS,
    ),
)


class Classifier:
    """Applies rules in order; the first that matches decides, and no match means a person."""

    def __init__(self, rules: Iterable[DetectionRule] = RULES, *, cache_size: int = 4096) -> None:
        self.rules = tuple(rules)
        self._none = len(self.rules)
        agents: dict[Interaction, list[tuple[int, re.Pattern[str]]]] = {i: [] for i in Interaction}
        networks: dict[Interaction, list[tuple[int, NetworkSet]]] = {i: [] for i in Interaction}
        for index, rule in enumerate(self.rules):
            for interaction in rule.applies_to:
                if rule.field is Field.USER_AGENT:
                    agents[interaction].append((index, re.compile(rule.pattern, re.IGNORECASE)))
                else:
                    networks[interaction].append((index, NetworkSet(parse_networks(rule.pattern))))
        self._networks = networks
        # The same few user agents come back again and again; matching each once is enough.
        self._agent_rule = {
            interaction: functools.lru_cache(maxsize=cache_size)(
                functools.partial(self._first_agent_rule, patterns)
            )
            for interaction, patterns in agents.items()
        }

    def _first_agent_rule(
        self, patterns: list[tuple[int, re.Pattern[str]]], user_agent: str
    ) -> int:
        for index, pattern in patterns:
            if pattern.search(user_agent):
                return index
        return self._none

    def classify(
        self, interaction: Interaction, user_agent: str, client: IPAddress | None
    ) -> Classification:
        """The verdict on one open or click from its user agent and (untruncated) client address."""
        first = self._agent_rule[interaction](user_agent)
        if client is not None:
            for index, networks in self._networks[interaction]:
                if index >= first:
                    break
                if client in networks:
                    first = index
                    break
        if first == self._none:
            return HUMAN
        rule = self.rules[first]
        return Classification(rule.verdict, rule.label)


def apple_egress_rule(lines: Iterable[str]) -> DetectionRule:
    """An `apple_mpp` network rule from Apple's egress list (CSV, the CIDR in the first column)."""
    cidrs = [
        line.split(",", 1)[0].strip()
        for line in lines
        if line.strip() and not line.lstrip().startswith("#")
    ]
    parse_networks(cidrs)  # refuse a bad file at start, naming the entry
    return DetectionRule(
        "apple_mpp",
        Verdict.MACHINE,
        Field.CLIENT_NETWORK,
        " ".join(cidrs),
        OPENS,
        "pixel fetched from Apple's relay egress ranges (Mail Privacy Protection)",
    )
