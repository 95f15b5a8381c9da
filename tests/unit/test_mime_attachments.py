"""Taking the attachments out of a kept raw message (received and BCC-dropbox mail)."""

from __future__ import annotations

from email.message import EmailMessage

from mailfold.runtime.attachments import attachments_size, may_have_attachments, mime_attachments


def _message() -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "ann@example.org"
    msg["To"] = "rep@acme.example"
    msg["Subject"] = "Files"
    msg.set_content("See the files.")
    msg.add_alternative("<p>See the files.</p>", subtype="html")
    return msg


def test_every_attachment_comes_out_decoded_with_its_name_nested_ones_included() -> None:
    msg = _message()
    msg.add_attachment(b"%PDF-1.7 data", maintype="application", subtype="pdf", filename="a.pdf")
    inner = EmailMessage()
    inner["Subject"] = "forwarded"
    inner.set_content("inner body")
    inner.add_attachment(b"\x89PNG", maintype="image", subtype="png", filename="Bild ä.png")
    msg.add_attachment(inner)
    raw = msg.as_bytes()

    found = {a.name: (a.content_type, a.data) for a in mime_attachments(raw)}

    assert found["a.pdf"] == ("application/pdf", b"%PDF-1.7 data")
    assert found["Bild ä.png"] == ("image/png", b"\x89PNG")
    assert attachments_size(raw) >= len(b"%PDF-1.7 data") + len(b"\x89PNG")


def test_a_plain_message_has_none_and_is_not_parsed() -> None:
    msg = EmailMessage()
    msg["Subject"] = "plain"
    msg.set_content("no files")
    raw = msg.as_bytes()
    assert not may_have_attachments(raw)
    assert list(mime_attachments(raw)) == []
    assert attachments_size(raw) == 0


def test_broken_mime_never_raises() -> None:
    raw = (
        b"Content-Type: multipart/mixed; boundary=X\r\n\r\n--X\r\n"
        b"Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=x.bin\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n!!!not base64!!!\r\n"
    )
    found = list(mime_attachments(raw))
    assert [a.name for a in found] == ["x.bin"]
