"""Unit tests of the shared bounce classifier: one test per important rule."""

from __future__ import annotations

import pytest

from mailfold.bounces import (
    HARD_REASONS,
    REASONS,
    RULES,
    STATUS_REASONS,
    classify,
    find_command,
    find_reply_code,
    find_status,
    prefer_status,
    pseudo_status,
)


def reason_of(status: str = "", reply: str = "", text: str = "", **kw: str) -> str:
    return classify(status=status, reply_code=reply, diagnostic=text, **kw)[0]


def kind_of(status: str = "", reply: str = "", text: str = "", **kw: str) -> str:
    return classify(status=status, reply_code=reply, diagnostic=text, **kw)[1]


# --- the tables ------------------------------------------------------------------------------


def test_every_rule_names_a_known_reason() -> None:
    assert {rule.reason for rule in RULES} <= REASONS
    assert {r for r in STATUS_REASONS.values() if r} <= REASONS
    assert HARD_REASONS <= REASONS


def test_the_vocabulary_is_the_documented_one() -> None:
    assert len(REASONS) == 34
    assert {"userunknown", "feedback", "onhold", "undefined", "delivered"} <= REASONS


# --- diagnostic text first -------------------------------------------------------------------


def test_user_unknown_text_is_a_hard_bounce() -> None:
    assert classify(
        status="5.1.1",
        reply_code="550",
        diagnostic="550 5.1.1 <kijitora@example.jp>... User Unknown",
    ) == ("userunknown", "hard")


def test_user_unknown_text_at_rcpt_is_userunknown_without_a_specific_code() -> None:
    text = "550 Unknown user kijitora@example.jp (in reply to RCPT TO command)"
    assert reason_of("5.0.0", "550", text) == "userunknown"


def test_user_unknown_text_after_data_is_the_recipients_filter() -> None:
    text = "550 Unknown user kijitora@example.net (in reply to end of DATA command)"
    assert reason_of("5.0.0", "550", text) == "filtered"
    assert kind_of("5.0.0", "550", text) == "soft"


def test_mailbox_full_text_beats_a_user_unknown_code() -> None:
    assert reason_of("5.1.1", "", "Not enough disk space") == "mailboxfull"


def test_a_mailbox_full_code_beats_user_unknown_text() -> None:
    assert reason_of("5.2.2", "552", "552 5.2.2 user unknown or mailbox full") == "mailboxfull"


def test_mailbox_full_is_a_soft_bounce() -> None:
    assert kind_of("4.2.2", "452", "Mailbox full") == "soft"


def test_unknown_domain_text_is_a_hard_bounce() -> None:
    text = "Host or domain name not found. Name service error for name=example.jp type=A"
    assert classify(status="5.4.4", reply_code="", diagnostic=text) == ("hostunknown", "hard")


def test_a_dns_failure_is_a_network_error_not_an_unknown_host() -> None:
    text = (
        "Name service error for name=example.org type=MX: Malformed or unexpected name server reply"
    )
    assert reason_of("5.4.4", "", text) == "networkerror"


def test_a_null_mx_is_notaccept_and_hard() -> None:
    text = "Sorry, I couldn't find a mail exchanger or IP address. (#5.4.4)"
    assert classify(status="5.4.4", reply_code="", diagnostic=text) == ("notaccept", "hard")


def test_a_temporary_null_mx_answer_is_soft() -> None:
    assert classify(status="", reply_code="421", diagnostic="421 host does not accept mail") == (
        "notaccept",
        "soft",
    )


def test_has_moved_text_is_a_hard_bounce() -> None:
    text = "550 5.1.6 kijitora@example.jp has been replaced by neko@example.jp"
    assert classify(status="5.1.6", reply_code="550", diagnostic=text) == ("hasmoved", "hard")


def test_spam_wording_at_data_is_spamdetected() -> None:
    text = "550 5.7.1 Our system has detected that this message is likely unsolicited mail"
    assert reason_of("5.7.1", "550", text, command="DATA") == "spamdetected"


