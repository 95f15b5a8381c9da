"""Machine detection rules: proxies, scanners and scripts are flagged; people are not."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from mailfold.events import Verdict
from mailfold.tracker.domain.behaviour import BURST_LABEL, EARLY_CLICK_LABEL
from mailfold.tracker.domain.rules import (
    HUMAN,
    OPENS,
    RULES,
    Classification,
    Classifier,
    DetectionRule,
    Field,
    Interaction,
    apple_egress_rule,
)

CLASSIFIER = Classifier()
HOME = ipaddress.ip_address("198.51.100.7")

CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36"
)
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
SAFARI_IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1"
)
APPLE_MAIL = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)"
)
OUTLOOK_DESKTOP = "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17328; Pro)"
ANDROID_CUBOT = (
    "Mozilla/5.0 (Linux; Android 12; Cubot X30) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Mobile Safari/537.36"
)


def label(interaction: Interaction, user_agent: str, ip: str | None = None) -> str:
    client = ipaddress.ip_address(ip) if ip else HOME
    found = CLASSIFIER.classify(interaction, user_agent, client)
    assert found.verdict is (Verdict.MACHINE if found.label else Verdict.HUMAN)
    return found.label


@pytest.mark.parametrize("user_agent", [CHROME, FIREFOX, SAFARI_IPHONE, APPLE_MAIL, ANDROID_CUBOT])
@pytest.mark.parametrize("interaction", list(Interaction))
def test_browsers_and_mail_clients_are_people(interaction: Interaction, user_agent: str) -> None:
    assert CLASSIFIER.classify(interaction, user_agent, HOME) == HUMAN


@pytest.mark.parametrize(
    ("user_agent", "expected"),
    [
        ("Mozilla/5.0", "apple_mpp"),
        (
            "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com "
            "GoogleImageProxy)",
            "google_image_proxy",
        ),
        (
            "YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html",
            "yahoo_image_proxy",
        ),
        ("", "no_user_agent"),
        ("   ", "no_user_agent"),
        ("python-httpx/0.28.1", "http_library"),
        ("python-requests/2.32.3", "http_library"),
        ("curl/8.5.0", "http_library"),
        ("Go-http-client/1.1", "http_library"),
        ("Wget/1.21.4", "http_library"),
        ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", "bot"),
        (f"{CHROME} HeadlessChrome/126.0.0.0", "headless_browser"),
    ],
)
def test_image_proxies_and_scripts_are_machine_opens(user_agent: str, expected: str) -> None:
    assert label(Interaction.OPEN, user_agent) == expected


@pytest.mark.parametrize(
    ("user_agent", "expected"),
    [
        (
            "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17328; Pro)",
            "microsoft_office",
        ),
        ("Mozilla/4.0 (compatible; ms-office; MSOffice 16)", "microsoft_office"),
        (f"{CHROME} BingPreview/1.0b", "bing_preview"),
        ("Mimecast URL Protect/1.0", "mimecast"),
        ("Proofpoint URL Defense", "proofpoint"),
        ("Barracuda Sentinel (EE)", "barracuda"),
        ("Cisco IronPort URL Filtering", "cisco_ironport"),
        ("Symantec Email Security.cloud", "symantec"),
        ("FireEye ETP link analysis", "fireeye"),
        ("Mozilla/5.0", "minimal_user_agent"),
        ("python-httpx/0.28.1", "http_library"),
        ("Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)", "bot"),
    ],
)
def test_link_scanners_and_scripts_are_machine_clicks(user_agent: str, expected: str) -> None:
    assert label(Interaction.CLICK, user_agent) == expected


def test_outlook_rendering_a_message_is_a_person_opening_it() -> None:
    assert label(Interaction.OPEN, OUTLOOK_DESKTOP) == ""
    assert label(Interaction.CLICK, OUTLOOK_DESKTOP) == "microsoft_office"


def test_pixels_fetched_from_apples_network_are_privacy_protection() -> None:
    assert label(Interaction.OPEN, CHROME, "17.58.100.1") == "apple_mpp"
    # A person on Apple's network following a link is still a person.
    assert label(Interaction.CLICK, CHROME, "17.58.100.1") == ""


def test_the_first_matching_rule_decides() -> None:
    allow = DetectionRule("trusted_gateway", Verdict.HUMAN, Field.USER_AGENT, r"python-httpx")
    classifier = Classifier((allow, *RULES))
    assert classifier.classify(Interaction.OPEN, "python-httpx/0.28.1", HOME) == Classification(
        Verdict.HUMAN, "trusted_gateway"
    )


def test_a_network_rule_placed_first_wins_over_a_later_user_agent_rule() -> None:
    office = DetectionRule(
        "office_network", Verdict.MACHINE, Field.CLIENT_NETWORK, "198.51.100.0/24"
    )
    classifier = Classifier((office, *RULES))
    assert classifier.classify(Interaction.CLICK, "curl/8.5.0", HOME).label == "office_network"
    assert classifier.classify(Interaction.CLICK, "curl/8.5.0", None).label == "http_library"


def test_every_rule_compiles_and_is_labelled() -> None:
    classifier = Classifier()
    assert classifier.rules == RULES
    for rule in RULES:
        assert rule.label
        assert rule.note
        assert rule.applies_to


def test_apples_published_egress_list_becomes_an_open_rule() -> None:
    csv = [
        "# prefix,country,region,city",
        "172.224.226.0/27,GB,GB-EN,London,",
        "2a02:26f7:b3c0:4000::/64,GB,GB-EN,London,",
        "",
    ]
    rule = apple_egress_rule(csv)
    assert rule.label == "apple_mpp"
    assert rule.applies_to == OPENS
    classifier = Classifier((rule,))
    mpp = ipaddress.ip_address("172.224.226.7")
    assert classifier.classify(Interaction.OPEN, CHROME, mpp).label == "apple_mpp"
    assert classifier.classify(Interaction.CLICK, CHROME, mpp) == HUMAN


def test_a_broken_egress_list_is_refused() -> None:
    with pytest.raises(ValueError, match="not an IP network"):
        apple_egress_rule(["not-a-network,GB,,,"])


def test_every_rule_label_is_documented() -> None:
    docs = (Path(__file__).resolve().parents[3] / "docs" / "tracker.md").read_text()
    for rule in RULES:
        assert f"| `{rule.label}` |" in docs, rule.label
    for label in (EARLY_CLICK_LABEL, BURST_LABEL):
        assert f"(`{label}`)" in docs, label
