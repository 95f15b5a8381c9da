"""Tracking tokens: they round-trip, and any tampering, unknown key or forgery fails."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailfold.events import InvalidToken, Keyring, TokenKind, TrackingClaims

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


def test_a_verp_token_round_trips_whatever_the_case_the_mail_system_gives_it() -> None:
    ring = Keyring.parse("k2:a-fairly-long-secret-key")
    claims = TrackingClaims(TokenKind.BOUNCE, "acme", CLAIMS.email_id, "Ann@Example.org")
    token = ring.sign_verp(claims)
    assert token == token.lower()
    assert "@" not in token
    assert "." not in token
    assert ring.verify_verp(token) == claims
    assert ring.verify_verp(token.upper()) == claims


def test_a_tampered_verp_token_fails() -> None:
    ring = Keyring.parse("k2:a-fairly-long-secret-key")
    token = ring.sign_verp(TrackingClaims(TokenKind.BOUNCE, "acme", "e1", "a@b.c"))
    for i, ch in enumerate(token):
        if ch == "-":
            continue
        forged = token[:i] + ("a" if ch != "a" else "b") + token[i + 1 :]
        with pytest.raises(InvalidToken):
            ring.verify_verp(forged)
    with pytest.raises(InvalidToken):
        ring.verify_verp(RING.sign(CLAIMS))