def test_spam_wording_before_data_is_not_spamdetected() -> None:
    text = "554 5.7.1 message content rejected"
    assert reason_of("5.7.1", "554", text, command="RCPT") != "spamdetected"


def test_a_blocklisted_ip_is_blocked() -> None:
    assert reason_of("5.7.1", "550", "550 5.7.1 IP address blacklisted by recipient") == "blocked"


def test_missing_reverse_dns_is_requireptr() -> None:
    text = "550 5.7.1 Client host rejected: cannot find your hostname, [192.0.2.1]"
    assert reason_of("5.7.1", "550", text) == "requireptr"


def test_spf_failure_text_is_authfailure() -> None:
    text = "550 5.7.1 SPF check: fail; the sending host is not authorised"
    assert reason_of("5.7.1", "550", text) == "authfailure"


def test_dmarc_status_code_is_authfailure() -> None:
    assert reason_of("5.7.26", "550", "550 5.7.26 Unauthenticated email is not accepted") == (
        "authfailure"
    )


def test_relay_denied_is_norelaying() -> None:
    assert reason_of("5.7.1", "554", "554 5.7.1 <x@example.org>: Relay access denied") == (
        "norelaying"
    )


def test_sender_rejection_at_mail_from_is_rejected() -> None:
    text = "553 5.1.8 <sender@example.org>... Domain of sender address does not exist"
    assert reason_of("5.1.8", "553", text, command="MAIL") == "rejected"


def test_recipient_address_rejected_is_not_a_sender_rejection() -> None:
    text = "550 5.1.1 <x@example.jp>: Recipient address rejected: User unknown in local table"
    assert reason_of("5.1.1", "550", text) == "userunknown"


def test_a_rate_limit_is_speeding() -> None:
    text = "450 4.7.1 Client host rejected: Please try again slower"
    assert reason_of("4.7.1", "450", text) == "speeding"


def test_too_many_connections_is_toomanyconn() -> None:
    assert reason_of("4.3.2", "452", "452 4.3.2 Connection rate limit exceeded.") == "toomanyconn"


def test_a_policy_refusal_is_policyviolation() -> None:
    text = "554 5.7.9 Message not accepted for policy reasons."
    assert reason_of("5.7.9", "554", text) == "policyviolation"


def test_a_virus_is_virusdetected() -> None:
    assert reason_of("5.7.0", "554", "554 5.7.0 Virus detected in message") == "virusdetected"


def test_a_suspended_account_is_suspend_and_soft() -> None:
    text = "550 5.2.1 The email account that you tried to reach is disabled."
    assert classify(status="5.2.1", reply_code="550", diagnostic=text) == ("suspend", "soft")


def test_an_exchange_ndr_code_names_the_reason() -> None:
    text = "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup"
    assert classify(status="5.1.10", reply_code="550", diagnostic=text) == ("userunknown", "hard")


def test_a_retried_out_delivery_is_expired() -> None:
    assert reason_of("", "", "retry timeout exceeded") == "expired"


def test_a_mailer_program_failure_is_mailererror() -> None:
    assert reason_of("4.3.0", "", "temporary failure", diagnostic_type="x-unix") == "mailererror"
    assert reason_of("5.0.0", "", "procmail: Couldn't create /var/mail/x") == "mailererror"


def test_exims_address_parser_error_is_syntaxerror() -> None:
    text = "malformed address: <neko@example.net> may not follow kijitora@example.com"
    assert reason_of("", "", text) == "syntaxerror"


