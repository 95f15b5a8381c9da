"""MAIL FROM / RCPT TO paths: the shortcut for plain addresses answers exactly as aiosmtpd does."""

from __future__ import annotations

import pytest
from aiosmtpd.smtp import SMTP
from hypothesis import example, given
from hypothesis import strategies as st

from mailfold.ingest.entrypoints.smtp import IngestSMTP

ATEXT = "abcXYZ019!#$%&'*+/=?^_`{|}~-"
ours = IngestSMTP.__new__(IngestSMTP)
theirs = SMTP.__new__(SMTP)

dot_atom = st.lists(st.text(ATEXT, min_size=1, max_size=8), min_size=1, max_size=3).map(".".join)
label = st.text("abz09-", min_size=1, max_size=8)
domain = st.lists(label, min_size=1, max_size=3).map(".".join)
rest = st.one_of(st.just(""), st.text(" !\"'()*+,-./0123456789:;<=>?@AZaz=\\", max_size=12))


def read(server: SMTP, arg: str) -> object:
    """What `_getaddr` answers, or the exception it raises (aiosmtpd's parser has a few)."""
    try:
        return server._getaddr(arg)
    except Exception as exc:
        return type(exc)


paths = st.builds(lambda local, dom, r: f"<{local}@{dom}>{r}", dot_atom, domain, rest)


@given(paths | st.text(' <>@."()[]abc+-=\\', max_size=20))
@example("<customer7@example.com>")
@example("<in+acme+user@in.example> SIZE=2000 BODY=8BITMIME")
@example("<a@b.c>x")
@example("<a@b.c>  SIZE=1")
@example("<a@b.c> (comment) SIZE=1")
@example("<a@b.c> SIZE=1 ")
@example("<>")
@example("<a..b@c.d>")
@example('<"a b"@x.example>')
@example("<a@[1.2.3.4]>")
def test_every_path_is_read_as_aiosmtpd_reads_it(arg: str) -> None:
    assert read(ours, arg) == read(theirs, arg)


@pytest.mark.parametrize("limit", [0, 3, 64])
def test_the_local_part_limit_still_applies(limit: int) -> None:
    mine, stock = IngestSMTP.__new__(IngestSMTP), SMTP.__new__(SMTP)
    mine.local_part_limit = stock.local_part_limit = limit
    for arg in ("<abcd@x.example>", "<abc@x.example> SIZE=1"):
        assert mine._getaddr(arg) == stock._getaddr(arg)
