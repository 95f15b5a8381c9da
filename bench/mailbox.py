"""Mailbox benchmark: messages synced per second from a Dovecot folder into events.

`mailbox.sync`: a real Dovecot (installed from Debian packages) holds 10,000 messages in INBOX,
each from an address on a record. The figure is one full first sync of the folder by the mailbox
service's sync (`MailboxSync.sync_folder` over aioimaplib, with its real NATS ports: the address
index lookups, the event publishes with their acks, the KV state and locators), from SELECT to
the saved cursor. The baseline is a bare aioimaplib client fetching the same messages (SELECT,
UID SEARCH, UID FETCH BODY.PEEK[] in the same batches) and doing nothing with them, in the same
run. Both run once untimed first so Dovecot's index and the page cache are warm, then three
times each, alternated; the best of each is kept.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path

import aioimaplib

from _results import record
from mailfold.mailbox.adapters.imap import FETCH_BATCH

MESSAGES = int(os.environ.get("MAILFOLD_BENCH_MAILBOX_MESSAGES", "10000"))
ROUNDS = 3
ORG = "bench"
USER = "rep"
PASSWORD = "bench-password"


def _message(n: int) -> bytes:
    return (
        f"From: Customer {n % 50} <customer{n % 50}@client.example>\r\n"
        f"To: rep@acme.example\r\nSubject: Question {n}\r\n"
        f"Message-ID: <bench-{n}@client.example>\r\n"
        f"Date: {format_datetime(datetime.now(UTC))}\r\nMIME-Version: 1.0\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n\r\n"
        + "A line of an ordinary customer email, about as long as most are.\r\n"
        * 20
    ).encode()


async def _bare(port: int) -> float:
    client = aioimaplib.IMAP4(host="127.0.0.1", port=port, timeout=60)
    await client.wait_hello_from_server()
    await client.login(USER, PASSWORD)
    started = time.perf_counter()
    await client.select("INBOX")
    search = await client.uid_search("UID 1:*", charset=None)
    uids = sorted(int(x) for line in search.lines[:-1] for x in bytes(line).split())
    fetched = 0
    for start in range(0, len(uids), FETCH_BATCH):
        chunk = uids[start : start + FETCH_BATCH]
        response = await client.uid("fetch", f"{chunk[0]}:{chunk[-1]}", "(UID BODY.PEEK[])")
        fetched += sum(1 for x in response.lines if isinstance(x, bytearray))
    elapsed = time.perf_counter() - started
    await client.logout()
    assert fetched == len(uids) == MESSAGES, (fetched, len(uids))
    return MESSAGES / elapsed


async def _synced(nats_url: str, port: int, round_: int) -> float:
    from mailfold.events import Module
    from mailfold.events.subjects import STREAM
    from mailfold.mailbox.adapters.imap import ImapSession
    from mailfold.mailbox.bootstrap import build_ports
    from mailfold.mailbox.domain.events import Role
    from mailfold.mailbox.service_layer.sync import MailboxSync, Options
    from mailfold.runtime import bus, directory
    from mailfold.runtime.directory import AddressCache, IncomingSettings, RecordEntry

    nc = await bus.connect(nats_url, "bench-mailbox")
    try:
        js = nc.jetstream()
        await bus.ensure_topology(js)
        orgs = await bus.kv(js, bus.BUCKET_ORGS)
        dir_kv = await bus.kv(js, bus.BUCKET_DIRECTORY)
        org = f"{ORG}{round_}"  # a fresh org per round: its events and state start empty
        for n in range(50):
            entry = RecordEntry(
                record_id=f"c{n}",
                module=Module.CONTACTS,
                addresses=(f"customer{n}@client.example",),
            )
            await directory.put_record(dir_kv, org, entry)
        addresses = AddressCache(nc)  # as the service runs it
        await addresses.start()
        ports = await build_ports(js, orgs, dir_kv, addresses, timeout_s=60)
        incoming = IncomingSettings(
            protocol="imap", host="127.0.0.1", port=port, security="none", username=USER,
            secret=PASSWORD,
        )  # fmt: skip
        sync = MailboxSync(ports, org, USER, incoming, Options(timeout_s=60))
        session = await ImapSession.open(
            host="127.0.0.1", port=port, security="none", username=USER, secret=PASSWORD,
            timeout=60,
        )  # fmt: skip
        started = time.perf_counter()
        await sync.sync_folder(session, "INBOX", Role.INBOX)
        elapsed = time.perf_counter() - started
        await session.close()
        info = await js.stream_info(STREAM, subjects_filter=f"mail.events.{org}.>")
        published = sum((info.state.subjects or {}).values())
        assert published == MESSAGES, published
        await addresses.stop()
        return MESSAGES / elapsed
    finally:
        await bus.close(nc)


def main() -> int:
    from mailfold.cli.dovecot import MISSING_HINT, Dovecot, dovecot_binary
    from mailfold.cli.embedded import EmbeddedNats

    if dovecot_binary() is None:
        print(f"mailbox: skipped, {MISSING_HINT}", file=sys.stderr)
        return 1
    folder = Path(tempfile.mkdtemp(prefix="mailfold-bench-dovecot-"))
    folder.chmod(0o711)
    try:
        with (
            tempfile.TemporaryDirectory() as tmp,
            EmbeddedNats(Path(tmp) / "nats") as nats_server,
            Dovecot(folder / "dovecot") as dovecot,
        ):
            dovecot.add_user(USER, PASSWORD)
            for n in range(MESSAGES):
                dovecot.write(USER, _message(n))
            asyncio.run(_bare(dovecot.imap_port))  # warm-up: Dovecot indexes the folder
            asyncio.run(_synced(nats_server.url, dovecot.imap_port, 0))  # warm-up
            bare_rates, our_rates = [], []
            for round_ in range(1, ROUNDS + 1):  # alternated: a noisy moment hits both alike
                bare_rates.append(asyncio.run(_bare(dovecot.imap_port)))
                our_rates.append(asyncio.run(_synced(nats_server.url, dovecot.imap_port, round_)))
            print(
                f"rounds: bare {[round(r) for r in bare_rates]}, synced {[round(r) for r in our_rates]}"
            )
            bare, ours = max(bare_rates), max(our_rates)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    record("mailbox.sync", ours, "msgs/s", bare)
    return 0


if __name__ == "__main__":
    sys.exit(main())
