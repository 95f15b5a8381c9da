"""One test per reader: a message written for the test in that format, read by that reader.

The messages are made up (addresses under example.*), each in the layout its mail server uses;
none comes from a corpus. Each names the reader it must be read by and what it must say.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from mailfold.bounces import parse
from mailfold.bounces.readers import AUTOREPLY, FAMILIES, GENERIC, RFC3464, STRUCTURED


@dataclass(frozen=True)
class Case:
    reader: str
    raw: bytes
    recipient: str
    status: str
    reason: str
    hard: bool
    action: str = "failed"


def _mime(headers: str, parts: list[tuple[str, str]], boundary: str = "=_b") -> bytes:
    body = "".join(f"--{boundary}\nContent-Type: {ctype}\n\n{text}\n" for ctype, text in parts)
    return (
        f"{headers}\nMIME-Version: 1.0\n"
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"\n\n'
        f"{body}--{boundary}--\n"
    ).encode()


ORIGINAL = "Message-ID: <m1@shop.example.org>\nFrom: news@shop.example.org\nSubject: Offer\n"

CASES: dict[str, Case] = {
    "rfc3464": Case(
        "rfc3464",
        _mime(
            "From: Delivery Reports <reports@relay.example.net>\nSubject: Delivery report",
            [
                ("text/plain", "Your message could not be delivered."),
                (
                    "message/delivery-status",
                    "Reporting-MTA: dns; relay.example.net\n\n"
                    "Final-Recipient: rfc822; dana@example.com\nAction: failed\n"
                    "Status: 5.2.2\nDiagnostic-Code: smtp; 552 5.2.2 mailbox over quota",
                ),
                ("text/rfc822-headers", ORIGINAL + "To: dana@example.com"),
            ],
        ),
        "dana@example.com",
        "5.2.2",
        "mailboxfull",
        False,
    ),
    "arf": Case(
        "arf",
        (
            "From: fbl@isp.example\nSubject: Abuse report\nMIME-Version: 1.0\n"
            'Content-Type: multipart/report; report-type=feedback-report; boundary="f"\n\n'
            "--f\nContent-Type: text/plain\n\nA subscriber marked this as spam.\n"
            "--f\nContent-Type: message/feedback-report\n\nFeedback-Type: abuse\n"
            "User-Agent: isp-fbl/2.0\nVersion: 1\nOriginal-Rcpt-To: <erin@isp.example>\n"
            f"\n--f\nContent-Type: message/rfc822\n\n{ORIGINAL}To: erin@isp.example\n\nhi\n--f--\n"
        ).encode(),
        "erin@isp.example",
        "",
        "feedback",
        False,
        action="complained",
    ),
    "amazonses-json": Case(
        "amazonses",
        b"From: no-reply@sns.amazonaws.com\nSubject: AWS Notification Message\n\n"
        + json.dumps(
            {
                "Type": "Notification",
                "Message": json.dumps(
                    {
                        "notificationType": "Bounce",
                        "bounce": {
                            "bounceType": "Permanent",
                            "bounceSubType": "MailboxFull",
                            "bouncedRecipients": [{"emailAddress": "finn@example.com"}],
                        },
                        "mail": {"source": "bounce+x@shop.example.org", "messageId": "m-9"},
                    }
                ),
            }
        ).encode(),
        "finn@example.com",
        "5.0.922",
        "mailboxfull",
        False,
    ),
    "amazonses-dsn": Case(
        "amazonses",
        _mime(
            "From: MAILER-DAEMON@email-bounces.amazonses.com\nSubject: Delivery Status Notification",
            [
                ("text/plain", "An error occurred while trying to deliver the mail."),
                (
                    "message/delivery-status",
                    "Reporting-MTA: dns; a8-30.smtp-out.amazonses.com\n\n"
                    "Final-Recipient: rfc822; gail@example.com\nAction: failed\nStatus: 5.1.1\n"
                    "Diagnostic-Code: smtp; 550 5.1.1 gail@example.com: Recipient address rejected",
                ),
            ],
        ),
        "gail@example.com",
        "5.1.1",
        "userunknown",
        True,
    ),
    "googlegroups": Case(
        "googlegroups",
        b"From: Mail Delivery Subsystem <mailer-daemon@googlemail.com>\n"
        b"Subject: Delivery Status Notification (Failure)\n"
        b"X-Failed-Recipients: board@googlegroups.com\n\n"
        b"Hello, the group you tried to contact (board) may not exist, or you may not have\n"
        b"permission to post messages to the group.\n"
        b"Visit https://groups.google.com/support/ for help.\n",
        "board@googlegroups.com",
        "5.0.918",
        "rejected",
        False,
    ),
    "rfc3834": Case(
        "rfc3834",
        b"From: Hana <hana@example.com>\nSubject: Out of office\n"
        b"Auto-Submitted: auto-replied\n\nI am away until Monday and will answer then.\n",
        "hana@example.com",
        "",
        "vacation",
        False,
        action="autoreplied",
    ),
    "powermta": Case(
        "powermta",
        _mime(
            "From: postmaster@mta1.example.net\nSubject: Delivery report",
            [
                ("text/plain", "This is the mail server on mta1.example.net."),
                (
                    "message/delivery-status",
                    "Reporting-MTA: dns;mta1.example.net\nX-PowerMTA-VirtualMTA: pool-a\n\n"
                    "Final-Recipient: rfc822;ivan@example.com\nAction: failed\nStatus: 5.0.0\n"
                    "Diagnostic-Code: smtp;550 mailbox not available\n"
                    "X-PowerMTA-BounceCategory: inactive-mailbox",
                ),
            ],
        ),
        "ivan@example.com",
        "5.0.0",
        "suspend",
        False,
    ),
    "outlook": Case(
        "outlook",
        _mime(
            "From: postmaster@hotmail.com\nSubject: Delivery Status Notification (Failure)",
            [
                ("text/plain", "Delivery to the following recipients failed.\n\n  jo@example.com"),
                (
                    "message/delivery-status",
                    "Reporting-MTA: dns;SN1-MC2.hotmail.com\n\nFinal-Recipient: rfc822;jo@example.com\n"
                    "Action: failed\nStatus: 5.5.0\n"
                    "Diagnostic-Code: smtp;550 Requested action not taken: mailbox unavailable",
                ),
            ],
        ),
        "jo@example.com",
        "5.5.0",
        "userunknown",
        True,
    ),
    "mcafee": Case(
        "mcafee",
        (
            b"From: <MAILER-DAEMON@gw.example.jp>\nSubject: Delivery Status\nMIME-Version: 1.0\n"
            b'Content-Type: multipart/mixed; boundary="m"\n\n'
            b'--m\nContent-Type: text/plain; name="deliveryproblems.txt"\n\n'
            b"    --- The following addresses had delivery problems ---\n\n"
            b"<kai@example.jp>   (User unknown kai@example.jp)\n\n"
            b'--m\nContent-Type: message/delivery-status; name="deliverystatus.txt"\n\n'
            b"Original-Recipient: <kai@example.jp>\nAction: failed\n"
            b"Diagnostic-Code: smtp; 550 User unknown kai@example.jp\nRemote-MTA: 192.0.2.9\n--m--\n"
        ),
        "kai@example.jp",
        "5.0.911",
        "userunknown",
        True,
    ),
    "zoho": Case(
        "zoho",
        b"From: mailer-daemon@mail.zoho.com\nSubject: Undelivered Mail Returned to Sender\n"
        b"X-Mailer: Zoho Mail\n\n"
        b"This message was created automatically by mail delivery software.\n"
        b"A message that you sent could not be delivered to one or more of its recipients.\n\n"
        b"lea@example.net Error, ERROR_CODE :421, ERROR_CODE :, Host not reachable.\n",
        "lea@example.net",
        "4.0.947",
        "expired",
        False,
    ),
    "dragonfly": Case(
        "dragonfly",
        b"From: MAILER-DAEMON <>\nSubject: Mail delivery failed\n\n"
        b"This is the DragonFly Mail Agent v0.13 at df.example.org.\n\n"
        b"There was an error delivering your mail to <max@example.com>.\n\n"
        b"mx.example.com [192.0.2.4] did not like our RCPT TO:\n"
        b"550 5.1.1 <max@example.com>: Recipient address rejected: User unknown\n\n"
        b"Message headers follow.\n\nTo: max@example.com\n",
        "max@example.com",
        "5.1.1",
        "userunknown",
        True,
    ),
    "qmail": Case(
        "qmail",
        b"From: MAILER-DAEMON@mx.example.net\nSubject: failure notice\n\n"
        b"Hi. This is the qmail-send program at mx.example.net.\n"
        b"I'm afraid I wasn't able to deliver your message to the following addresses.\n\n"
        b"<nia@example.com>:\nSorry, I couldn't find any host named example.com. (#5.1.2)\n\n"
        b"--- Below this line is a copy of the message.\n\nTo: nia@example.com\n",
        "nia@example.com",
        "5.1.2",
        "hostunknown",
        True,
    ),
    "exim": Case(
        "exim",
        b"From: Mail Delivery System <Mailer-Daemon@mx.example.net>\n"
        b"Subject: Mail delivery failed: returning message to sender\n\n"
        b"This message was created automatically by mail delivery software.\n\n"
        b"A message that you sent could not be delivered to one or more of its\n"
        b"recipients. This is a permanent error. The following address(es) failed:\n\n"
        b"  omar@example.com\n"
        b"    host mx.example.com [192.0.2.5]\n"
        b"    SMTP error from remote mail server after end of data:\n"
        b"    552 5.3.4 Message size exceeds fixed limit\n",
        "omar@example.com",
        "5.3.4",
        "mesgtoobig",
        False,
    ),
    "postfix": Case(
        "postfix",
        b"From: MAILER-DAEMON@mx.example.net (Mail Delivery System)\n"
        b"Subject: Undelivered Mail Returned to Sender\n\n"
        b"This is the mail system at host mx.example.net.\n\n"
        b"<pia@example.com>: host mx.example.com[192.0.2.6] said: 554 5.7.1 Service\n"
        b"    unavailable; Client host [198.51.100.7] blocked using zen.spamhaus.org\n"
        b"    (in reply to RCPT TO command)\n",
        "pia@example.com",
        "5.7.1",
        "blocked",
        False,
    ),
    "sendmail": Case(
        "sendmail",
        b"From: Mail Delivery Subsystem <MAILER-DAEMON@example.org>\n"
        b"Subject: Returned mail: see transcript for details\n\n"
        b"   ----- The following addresses had permanent fatal errors -----\n"
        b"<quinn@example.com>\n    (reason: 550 5.1.1 <quinn@example.com>... User unknown)\n\n"
        b"   ----- Transcript of session follows -----\n"
        b"... while talking to mx.example.com.:\n>>> RCPT To:<quinn@example.com>\n"
        b"<<< 550 5.1.1 <quinn@example.com>... User unknown\n"
        b"550 5.1.1 <quinn@example.com>... User unknown\n",
        "quinn@example.com",
        "5.1.1",
        "userunknown",
        True,
    ),
    "exchange": Case(
        "exchange",
        b"From: System Administrator <postmaster@corp.example>\nSubject: Undeliverable: Plan\n\n"
        b"Your message\n\n  To:      rosa@corp.example\n  Subject: Plan\n\n"
        b"did not reach the following recipient(s):\n\n"
        b"rosa@corp.example on Mon, 3 Mar 2025 10:00:00 +0000\n"
        b"    The e-mail account does not exist at the organization this message was sent to.\n"
        b"    <mail.corp.example #5.1.1>\n",
        "rosa@corp.example",
        "5.1.1",
        "userunknown",
        True,
    ),
    "office365": Case(
        "office365",
        _mime(
            "From: Microsoft Outlook <postmaster@contoso.onmicrosoft.com>\nSubject: Undeliverable",
            [
                (
                    "text/plain",
                    "Delivery has failed to these recipients or groups:\n\nsam@contoso.example\n"
                    "The email address wasn't found at the destination domain.\n\n"
                    "Diagnostic information for administrators:\n\n"
                    "Remote Server returned '550 5.1.10 RESOLVER.ADR.RecipientNotFound; "
                    "Recipient not found by SMTP address lookup'",
                ),
                (
                    "message/delivery-status",
                    "Reporting-MTA: dns;AM0PR01.eurprd01.prod.outlook.com\n\n"
                    "Final-recipient: RFC822; sam@contoso.example\nAction: failed\n"
                    "Status: 5.1.10\nDiagnostic-Code: smtp;550 5.1.10 "
                    "RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
                ),
            ],
        ),
        "sam@contoso.example",
        "5.1.10",
        "userunknown",
        True,
    ),
    "gmail": Case(
        "gmail",
        b"From: Mail Delivery Subsystem <mailer-daemon@googlemail.com>\n"
        b"Subject: Delivery Status Notification (Failure)\n\n"
        b"Delivery to the following recipient failed permanently:\n\n     tess@example.net\n\n"
        b"Technical details of permanent failure:\n"
        b"DNS Error: Domain name not found\n",
        "tess@example.net",
        "5.0.912",
        "hostunknown",
        True,
    ),
    "courier": Case(
        "courier",
        b"From: Courier mail server at mx.example.net <@>\nSubject: NOTICE: mail delivery status.\n\n"
        b"This is a delivery status notification from mx.example.net,\n"
        b"running the Courier mail server, version 1.1.\n\n"
        b"The original message was received on Mon, 3 Mar 2025 10:00:00 +0000\n\n"
        b"<ugo@example.com>: host mx.example.com [192.0.2.8]\n"
        b"<<< 550 5.1.1 <ugo@example.com>... No such user\n",
        "ugo@example.com",
        "5.1.1",
        "userunknown",
        True,
    ),
    "opensmtpd": Case(
        "opensmtpd",
        b"From: Mailer Daemon <MAILER-DAEMON@smtpd.example.org>\n"
        b"Subject: Delivery status notification: error\n\n"
        b"    Hi!\n\n    This is the MAILER-DAEMON, please DO NOT REPLY to this e-mail.\n\n"
        b"    An error has occurred while attempting to deliver a message for\n"
        b"    the following list of recipients:\n\n"
        b"vera@example.com: 550 5.2.2 Mailbox full\n\n    Below is a copy of the original message:\n",
        "vera@example.com",
        "5.2.2",
        "mailboxfull",
        False,
    ),
    "domino": Case(
        "domino",
        b"From: Postmaster@notes.example.co\nSubject: DELIVERY FAILURE: User wes not listed\n\n"
        b"Your message\n\n  Subject: Minutes\n\nwas not delivered to:\n\n  wes@notes.example.co\n\n"
        b"because:\n\n  User wes (wes@notes.example.co) not listed in Domino Directory\n",
        "wes@notes.example.co",
        "5.0.911",
        "userunknown",
        True,
    ),
    "notes": Case(
        "domino",
        b"From: POSTMASTER@gw.example.co\nSubject: Undeliverable message\n\n"
        b"------- Failure Reasons  --------\n\nUser not listed in public Name & Address Book\n"
        b"xia@example.co\n\n------- Returned Message --------\nTo: xia@example.co\n",
        "xia@example.co",
        "5.0.911",
        "userunknown",
        True,
    ),
    "yahoo": Case(
        "yahoo",
        b"From: MAILER-DAEMON@yahoo.com\nSubject: Failure Notice\n\n"
        b"Sorry, we were unable to deliver your message to the following address.\n\n"
        b"<yara@example.net>:\nRemote host said: 552 5.2.2 <yara@example.net>: mailbox full "
        b"[RCPT_TO]\n",
        "yara@example.net",
        "5.2.2",
        "mailboxfull",
        False,
    ),
    "imailserver": Case(
        "imailserver",
        b'From: "Postmaster" <postmaster@mail.example.org>\nSubject: Undeliverable Mail\n'
        b"X-Mailer: <SMTP32 v8.22>\n\nUnknown user: zed@mail.example.org\n\n"
        b"Original message follows.\n\nTo: zed@mail.example.org\n",
        "zed@mail.example.org",
        "5.0.911",
        "userunknown",
        True,
    ),
    "messagingserver": Case(
        "messagingserver",
        _mime(
            "From: postmaster@mail.example.com\nSubject: Delivery Notification: Delivery has failed",
            [
                (
                    "text/plain",
                    "This report relates to a message you sent with the following header fields:\n\n"
                    "  To: abe@example.jp\n\n"
                    "Your message cannot be delivered to the following recipients:\n\n"
                    "  Recipient address: abe@example.jp\n"
                    "  Reason: Remote SMTP server has rejected address\n"
                    "  Diagnostic code: smtp;550 <abe@example.jp>: no such mailbox",
                ),
                (
                    "message/delivery-status",
                    "Reporting-MTA: dns;mail.example.com\n\nFinal-recipient: rfc822;abe@example.jp\n"
                    "Action: failed\nStatus: 5.0.0 (Remote SMTP server has rejected address)\n"
                    "Diagnostic-code: smtp;550 <abe@example.jp>: no such mailbox",
                ),
            ],
        ),
        "abe@example.jp",
        "5.0.0",
        "userunknown",
        True,
    ),
    "ezweb": Case(
        "ezweb",
        b"From: Postmaster@ezweb.ne.jp\nSubject: Mail System Error - Returned Mail\n\n"
        b"The user(s) account is temporarily over quota.\n\n<ben-carrier@ezweb.ne.jp>\n",
        "ben-carrier@ezweb.ne.jp",
        "4.0.922",  # "temporarily": the stand-in code is a temporary one
        "mailboxfull",
        False,
    ),
    "verizon": Case(
        "verizon",
        b"From: MMSC NDR Administrator <sysadmin@mms.vzwpix.com>\nSubject: Undeliverable Message\n\n"
        b"Message could not be delivered to mobile.\nError: No valid recipients for this MM\n\n"
        b"Original Message:\nFrom: Shop <news@shop.example.org>\nTo: 5550100@vzwpix.com\n"
        b"Subject: Offer\n",
        "5550100@vzwpix.com",
        "5.0.911",
        "userunknown",
        True,
    ),
    "mailinglist": Case(
        "mailinglist",
        b"From: garden-admin@lists.example.org\n"
        b"Subject: You news@shop.example.org are not member (garden ML)\n\n"
        b"You are not a member of this mailing list <garden@lists.example.org>.\n"
        b"Send 'help' to garden-ctl@lists.example.org to learn how to join.\n",
        "garden@lists.example.org",
        "5.0.918",
        "rejected",
        False,
    ),
    "text": Case(
        "text",
        b"From: robot@appliance.example\nSubject: Message delivery has failed\n\n"
        b"Unable to deliver message to: <cy@example.com>\n"
        b"Delivery failed for the following reason:\n"
        b"Server mx.example.com[192.0.2.9] failed with: 550 5.7.1 <cy@example.com> Relaying denied\n",
        "cy@example.com",
        "5.7.1",
        "norelaying",
        False,
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_format_is_read_by_its_reader(name: str) -> None:
    case = CASES[name]
    report = parse(case.raw)
    assert report.format == case.reader
    (r,) = report.recipients
    assert (r.recipient, r.status, r.reason, r.hard, r.action) == (
        case.recipient,
        case.status,
        case.reason,
        case.hard,
        case.action,
    )
    assert dict(r.explanation)["recipient"]


def test_every_reader_has_a_hand_written_message() -> None:
    readers = {r.name for r in (*STRUCTURED, *FAMILIES, RFC3464, AUTOREPLY, GENERIC)}
    assert readers == {c.reader for c in CASES.values()}
