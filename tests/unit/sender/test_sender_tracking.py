"""Click links and the open pixel: signed, bound to the original URL, and nothing else touched."""

from __future__ import annotations

import re
from html.parser import HTMLParser

from hypothesis import given
from hypothesis import strategies as st

from mailfold.events import Keyring, TokenKind
from mailfold.sender.domain.tracking import (
    add_pixel,
    find_links,
    is_tracked_scheme,
    rewrite_links,
    track,
)

KEYS = Keyring.parse("k1:unit-test-signing-key-0001")


def _mark(url: str) -> str:
    return f"T[{url}]"


def test_http_and_https_links_are_rewritten_and_others_kept() -> None:
    html = (
        '<a href="https://a.example/x">a</a> <A HREF=http://b.example/y>b</A> '
        '<a href="mailto:x@y.z">m</a> <a href="#top">t</a> <a name="n">n</a> '
        "<area shape=rect href='https://c.example/z'>"
    )
    out = rewrite_links(html, _mark)
    assert out == (
        '<a href="T[https://a.example/x]">a</a> <A HREF="T[http://b.example/y]">b</A> '
        '<a href="mailto:x@y.z">m</a> <a href="#top">t</a> <a name="n">n</a> '
        '<area shape=rect href="T[https://c.example/z]">'
    )


def test_the_bound_url_is_the_one_a_browser_would_follow() -> None:
    out = rewrite_links('<a href="https://a.example/?a=1&amp;b=2">x</a>', _mark)
    assert out == '<a href="T[https://a.example/?a=1&b=2]">x</a>'


def test_links_in_comments_scripts_and_other_attributes_are_left_alone() -> None:
    html = (
        '<!-- <a href="https://hidden.example">x</a> -->\n'
        "<script>var s = '<a href=\"https://js.example\">';</script>\n"
        '<a title=" href=https://decoy.example" href="https://real.example">y</a>\n'
        '<img src="https://img.example/a.png">'
    )
    out = rewrite_links(html, _mark)
    assert "T[https://real.example]" in out
    assert "T[" not in out.replace("T[https://real.example]", "")
    assert 'title=" href=https://decoy.example"' in out


def test_multiline_documents_keep_every_other_byte() -> None:
    html = '<html>\n<body>\n  <p>Hi</p>\n  <a\n    href="https://a.example"\n  >go</a>\n</body>\n</html>'
    out = rewrite_links(html, _mark)
    assert out == html.replace('"https://a.example"', '"T[https://a.example]"')


def test_the_pixel_goes_before_the_last_body_end_or_at_the_end() -> None:
    assert add_pixel("<html><body>x</BODY ></html>", "P") == (
        '<html><body>x<img src="P" width="1" height="1" alt=""></BODY ></html>'
    )
    assert add_pixel("<p>x</p>", "P") == '<p>x</p><img src="P" width="1" height="1" alt="">'


def test_track_signs_clicks_and_one_open_for_the_recipient() -> None:
    html = '<body><a href="https://a.example/p?q=1">a</a></body>'
    out = track(
        html,
        keys=KEYS,
        tracker_url="https://t.example/",
        org_id="acme",
        email_id="e-1",
        recipient="ann@example.org",
    )
    (click,) = re.findall(r'href="https://t\.example/c/([^"]+)"', out)
    claims = KEYS.verify(click)
    assert (claims.kind, claims.url, claims.recipient) == (
        TokenKind.CLICK, "https://a.example/p?q=1", "ann@example.org",
    )  # fmt: skip
    (opened,) = re.findall(r'src="https://t\.example/o/([^"]+)\.gif"', out)
    assert KEYS.verify(opened).kind is TokenKind.OPEN


def test_schemes_are_read_case_insensitively() -> None:
    assert is_tracked_scheme(" HTTPS://a.example")
    assert not is_tracked_scheme("javascript:alert(1)")
    assert not is_tracked_scheme("/relative")


@given(st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=300))
def test_rewriting_never_changes_a_document_without_links(text: str) -> None:
    if "href" in text.lower():
        return
    assert rewrite_links(text, _mark) == text


@given(st.lists(st.sampled_from(["https://a.example/1", "http://b.example/?x=<y>", "mailto:a@b"]), max_size=6),
       st.text(alphabet="abc <>/\n", max_size=20))  # fmt: skip
def test_every_tracked_link_maps_back_to_its_url(urls: list[str], filler: str) -> None:
    import html as html_lib

    doc = filler.replace("<", "").replace(">", "") + "".join(
        f'<p><a href="{html_lib.escape(u)}">{i}</a></p>' for i, u in enumerate(urls)
    )
    out = rewrite_links(doc, _mark)
    found = re.findall(r'href="T\[(.*?)\]"', out)
    assert found == [u for u in urls if u.startswith("http")]


class _Oracle(HTMLParser):
    """The standard library's parser: the URLs of http(s) links a browser would see."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in {"a", "area"}:
            href = next((v for k, v in attrs if k == "href" and v is not None), None)
            if href is not None and is_tracked_scheme(href):
                self.urls.append(href.strip())

    handle_startendtag = handle_starttag


_URLS = st.sampled_from(
    ["https://a.example/x?a=1&amp;b=2", "http://b.example/é", "HTTPS://C.example", "mailto:x@y.z",
     "https://d.example/?q='quoted'", "/relative", " https://e.example/ "]
)  # fmt: skip
_FRAGMENTS = st.one_of(
    st.sampled_from(["<p>", "</p>", "</a>", "text & more", "<br/>", "<div class='x'>", "\n",
                     "<!DOCTYPE html>", "<img src='x.png' alt='a > b'>", "</body>"]),
    _URLS.map(lambda u: f'<a href="{u}">x</a>'),
    _URLS.map(lambda u: f"<A class=c HREF='{u}' title=\"t\">x</A>"),
    _URLS.map(lambda u: f"<a\n  href={u.replace(' ', '')}>x</a>"),
    _URLS.map(lambda u: f'<area shape="rect" href="{u}"/>'),
    _URLS.map(lambda u: f'<!-- <a href="{u}">hidden</a> -->'),
    _URLS.map(lambda u: f"<script>document.write('<a href=\"{u}\">')</script>"),
    _URLS.map(lambda u: f"<style>a[href='{u}'] {{}}</style>"),
    _URLS.map(lambda u: f"<img alt='<a href=\"{u}\">'>"),
    _URLS.map(lambda u: f'<abbr href="{u}">not a link</abbr>'),
)  # fmt: skip


@given(st.lists(_FRAGMENTS, max_size=12))
def test_the_scanner_finds_exactly_the_links_the_standard_parser_finds(parts: list[str]) -> None:
    doc = "".join(parts)
    oracle = _Oracle()
    oracle.feed(doc)
    oracle.close()
    assert [url for _, _, url in find_links(doc)] == oracle.urls
    # Rewriting replaces exactly those values and leaves no tracked link behind.
    links = find_links(doc)
    out = rewrite_links(doc, lambda url: "X")
    after = _Oracle()
    after.feed(out)
    after.close()
    assert after.urls == []
    kept, cursor = [], 0
    for start, end, _ in links:
        kept.append(doc[cursor:start])
        cursor = end
    kept.append(doc[cursor:])
    assert out.split('"X"') == kept
