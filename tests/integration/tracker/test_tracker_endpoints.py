"""The pixel and the redirect over real HTTP, with events read back from a real JetStream."""

from __future__ import annotations

import asyncio
import ipaddress
import time
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import httpx

from mailfold.events import (
    EmailClicked,
    EmailOpened,
    Keyring,
    TokenKind,
    TrackingClaims,
    Verdict,
    new_id,
)
from mailfold.tracker.bootstrap import Service
from mailfold.tracker.entrypoints.http import PIXEL

if TYPE_CHECKING:
    from tests.integration.tracker.conftest import StartTracker, Stream

BROWSER = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36"
)
TARGET = "https://shop.example.org/pricing?plan=pro&src=mail"
NO_CACHE = {
    "cache-control": "no-store, no-cache, must-revalidate, max-age=0",
    "pragma": "no-cache",
    "expires": "0",
}
TOKEN_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."


def old_email_id() -> str:
    """An email composed a day ago: a click on it is not early."""
    return new_id(int(time.time() * 1000) - 86_400_000)


def open_token(keyring: Keyring, org_id: str, recipient: str, email_id: str = "") -> str:
    claims = TrackingClaims(TokenKind.OPEN, org_id, email_id or old_email_id(), recipient)
    return keyring.sign(claims)


def click_token(
    keyring: Keyring, org_id: str, recipient: str, url: str = TARGET, email_id: str = ""
) -> str:
    claims = TrackingClaims(TokenKind.CLICK, org_id, email_id or old_email_id(), recipient, url)
    return keyring.sign(claims)


def assert_pixel(response: httpx.Response) -> None:
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/gif"
    assert response.headers["content-length"] == "43"
    for name, value in NO_CACHE.items():
        assert response.headers[name] == value


def assert_not_found(response: httpx.Response) -> None:
    assert response.status_code == 404
    assert "location" not in response.headers
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == 404
    assert problem["errors"][0]["field"] == "token"


