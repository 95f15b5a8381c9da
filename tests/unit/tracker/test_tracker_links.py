"""Redirect targets: only absolute http(s) URLs, and only in a form safe for a Location header."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailfold.tracker.domain.links import redirect_target


@pytest.mark.parametrize(
    "url",
    [
        "https://example.org/pricing?x=1&y=2#plans",
        "http://example.org",
        "HTTPS://Example.org/A%20B",
        "https://user@example.org:8443/path;p?q=1",
    ],
)
def test_http_and_https_urls_are_followed_unchanged(url: str) -> None:
    assert redirect_target(url) == url


def test_non_ascii_is_percent_encoded_so_the_header_stays_ascii() -> None:
    assert redirect_target("https://example.org/café?q=ü") == (
        "https://example.org/caf%C3%A9?q=%C3%BC"
    )


@pytest.mark.parametrize(
    "url",
    [
        "",
        "javascript:alert(1)",
        "data:text/html,<script>alert(1)</script>",
        "mailto:ann@example.org",
        "ftp://example.org/file",
        "//evil.example/path",
        "/relative/path",
        "https:///no-host",
        "https://example.org/a\x00b",
        "https://example.org/\x7f",
        "https://[::1/broken",
        " \t ",
    ],
)
def test_anything_else_is_never_followed(url: str) -> None:
    assert redirect_target(url) is None


def test_blanks_are_read_as_a_browser_reads_an_href() -> None:
    assert redirect_target("  https://example.org/a\n ") == "https://example.org/a"
    assert redirect_target("https://exa\tmple.org/a\r\nb") == "https://example.org/ab"


def test_a_newline_can_never_split_the_location_header() -> None:
    target = redirect_target("https://example.org/\r\nSet-Cookie: x=1")
    assert target == "https://example.org/Set-Cookie:%20x=1"


@given(st.text(max_size=200))
def test_a_target_is_always_an_absolute_http_url_in_plain_ascii(url: str) -> None:
    target = redirect_target(url)
    if target is not None:
        assert target.isascii()
        assert target.lower().startswith(("http://", "https://"))
        assert not any(ch in target for ch in "\r\n\x00 ")