# --- then the status code --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        ("5.1.1", "userunknown"),
        ("5.1.2", "hostunknown"),
        ("5.1.6", "hasmoved"),
        ("5.1.8", "rejected"),
        ("5.1.10", "notaccept"),
        ("5.2.2", "mailboxfull"),
        ("5.2.3", "exceedlimit"),
        ("5.3.4", "mesgtoobig"),
        ("4.4.7", "expired"),
        ("5.6.0", "contenterror"),
        ("5.7.1", "securityerror"),
        ("5.7.25", "requireptr"),
        ("5.7.27", "notaccept"),
    ],
)
def test_a_status_code_alone_gives_its_rfc3463_reason(status: str, reason: str) -> None:
    assert reason_of(status, "550" if status[0] == "5" else "450", "") == reason


def test_a_success_status_is_delivered() -> None:
    assert classify(status="2.1.5", reply_code="250", diagnostic="250 2.1.5 Ok") == (
        "delivered",
        "soft",
    )


def test_a_status_code_in_the_text_is_used_when_none_is_given() -> None:
    assert reason_of("", "", "552 5.2.2 <x@example.jp>... Mailbox Full") == "mailboxfull"


# --- then the reply code ---------------------------------------------------------------------


def test_reply_code_525_is_a_disabled_account() -> None:
    assert reason_of("", "525", "525 access denied") == "suspend"


def test_reply_code_556_is_a_domain_that_takes_no_mail() -> None:
    assert classify(status="", reply_code="556", diagnostic="") == ("notaccept", "hard")


def test_a_command_syntax_reply_is_syntaxerror() -> None:
    assert reason_of("", "503", "503 Bad sequence of commands") == "syntaxerror"


# --- nothing to go on ------------------------------------------------------------------------


def test_nothing_at_all_is_undetermined() -> None:
    assert classify(status=None, reply_code=None, diagnostic=None) == ("undefined", "undetermined")


def test_words_that_match_no_rule_are_onhold() -> None:
    assert classify(status="", reply_code="", diagnostic="something went wrong") == (
        "onhold",
        "soft",
    )


def test_a_delayed_report_with_no_detail_is_expired() -> None:
    assert reason_of("4.0.0", "", "", action="delayed") == "expired"


def test_a_refusal_at_the_greeting_is_blocked() -> None:
    assert reason_of("5.0.0", "554", "554 go home", command="EHLO") == "blocked"


def test_malformed_codes_are_ignored() -> None:
    assert classify(status="x.y.z", reply_code="abc", diagnostic="") == (
        "undefined",
        "undetermined",
    )


# --- the helpers -----------------------------------------------------------------------------


def test_find_status_prefers_a_specific_code_to_a_generic_one() -> None:
    assert find_status("550 5.0.0 mailbox unavailable; 5.1.1 user unknown") == "5.1.1"


def test_find_status_ignores_version_numbers_and_addresses() -> None:
    assert find_status("Exim v4.2.1 at 192.0.2.1") == ""


def test_find_reply_code_skips_numbers_inside_other_tokens() -> None:
    assert find_reply_code("queue id 15501 said 5.1.1 then 550 User unknown") == "550"


def test_find_command_reads_postfix_and_exim_wording() -> None:
    assert find_command("550 unknown (in reply to RCPT TO command)") == "RCPT"
    assert find_command("SMTP error from remote mail server after MAIL FROM:<x@y.z>") == "MAIL"
    assert find_command("554 5.7.1 refused (in reply to end of DATA command)") == "DATA"


def test_prefer_status_lets_a_specific_code_win_over_a_generic_field() -> None:
    assert prefer_status("5.0.0", "5.1.1", "550") == "5.1.1"
    assert prefer_status("5.1.1", "5.7.1", "550") == "5.7.1"
    assert prefer_status("5.2.2", "5.0.0", "552") == "5.2.2"


def test_pseudo_status_encodes_reason_and_class() -> None:
    assert pseudo_status("hostunknown", temporary=False) == "5.0.912"
    assert pseudo_status("expired", temporary=True) == "4.0.947"
    assert pseudo_status("userunknown", temporary=True) == "5.0.911"
    assert pseudo_status("feedback", temporary=False) == ""
