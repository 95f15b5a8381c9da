"""Tracking tokens: they round-trip, and any tampering, unknown key or forgery fails."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailfold.events import (
    VERP_TOKEN_LENGTH,
    InvalidToken,
    Keyring,
    TokenKind,
    TrackingClaims,
    VerpRecord,
    verp_ref,
)
from mailfold.sender.domain.message import verp_return_path

CLAIMS = TrackingClaims(
    TokenKind.CLICK, "acme", "0190f000-0000-7000-8000-000000000001", "ann@example.org",
    "https://example.org/pricing?x=1&y=2",
)  # fmt: skip
RING = Keyring({"k2": b"a-fairly-long-secret-key", "k1": b"an-older-secret-key-here"}, "k2")


def test_a_token_round_trips_its_claims() -> None:
    token = RING.sign(CLAIMS)
    assert RING.verify(token) == CLAIMS


def test_a_token_is_url_safe_and_compact() -> None:
    token = RING.sign(TrackingClaims(TokenKind.OPEN, "acme", CLAIMS.email_id, "ann@example.org"))
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")
    assert len(token) < 140


def test_tampering_any_byte_fails() -> None:
    token = RING.sign(CLAIMS)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."
    for i, ch in enumerate(token):
        for replacement in {alphabet[(alphabet.index(ch) + 1) % len(alphabet)], "A", "."} - {ch}:
            forged = token[:i] + replacement + token[i + 1 :]
            with pytest.raises(InvalidToken):
                RING.verify(forged)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_never_verifies(text: str) -> None:
    with pytest.raises(InvalidToken):
        RING.verify(text)


def test_truncated_and_extended_tokens_fail() -> None:
    token = RING.sign(CLAIMS)
    for forged in (token[:-1], token + "A", token[1:], "", "..", token.replace(".", "", 1)):
        with pytest.raises(InvalidToken):
            RING.verify(forged)


def test_an_unknown_key_id_fails() -> None:
    other = Keyring({"k9": b"a-fairly-long-secret-key"}, "k9")
    with pytest.raises(InvalidToken, match="unknown key id"):
        RING.verify(other.sign(CLAIMS))


def test_a_token_signed_with_another_secret_under_the_same_key_id_fails() -> None:
    impostor = Keyring({"k2": b"not-the-real-secret-key!"}, "k2")
    with pytest.raises(InvalidToken, match="bad signature"):
        RING.verify(impostor.sign(CLAIMS))


def test_tokens_signed_before_a_rotation_still_verify() -> None:
    before = Keyring({"k1": b"an-older-secret-key-here"}, "k1")
    token = before.sign(CLAIMS)
    after = Keyring.parse("k2:a-fairly-long-secret-key,k1:an-older-secret-key-here")
    assert after.current == "k2"
    assert after.verify(token) == CLAIMS
    assert after.sign(CLAIMS).startswith("k2.")


def test_a_keyring_refuses_short_secrets_and_bad_specs() -> None:
    with pytest.raises(ValueError, match="shorter than 16 bytes"):
        Keyring({"k": b"short"}, "k")
    with pytest.raises(ValueError, match="kid:secret"):
        Keyring.parse("nocolon")


def _record(recipients: tuple[str, ...] = ("Ann@Example.org", "bob@example.org")) -> VerpRecord:
    return VerpRecord(org_id="acme", email_id=CLAIMS.email_id, recipients=recipients)


def test_a_verp_token_round_trips_whatever_the_case_the_mail_system_gives_it() -> None:
    ring = Keyring.parse("k2:a-fairly-long-secret-key")
    record = _record()
    claims = TrackingClaims(TokenKind.BOUNCE, "acme", CLAIMS.email_id, "Ann@Example.org")
    token = ring.sign_verp(claims, record.index_of("ann@example.org"))
    assert token == token.lower()
    assert len(token) == VERP_TOKEN_LENGTH
    assert not set(token) & set("@.-+")
    for form in (token, token.upper()):
        ticket = ring.open_verp(form)
        assert ticket is not None
        assert ticket.ref == record.ref == verp_ref("acme", CLAIMS.email_id)
        assert ring.verify_verp_ticket(ticket, record) == claims


def test_a_short_verp_token_needs_its_own_record() -> None:
    ring = Keyring.parse("k2:a-fairly-long-secret-key")
    record = _record()
    claims = TrackingClaims(TokenKind.BOUNCE, "acme", CLAIMS.email_id, "bob@example.org")
    ticket = ring.open_verp(ring.sign_verp(claims, 1))
    assert ticket is not None
    assert ring.verify_verp_ticket(ticket, record).recipient == "bob@example.org"
    with pytest.raises(InvalidToken):
        ring.verify_verp_ticket(ticket, None)  # expired or never sent
    other_email = VerpRecord(org_id="acme", email_id="e-other", recipients=record.recipients)
    with pytest.raises(InvalidToken):
        ring.verify_verp_ticket(ticket, other_email)
    swapped = VerpRecord(
        org_id="acme", email_id=CLAIMS.email_id, recipients=("bob@example.org", "eve@example.org")
    )
    with pytest.raises(InvalidToken):  # a tampered record does not verify either
        ring.verify_verp_ticket(ticket, swapped)
    with pytest.raises(InvalidToken):  # another key's token
        Keyring.parse("k2:another-long-secret-key!").verify_verp_ticket(ticket, record)


def test_a_short_verp_token_verifies_after_a_key_rotation() -> None:
    old = Keyring.parse("k1:the-old-secret-key-0001")
    rotated = Keyring.parse("k2:the-new-secret-key-0002,k1:the-old-secret-key-0001")
    record = _record()
    claims = TrackingClaims(TokenKind.BOUNCE, "acme", CLAIMS.email_id, "Ann@Example.org")
    ticket = rotated.open_verp(old.sign_verp(claims, 0))
    assert ticket is not None
    assert rotated.verify_verp_ticket(ticket, record) == claims


def _open_and_verify(ring: Keyring, token: str, record: VerpRecord) -> TrackingClaims:
    ticket = ring.open_verp(token)
    if ticket is None:
        raise InvalidToken("not a short token")
    return ring.verify_verp_ticket(ticket, record)


def test_a_tampered_short_verp_token_fails() -> None:
    ring = Keyring.parse("k2:a-fairly-long-secret-key")
    record = _record()
    claims = TrackingClaims(TokenKind.BOUNCE, "acme", CLAIMS.email_id, "Ann@Example.org")
    token = ring.sign_verp(claims, 0)
    for i, ch in enumerate(token):
        forged = token[:i] + ("a" if ch != "a" else "b") + token[i + 1 :]
        with pytest.raises(InvalidToken):
            _open_and_verify(ring, forged, record)
    for bad in ("", "x" * 36, "!" * VERP_TOKEN_LENGTH, token + "a"):
        with pytest.raises(InvalidToken):
            ring.open_verp(bad)


@settings(max_examples=200, deadline=None)
@given(
    org_id=st.text(min_size=1, max_size=200),
    email_id=st.text(min_size=1, max_size=300),
    recipient=st.emails(),
    index=st.integers(min_value=0, max_value=0xFFFF),
    kid=st.from_regex(r"[a-z0-9_-]{1,16}", fullmatch=True),
)
def test_every_verp_local_part_fits_in_64_octets(
    org_id: str, email_id: str, recipient: str, index: int, kid: str
) -> None:
    ring = Keyring({kid: b"a-fairly-long-secret-key"}, kid)
    address = verp_return_path(
        ring,
        org_id=org_id,
        email_id=email_id,
        recipient=recipient,
        index=index,
        mail_domain="mail.example.org",
    )
    local = address.rpartition("@")[0]
    assert len(local.encode()) <= 64
    assert local == local.lower()
    ticket = ring.open_verp(local.removeprefix("bounce+").upper())
    assert ticket is not None
    assert ticket.index == index


def test_an_old_long_verp_token_still_verifies_whatever_its_case() -> None:
    ring = Keyring.parse("k2:a-fairly-long-secret-key")
    claims = TrackingClaims(TokenKind.BOUNCE, "acme", CLAIMS.email_id, "Ann@Example.org")
    token = ring.sign_long_verp(claims)
    assert len("bounce+" + token) > 64  # why the short form exists
    assert ring.open_verp(token) is None
    assert ring.verify_verp(token) == claims
    assert ring.verify_verp(token.upper()) == claims


def test_a_tampered_long_verp_token_fails() -> None:
    ring = Keyring.parse("k2:a-fairly-long-secret-key")
    token = ring.sign_long_verp(TrackingClaims(TokenKind.BOUNCE, "acme", "e1", "a@b.c"))
    for i, ch in enumerate(token):
        if ch == "-":
            continue
        forged = token[:i] + ("a" if ch != "a" else "b") + token[i + 1 :]
        with pytest.raises(InvalidToken):
            ring.verify_verp(forged)
    with pytest.raises(InvalidToken):
        ring.verify_verp(RING.sign(CLAIMS))
