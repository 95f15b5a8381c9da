"""The record page over HTTP: sign in, the session cookie, what is escaped, what is refused."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import quote

import httpx
import pytest
from nats.aio.client import Client

from mailfold.events import AnyEvent, Source, new_id
from mailfold.runtime import bus
from mailfold.runtime.orgs import create_org

if TYPE_CHECKING:
    from tests.integration.projector.conftest import Mail, StartProjector

from tests.integration.projector.conftest import last_seq, publish, wait_for_position


@dataclass
class Site:
    client: httpx.AsyncClient
    base: str
    org: str
    token: str
    other_token: str
    markup: str
    plain: str


@pytest.fixture
async def site(
    nc: Client, mail: Mail, database_url: str, start_projector: StartProjector
) -> AsyncIterator[Site]:
    js = nc.jetstream()
    orgs = await bus.kv(js, bus.BUCKET_ORGS)
    token = await create_org(orgs, mail.org_id)
    other_token = await create_org(orgs, mail.org_id + "z")
    markup, plain = new_id(), new_id()
    events: list[AnyEvent] = [
        mail.composed(markup, subject='<script>alert("x")</script>&amp;', minutes=1),
        mail.sent(markup, 2),
        mail.composed(plain, source=Source.MASS_EMAIL, minutes=3),
        mail.sent(plain, 4),
        mail.bounced(plain, 5),
    ]
    async with start_projector() as service:
        await publish(js, events)
        await wait_for_position(database_url, await last_seq(js))
        base = f"http://127.0.0.1:{service.port}"
        async with httpx.AsyncClient(base_url=base) as client:
            yield Site(client, base, mail.org_id, token, other_token, markup, plain)


def page(site: Site, record: str = "lead-1") -> str:
    return f"/ui/orgs/{site.org}/records/{record}"


async def sign_in(site: Site, token: str, next_path: str | None = None) -> httpx.Response:
    return await site.client.post(
        f"/ui/orgs/{site.org}/session",
        data={"token": token, "next": next_path or page(site)},
        headers={"Origin": site.base},
    )


async def test_signing_in_sets_a_session_cookie_and_returns_to_the_page(site: Site) -> None:
    anonymous = await site.client.get(page(site))
    assert anonymous.status_code == 401
    assert 'name="token"' in anonymous.text
    assert site.org in anonymous.text

    signed = await sign_in(site, site.token)
    assert signed.status_code == 303
    assert signed.headers["location"] == page(site)
    cookie = signed.headers["set-cookie"]
    assert cookie.startswith("mailfold_session=")
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    assert f"Path=/ui/orgs/{site.org}/" in cookie
    assert "expires" not in cookie.lower()
    assert "max-age" not in cookie.lower()

    shown = await site.client.get(page(site))
    assert shown.status_code == 200
    assert shown.headers["content-type"].startswith("text/html")
    policy = shown.headers["content-security-policy"]
    assert "default-src 'none'" in policy
    assert "style-src 'self'" in policy
    assert shown.headers["cache-control"] == "no-store"
    assert 'data-status="Bounced"' in shown.text
    assert "user_unknown (hard)" in shown.text
    # Markup in a subject is text: escaped in the cell and in every attribute.
    assert "<script>" not in shown.text
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&amp;amp;" in shown.text
    assert site.token not in shown.text

    css = await site.client.get("/ui/assets/app.css")
    assert css.status_code == 200
    assert css.headers["content-type"].startswith("text/css")
    assert "http" not in css.text  # no external resource


async def test_a_wrong_or_another_orgs_token_is_refused_without_a_cookie(site: Site) -> None:
    for token in (site.other_token, "mf_nope_x", ""):
        refused = await sign_in(site, token)
        assert refused.status_code == 401
        assert "set-cookie" not in refused.headers
        assert "not valid for this org" in refused.text
    site.client.cookies.set("mailfold_session", site.other_token, path=f"/ui/orgs/{site.org}/")
    forged = await site.client.get(page(site))
    assert forged.status_code == 401
    assert "data-email-id" not in forged.text


async def test_sign_in_never_redirects_off_the_orgs_pages_nor_from_another_site(
    site: Site,
) -> None:
    for target in ("https://evil.example/", "//evil.example/x", "/ui/orgs/other/records/x"):
        signed = await sign_in(site, site.token, target)
        assert signed.status_code == 303
        assert signed.headers["location"] == f"/ui/orgs/{site.org}/"
    cross = await site.client.post(
        f"/ui/orgs/{site.org}/session",
        data={"token": site.token, "next": page(site)},
        headers={"Origin": "https://evil.example"},
    )
    assert cross.status_code == 401
    assert "set-cookie" not in cross.headers


async def test_the_history_and_paging_and_bad_parameters(site: Site) -> None:
    await sign_in(site, site.token)
    shown = await site.client.get(page(site), params={"email": site.plain})
    assert 'id="history"' in shown.text
    assert "email_bounced" in shown.text
    one = await site.client.get(page(site), params={"limit": "1"})
    assert one.text.count('class="email"') == 1
    assert "Older emails" in one.text
    # Nonsense parameters fall back to the defaults rather than failing the page.
    odd = await site.client.get(
        page(site), params={"limit": "x", "cursor": "zz", "filter": "<b>", "email": "nope"}
    )
    assert odd.status_code == 200
    assert odd.text.count('class="email"') == 2
    assert 'id="history"' not in odd.text
    crm = await site.client.get(page(site), params={"filter": "crm"})
    assert crm.text.count('class="email"') == 2
    bad_org = await site.client.get("/ui/orgs/Not%20An%20Org/records/lead-1")
    assert bad_org.status_code == 404
    # A record id is the CRM's own text: looked up as it is, shown escaped.
    odd_record = await site.client.get(page(site, quote('lead "<b>2&3', safe="")))
    assert odd_record.status_code == 200
    assert "No emails on this record." in odd_record.text
    assert "lead &#34;&lt;b&gt;2&amp;3" in odd_record.text
    assert "<b>" not in odd_record.text
    signed_out = await site.client.post(f"/ui/orgs/{site.org}/session/end")
    assert signed_out.status_code == 303
    assert 'mailfold_session=""' in signed_out.headers["set-cookie"]