def metric(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_a_valid_open_answers_the_pixel_and_records_one_event(
    tracker: Service, client: httpx.AsyncClient, keyring: Keyring, stream: Stream, nats_url: str,
    org_id: str,
) -> None:  # fmt: skip
    email_id = old_email_id()
    before = datetime.now(UTC)
    response = await client.get(
        f"/o/{open_token(keyring, org_id, 'ann@example.org', email_id)}.gif"
    )
    after = datetime.now(UTC)

    assert_pixel(response)
    assert response.content == PIXEL
    assert len(PIXEL) == 43
    [event] = await stream.settle(client, nats_url, org_id)
    assert isinstance(event, EmailOpened)
    assert (event.org_id, event.email_id, event.recipient) == (org_id, email_id, "ann@example.org")
    assert event.producer == "tracker"
    assert uuid.UUID(event.event_id).version == 7
    assert before <= event.occurred_at <= after
    assert event.occurred_at.utcoffset() is not None
    assert (event.verdict, event.label) == (Verdict.HUMAN, "")
    assert event.user_agent == BROWSER
    assert event.ip == "127.0.0.0"


async def test_a_valid_click_redirects_to_the_bound_url_and_records_one_event(
    tracker: Service, client: httpx.AsyncClient, keyring: Keyring, stream: Stream, nats_url: str,
    org_id: str,
) -> None:  # fmt: skip
    email_id = old_email_id()
    token = click_token(keyring, org_id, "bob@example.org", email_id=email_id)
    response = await client.get(f"/c/{token}")

    assert response.status_code == 302
    assert response.headers["location"] == TARGET
    assert response.headers["referrer-policy"] == "no-referrer"
    [event] = await stream.settle(client, nats_url, org_id)
    assert isinstance(event, EmailClicked)
    assert (event.org_id, event.email_id, event.recipient) == (org_id, email_id, "bob@example.org")
    assert event.url == TARGET
    assert event.producer == "tracker"
    assert uuid.UUID(event.event_id).version == 7
    assert (event.verdict, event.label) == (Verdict.HUMAN, "")


def tampered(token: str) -> list[str]:
    """Every single-character change, every truncation, and a few extensions of a token."""
    variants = set()
    for i, ch in enumerate(token):
        replacement = TOKEN_ALPHABET[(TOKEN_ALPHABET.index(ch) + 1) % len(TOKEN_ALPHABET)]
        variants.add(token[:i] + replacement + token[i + 1 :])
    variants.update(token[:n] for n in range(len(token)))
    variants.update({token + "A", token + ".", "A" + token})
    variants.discard(token)
    return sorted(variants)


async def test_tampered_and_forged_tokens_record_nothing_and_never_redirect(
    tracker: Service, client: httpx.AsyncClient, keyring: Keyring, stream: Stream, nats_url: str,
    org_id: str,
) -> None:  # fmt: skip
    opens = open_token(keyring, org_id, "ann@example.org")
    clicks = click_token(keyring, org_id, "ann@example.org")
    unknown_kid = Keyring.parse("zz9:integration-tracking-key-0123")
    same_kid_other_secret = Keyring.parse("it1:not-the-integration-secret")
    mac = clicks.rsplit(".", 1)[1]
    forged_mac = clicks[: -len(mac)] + ("B" if mac[0] == "A" else "A") + mac[1:]
    bad_opens = [
        *tampered(opens),
        open_token(unknown_kid, org_id, "ann@example.org"),
        open_token(same_kid_other_secret, org_id, "ann@example.org"),
        clicks,  # a click token on the pixel
    ]
    bad_clicks = [
        *tampered(clicks),
        click_token(unknown_kid, org_id, "ann@example.org"),
        click_token(same_kid_other_secret, org_id, "ann@example.org"),
        forged_mac,
        opens,  # an open token on the redirect
    ]
    metrics_before = (await client.get("/metrics")).text

    for token in bad_opens:
        response = await client.get(f"/o/{token}.gif")
        # The mail client still gets its image: a broken one helps nobody.
        assert_pixel(response)
        assert response.content == PIXEL
    for token in bad_clicks:
        assert_not_found(await client.get(f"/c/{token}"))

    assert await stream.settle(client, nats_url, org_id) == []
    metrics_after = (await client.get("/metrics")).text
    refused = 'mailfold_tracker_invalid_tokens_total{endpoint="click",reason="wrong_kind"}'
    assert metric(metrics_after, refused) == metric(metrics_before, refused) + 1


async def test_a_url_in_the_query_never_changes_where_a_click_goes(
    tracker: Service, client: httpx.AsyncClient, keyring: Keyring, stream: Stream, nats_url: str,
    org_id: str,
) -> None:  # fmt: skip
    token = click_token(keyring, org_id, "ann@example.org")
    for query in ("?url=https://evil.example", "?u=https://evil.example&redirect=//evil.example"):
        response = await client.get(f"/c/{token}{query}")
        assert response.status_code == 302
        assert response.headers["location"] == TARGET
    for path in ("/c/?url=https://evil.example", "/c/https://evil.example", "/c/"):
        assert_not_found(await client.get(path))
    signed_script = click_token(keyring, org_id, "ann@example.org", url="javascript:alert(1)")
    assert_not_found(await client.get(f"/c/{signed_script}"))

    events = await stream.settle(client, nats_url, org_id)
    assert [(type(e), getattr(e, "url", "")) for e in events] == [(EmailClicked, TARGET)] * 2


async def test_head_requests_answer_like_get_and_record_nothing(
    tracker: Service, client: httpx.AsyncClient, keyring: Keyring, stream: Stream, nats_url: str,
    org_id: str,
) -> None:  # fmt: skip
    pixel = await client.head(f"/o/{open_token(keyring, org_id, 'ann@example.org')}.gif")
    assert_pixel(pixel)
    assert pixel.content == b""
    link = await client.head(f"/c/{click_token(keyring, org_id, 'ann@example.org')}")
    assert link.status_code == 302
    assert link.headers["location"] == TARGET
    missing = await client.head("/c/not-a-token")
    assert missing.status_code == 404
    assert missing.content == b""

    assert await stream.settle(client, nats_url, org_id) == []


async def test_other_methods_and_paths_are_refused_plainly(
    tracker: Service, client: httpx.AsyncClient, keyring: Keyring
) -> None:
    token = open_token(keyring, "acme", "ann@example.org")
    posted = await client.post(f"/o/{token}.gif")
    assert posted.status_code == 405
    assert posted.headers["allow"] == "GET, HEAD"
    assert posted.json()["errors"][0]["field"] == "method"
    no_suffix = await client.get(f"/o/{token}")
    assert no_suffix.status_code == 404
    assert no_suffix.json()["errors"][0]["field"] == "path"
    assert (await client.get("/elsewhere")).status_code == 404


async def test_machine_user_agents_are_recorded_and_flagged(
    tracker: Service, client: httpx.AsyncClient, keyring: Keyring, stream: Stream, nats_url: str,
    org_id: str,
) -> None:  # fmt: skip
    opens = {
        "mpp@example.org": ("Mozilla/5.0", "apple_mpp"),
        "gmail@example.org": (
            "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)",
            "google_image_proxy",
        ),
        "yahoo@example.org": ("YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html", "yahoo_image_proxy"),
        "script@example.org": (f"python-httpx/{httpx.__version__}", "http_library"),
        "reader@example.org": (BROWSER, ""),
    }  # fmt: skip
    clicks = {
        "office@example.org": ("Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17328; Pro)", "microsoft_office"),
        "bing@example.org": (f"{BROWSER} BingPreview/1.0b", "bing_preview"),
        "curl@example.org": ("curl/8.5.0", "http_library"),
        "clicker@example.org": (BROWSER, ""),
    }  # fmt: skip
    for recipient, (agent, _) in opens.items():
        token = open_token(keyring, org_id, recipient)
        assert_pixel(await client.get(f"/o/{token}.gif", headers={"user-agent": agent}))
    for recipient, (agent, _) in clicks.items():
        token = click_token(keyring, org_id, recipient)
        response = await client.get(f"/c/{token}", headers={"user-agent": agent})
        assert response.headers["location"] == TARGET

    events = await stream.settle(client, nats_url, org_id)
    seen = {(type(e), e.recipient): (e.verdict, e.label) for e in events if isinstance(e, EmailOpened | EmailClicked)}  # fmt: skip
    expected = {
        (EmailOpened, r): (Verdict.MACHINE if label else Verdict.HUMAN, label)
        for r, (_, label) in opens.items()
    } | {
        (EmailClicked, r): (Verdict.MACHINE if label else Verdict.HUMAN, label)
        for r, (_, label) in clicks.items()
    }
    assert seen == expected
    assert len(events) == len(expected)


async def test_clicks_right_after_sending_and_bursts_across_links_are_flagged(
    tracker: Service, client: httpx.AsyncClient, keyring: Keyring, stream: Stream, nats_url: str,
    org_id: str,
) -> None:  # fmt: skip
    just_sent = click_token(keyring, org_id, "early@example.org", email_id=new_id())
    assert (await client.get(f"/c/{just_sent}")).status_code == 302

    scanned = old_email_id()
    links = [f"https://shop.example.org/item/{n}" for n in range(4)]
    tokens = [click_token(keyring, org_id, "scanned@example.org", url, scanned) for url in links]
    # A scanner follows every link of a message at once.
    responses = await asyncio.gather(*(client.get(f"/c/{token}") for token in tokens))
    assert sorted(r.headers["location"] for r in responses) == links

    read = old_email_id()
    assert (await client.get(f"/c/{click_token(keyring, org_id, 'read@example.org', email_id=read)}")).status_code == 302  # fmt: skip

    events = [
        e for e in await stream.settle(client, nats_url, org_id) if isinstance(e, EmailClicked)
    ]
    by_recipient: dict[str, list[tuple[Verdict, str]]] = {}
    for event in events:
        by_recipient.setdefault(event.recipient, []).append((event.verdict, event.label))
    assert by_recipient == {
        "early@example.org": [(Verdict.MACHINE, "early_click")],
        "scanned@example.org": [(Verdict.MACHINE, "link_scanner_burst")] * 4,
        "read@example.org": [(Verdict.HUMAN, "")],
    }


async def test_client_addresses_are_truncated_and_forwarded_for_needs_a_trusted_proxy(
    start_tracker: StartTracker, keyring: Keyring, stream: Stream, nats_url: str, org_id: str
) -> None:
    forwarded = {
        "direct@example.org": "203.0.113.77",
        "chain@example.org": "198.51.100.1, 203.0.113.77, 10.9.8.7",
        "v6@example.org": "2001:db8:abcd:12::1",
    }
    untrusted = start_tracker(nats_url)
    trusted = start_tracker(
        nats_url,
        trusted_proxies=(ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("10.0.0.0/8")),
    )
    recorded: dict[str, list[str]] = {}
    for name, service_context in (("untrusted", untrusted), ("trusted", trusted)):
        async with (
            service_context as service,
            httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{service.port}", headers={"user-agent": BROWSER}
            ) as http,
        ):
            for recipient, chain in forwarded.items():
                token = open_token(keyring, org_id, f"{name}.{recipient}")
                assert_pixel(await http.get(f"/o/{token}.gif", headers={"x-forwarded-for": chain}))
            events = await stream.settle(http, nats_url, org_id)
            for event in events:
                if isinstance(event, EmailOpened) and event.recipient.startswith(name + "."):
                    recorded.setdefault(name, []).append(event.ip)

    # Without a trusted proxy the header is the client's word, and the peer is recorded.
    assert recorded["untrusted"] == ["127.0.0.0"] * 3
    assert sorted(recorded["trusted"]) == sorted(["203.0.113.0", "203.0.113.0", "2001:db8:abcd::"])


async def test_health_and_metrics_are_served_on_the_tracker_port(
    tracker: Service, client: httpx.AsyncClient, keyring: Keyring, org_id: str
) -> None:
    health = await client.get("/healthz")
    assert health.status_code == 200
    assert health.json()["checks"] == {"nats": "ok", "publisher": "ok"}
    spec = (await client.get("/asyncapi.json")).json()
    assert spec["operations"]["tracker:email_opened"]["action"] == "send"

    before = (await client.get("/metrics")).text
    await client.get(f"/o/{open_token(keyring, org_id, 'ann@example.org')}.gif")
    await client.get("/o/forged.gif")
    after = (await client.get("/metrics")).text
    opens = 'mailfold_tracker_opens_total{label="",verdict="human"}'
    invalid = 'mailfold_tracker_invalid_tokens_total{endpoint="open",reason="invalid_token"}'
    latency = 'mailfold_tracker_request_seconds_count{endpoint="open"}'
    assert metric(after, opens) == metric(before, opens) + 1
    assert metric(after, invalid) == metric(before, invalid) + 1
    assert metric(after, latency) == metric(before, latency) + 2
    assert "mailfold_tracker_publish_backlog" in after
    assert "mailfold_tracker_events_dropped_total" in after
