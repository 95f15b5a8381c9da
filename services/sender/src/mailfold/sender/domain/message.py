"""The MIME message and its envelope: headers, parts, Message-ID and the VERP return path.

Every message is 7-bit with CRLF line ends, which any SMTP server takes without 8BITMIME.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from email.header import Header
from email.utils import format_datetime
from typing import Final
from urllib.parse import quote

from mailfold.events import AttachmentRef, EmailComposed, Keyring, TokenKind, TrackingClaims
from mailfold.sender.domain.addresses import parse_mailbox

VERP_PREFIX: Final = "bounce+"
CRLF: Final = "\r\n"
_MAX_LINE: Final = 998  # RFC 5322: a line is at most 998 characters
_MAX_PLAIN_HEADER: Final = 900
_FOLD_AT: Final = 78
_BREAKS: Final = re.compile(r"[\r\n]+")
_QUOTE_SPECIALS: Final = re.compile(r'["\\]')
_ESCAPE: Final = r"\\\g<0>"  # a backslash before the matched quote or backslash
_TOKEN: Final = re.compile(r"^[A-Za-z0-9!#$&^_.+-]+$")


@dataclass(frozen=True, slots=True)
class Body:
    """The loaded content of a composed email."""

    html: str | None
    text: str | None
    attachments: tuple[tuple[AttachmentRef, bytes], ...] = ()


def message_id(email_id: str, mail_domain: str) -> str:
    """`<email_id@mail_domain>`: replies and reports name the email they are about."""
    return f"<{email_id}@{mail_domain}>"


def verp_return_path(
    keys: Keyring, *, org_id: str, email_id: str, recipient: str, index: int, mail_domain: str
) -> str:
    """`bounce+<token>@<mail domain>`: a bounce to it names the email and the recipient.

    `index` is the recipient's position in the email's VerpRecord; the local part is 44
    octets, inside RFC 5321's 64.
    """
    claims = TrackingClaims(TokenKind.BOUNCE, org_id, email_id, recipient)
    return f"{VERP_PREFIX}{keys.sign_verp(claims, index)}@{mail_domain}"


def decode_text(data: bytes, content_type: str) -> str:
    """Body bytes as text, in the charset their content type names (UTF-8 when it names none)."""
    charset = "utf-8"
    for param in content_type.split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key.strip().lower() == "charset" and value.strip():
            charset = value.strip().strip('"')
    try:
        return data.decode(charset, errors="replace")
    except LookupError:
        return data.decode("utf-8", errors="replace")


def _split_type(content_type: str) -> tuple[str, str]:
    main, _, sub = content_type.split(";")[0].strip().lower().partition("/")
    # Composite types need parsed parts, not bytes: such an attachment travels as opaque data.
    if not main or not sub or main in {"multipart", "message"} or not _TOKEN.match(main + sub):
        return "application", "octet-stream"
    return main, sub


def _one_line(text: str) -> str:
    """Header text without line breaks: a CR or LF in a value could start a new header."""
    return _BREAKS.sub(" ", text)


def _unstructured(name: str, value: str) -> str:
    value = _one_line(value)
    if value.isascii() and len(name) + len(value) < _MAX_PLAIN_HEADER:
        return value
    return Header(value, "utf-8", header_name=name).encode(linesep=CRLF)


def _address_list(addresses: Sequence[str], name: str) -> str:
    """`a@x, b@y`, folded before 78 columns (addresses are checked addr-specs, no names)."""
    out, width = "", len(name) + 2
    for i, address in enumerate(parse_mailbox(a).address for a in addresses):
        piece = address if i == 0 else ", " + address
        if i and width + len(piece) > _FOLD_AT:
            out += "," + CRLF + " " + address
            width = 1 + len(address)
        else:
            out += piece
            width += len(piece)
    return out


_PARAM_CHUNK = 60


def _param(name: str, value: str) -> str:
    """A MIME parameter: quoted when short ASCII, else RFC 2231 encoded and, when long,
    split into numbered continuations on folded lines (a header line must stay under 998)."""
    value = _one_line(value)
    if value.isascii() and len(value) <= _PARAM_CHUNK:
        escaped = _QUOTE_SPECIALS.sub(_ESCAPE, value)
        return f'{name}="{escaped}"'
    encoded = quote(value, safe="")
    if len(encoded) <= _PARAM_CHUNK:
        return f"{name}*=utf-8''{encoded}"
    chunks: list[str] = []
    start = 0
    while start < len(encoded):
        end = min(start + _PARAM_CHUNK, len(encoded))
        # Never split a %XX escape between two continuations.
        cut = encoded.rfind("%", max(start, end - 2), end)
        if cut != -1 and end < len(encoded) and cut > start:
            end = cut
        chunks.append(encoded[start:end])
        start = end
    parts = [f"{name}*0*=utf-8''{chunks[0]}"]
    parts += [f"{name}*{i}*={chunk}" for i, chunk in enumerate(chunks[1:], 1)]
    return (";" + CRLF + " ").join(parts)


def _lines(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")


def _text_part(text: str, subtype: str) -> _Part:
    data = text.replace("\r\n", "\n").replace("\r", "\n")
    if data and not data.endswith("\n"):
        data += "\n"
    raw = data.encode("utf-8")
    if data.isascii() and all(len(line) <= _MAX_LINE for line in data.split("\n")):
        cte, body = "7bit", _lines(raw)
    else:
        cte, body = "quoted-printable", _lines(binascii.b2a_qp(raw, istext=True))
    headers = [
        ("Content-Type", f'text/{subtype}; charset="utf-8"'),
        ("Content-Transfer-Encoding", cte),
    ]
    return _Part(headers, body)


def _attachment_part(ref: AttachmentRef, data: bytes) -> _Part:
    maintype, subtype = _split_type(ref.content_type)
    headers = [
        ("Content-Type", f"{maintype}/{subtype}; {_param('name', ref.name)}"),
        ("Content-Disposition", f"attachment; {_param('filename', ref.name)}"),
        ("Content-Transfer-Encoding", "base64"),
    ]
    return _Part(headers, _lines(base64.encodebytes(data)))


def _multipart(subtype: str, parts: Sequence[_Part]) -> _Part:
    while True:
        boundary = f"=_mailfold_{secrets.token_hex(12)}"
        marker = boundary.encode()
        if not any(marker in part.body for part in parts):
            break
    body = bytearray()
    for part in parts:
        body += b"--" + marker + b"\r\n" + part.head() + b"\r\n" + part.body
    body += b"--" + marker + b"--\r\n"
    headers = [("Content-Type", f'multipart/{subtype}; boundary="{boundary}"')]
    return _Part(headers, bytes(body))


@dataclass(frozen=True, slots=True)
class _Part:
    headers: list[tuple[str, str]]
    body: bytes

    def head(self) -> bytes:
        return "".join(f"{k}: {v}{CRLF}" for k, v in self.headers).encode("ascii")


def build(composed: EmailComposed, body: Body, *, mail_domain: str, date: datetime) -> bytes:
    """The message as it goes on the wire: 7-bit, CRLF. Bcc recipients are in the envelope only.

    Assembled directly rather than through `email.message`: the standard library's generator
    costs milliseconds per message, which is most of a mass email's sending time. The tests
    parse every shape this produces back with the standard library.
    """
    if body.text is not None and body.html is not None:
        content = _multipart(
            "alternative", [_text_part(body.text, "plain"), _text_part(body.html, "html")]
        )
    elif body.html is not None:
        content = _text_part(body.html, "html")
    else:
        content = _text_part(body.text or "", "plain")
    if body.attachments:
        content = _multipart(
            "mixed", [content, *(_attachment_part(ref, data) for ref, data in body.attachments)]
        )
    headers = [("From", parse_mailbox(composed.from_addr).address)]
    if composed.to:
        headers.append(("To", _address_list(composed.to, "To")))
    if composed.cc:
        headers.append(("Cc", _address_list(composed.cc, "Cc")))
    headers += [
        ("Subject", _unstructured("Subject", composed.subject)),
        ("Date", format_datetime(date)),
        ("Message-ID", message_id(composed.email_id, mail_domain)),
        ("MIME-Version", "1.0"),
        *content.headers,
    ]
    return _Part(headers, content.body).head() + b"\r\n" + content.body
