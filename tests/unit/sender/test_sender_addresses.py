"""Address syntax: what RFC 5321/5322 let a server take in RCPT TO, and nothing else."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailfold.sender.domain.addresses import InvalidAddress, is_valid, parse_mailbox

VALID = [
    "ann@example.org",
    "Ann.Lee+crm@Example.ORG",
    "o'brien@example.co.uk",
    "x@a.io",
    '"ann lee"@example.org',
    '"quoted\\"inside"@example.org',
    "user@[192.0.2.1]",
    "user@[IPv6:2001:db8::1]",
    "user@sub-domain.example.org",
    "user@example.org.",
    "!#$%&'*+/=?^_`{|}~-@example.org",
    "ann@bücher.example",
]

INVALID = [
    ("", "empty"),
    ("ann", "no @"),
    ("@example.org", "local part"),
    ("ann@", "domain is missing"),
    ("ann@@example.org", "local part"),
    ("ann lee@example.org", "dot-atom"),
    (".ann@example.org", "dot-atom"),
    ("ann.@example.org", "dot-atom"),
    ("an..n@example.org", "dot-atom"),
    ("ann@-example.org", "invalid label"),
    ("ann@example-.org", "invalid label"),
    ("ann@exa_mple.org", "invalid label"),
    ("ann@example..org", "invalid label"),
    ("ann@192.0.2.1", "without brackets"),
    ("ann@[300.1.1.1]", "address literal"),
    ("ann@[IPv6:zz::1]", "address literal"),
    ("änn@example.org", "non-ASCII"),
    ("a" * 65 + "@example.org", "longer than 64"),
    ("ann@" + "a" * 64 + ".org", "invalid label"),
    ("ann@" + ".".join(["abcdefghi"] * 26) + ".org", "longer than 253"),
    ("Ann <ann@example.org>", "dot-atom"),
]


@pytest.mark.parametrize("address", VALID)
def test_valid_addresses_are_accepted(address: str) -> None:
    assert is_valid(address)


@pytest.mark.parametrize(("address", "why"), INVALID)
def test_invalid_addresses_are_refused_with_the_reason(address: str, why: str) -> None:
    with pytest.raises(InvalidAddress, match=why):
        parse_mailbox(address)


def test_an_internationalised_domain_is_carried_in_its_ascii_form() -> None:
    assert parse_mailbox("ann@bücher.example").address == "ann@xn--bcher-kva.example"


def test_addresses_compare_case_insensitively_but_keep_their_case() -> None:
    mailbox = parse_mailbox(" Ann@Example.ORG ")
    assert mailbox.address == "Ann@Example.ORG"
    assert mailbox.key == "ann@example.org"


_atext = st.sampled_from(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+/=?^_`{|}~-"
)
_atom = st.text(_atext, min_size=1, max_size=10)
_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)


@given(
    st.lists(_atom, min_size=1, max_size=4),
    st.lists(_label, min_size=1, max_size=4),
    st.from_regex(r"[a-z]{2,6}", fullmatch=True),
)
def test_any_dot_atom_at_a_host_name_is_accepted(
    atoms: list[str], labels: list[str], tld: str
) -> None:
    address = ".".join(atoms) + "@" + ".".join([*labels, tld])
    assert parse_mailbox(address).address == address


@given(st.text(max_size=80))
def test_the_parser_either_accepts_or_says_why_never_crashes(text: str) -> None:
    if not is_valid(text):
        with pytest.raises(InvalidAddress, match=r"\w"):
            parse_mailbox(text)
        return
    mailbox = parse_mailbox(text)
    assert "@" in mailbox.address
    assert len(mailbox.address) <= 254
