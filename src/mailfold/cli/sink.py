"""The local sink MX of `mailfold dev`: accepts every message and keeps it as a .eml file.

Nothing leaves the machine in dev: the sender routes every domain here. A recipient whose local
part starts with `nobody` is refused with `550 5.1.1`, so the demo can show a bounce. The sink
also accepts AUTH with any credentials, standing in for a user's submission server.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import warnings
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from mailfold.events import new_id


class SinkHandler:
    """Keeps each accepted message under `<folder>/<recipient>/<id>.eml`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address.split("@", 1)[0].lower().startswith("nobody"):
            return "550 5.1.1 <" + address + ">: Recipient address rejected: User unknown"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        message_id = new_id()
        content = envelope.original_content or b""
        header = f"X-Sink-Mail-From: {envelope.mail_from}\r\n".encode()
        for rcpt in envelope.rcpt_tos:
            target = self.folder / _safe(rcpt.lower())
            target.mkdir(parents=True, exist_ok=True)
            (target / f"{message_id}.eml").write_bytes(header + content)
        return f"250 2.0.0 Ok: queued as {message_id}"


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "@.-_+" else "_" for c in text)


def _accept_any(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
) -> AuthResult:
    return AuthResult(success=isinstance(data, LoginPassword))


async def serve(host: str, port: int, folder: Path) -> None:
    """Serve until SIGINT/SIGTERM."""
    loop = asyncio.get_running_loop()
    handler = SinkHandler(folder)
    server = await loop.create_server(
        lambda: SMTP(
            handler,
            hostname="sink.mailfold.localhost",
            authenticator=_accept_any,
            auth_require_tls=False,
            data_size_limit=50 * 1024 * 1024,
        ),
        host,
        port,
    )
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"sink MX listening on {host}:{port}, keeping mail in {folder}", flush=True)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    """`python -m mailfold.cli.sink --port N --dir D`."""
    parser = argparse.ArgumentParser(prog="mailfold-sink")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=2526)
    parser.add_argument("--dir", type=Path, default=Path(".data/sink"))
    args = parser.parse_args(argv)
    # aiosmtpd warns about its own use of a deprecated attribute when AUTH is enabled.
    warnings.filterwarnings("ignore", message="Session.login_data is deprecated")
    args.dir.mkdir(parents=True, exist_ok=True)
    asyncio.run(serve(args.host, args.port, args.dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
