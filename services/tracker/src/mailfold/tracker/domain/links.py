"""Where a click may go: only an absolute http(s) URL, and only in a form safe for a header."""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import quote, urlsplit

_SCHEMES: Final = frozenset({"http", "https"})
# Characters a URL keeps as they are; everything else (spaces, non-ASCII, quotes) is %-escaped.
_URL_SAFE: Final = "!#$%&'()*+,-./:;=?@[]_~"
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
_C0_AND_SPACE: Final = "".join(chr(c) for c in range(0x21))
_TAB_NEWLINE: Final = str.maketrans("", "", "\t\n\r")


def redirect_target(url: str) -> str | None:
    """The Location for a bound URL, or None when it must not be followed.

    The URL is read as a browser reads an href (WHATWG URL parsing): surrounding blanks and
    control characters are dropped, and so are tabs and newlines anywhere (so a CR or LF can never
    split the response header). Refused: other schemes (javascript:, data:, mailto:...), URLs
    without a host, and any other control character. Non-ASCII text is percent-encoded, so the
    header is plain ASCII and the browser lands on the same resource.
    """
    url = url.strip(_C0_AND_SPACE).translate(_TAB_NEWLINE)
    if not url or _CONTROL.search(url):
        return None
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return None
    if parts.scheme.lower() not in _SCHEMES or not host:
        return None
    return quote(url, safe=_URL_SAFE)
