"""`mailfold tail`: the event stream as JSON lines, from a position or a time, then live."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from datetime import UTC, datetime
from typing import Any, Final, TextIO

import msgspec
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from mailfold.cli import config
from mailfold.events import EVENT_TYPES
from mailfold.events.subjects import STREAM, SUBJECT_PREFIX
from mailfold.runtime import bus
from mailfold.runtime.orgs import valid_org_id

FETCH: Final = 256
_ENCODER: Final = msgspec.json.Encoder()


class Line(msgspec.Struct, frozen=True):
    """One output line: the stream sequence, when it was stored, its subject, the event."""

    seq: int
    time: datetime
    subject: str
    event: msgspec.Raw


def parse_since(text: str) -> datetime:
    """An RFC 3339 time; without a zone it is UTC."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def subject(org: str | None, event_type: str | None) -> str:
    """The filter: one org's and/or one type's events, or all."""
    return f"{SUBJECT_PREFIX}.{org or '*'}.{event_type or '*'}"


def consumer_config(args: argparse.Namespace) -> ConsumerConfig:
    """An ephemeral, unacknowledged consumer starting where the arguments say."""
    policy: dict[str, Any]
    if args.from_seq is not None:
        policy = {"deliver_policy": DeliverPolicy.BY_START_SEQUENCE, "opt_start_seq": args.from_seq}
    elif args.since is not None:
        policy = {"deliver_policy": DeliverPolicy.BY_START_TIME, "opt_start_time": args.since}
    else:
        policy = {"deliver_policy": DeliverPolicy.NEW}
    return ConsumerConfig(
        filter_subject=subject(args.org, args.type),
        ack_policy=AckPolicy.NONE,
        inactive_threshold=60.0,
        mem_storage=True,
        **policy,
    )


async def tail(args: argparse.Namespace, out: TextIO, stop: asyncio.Event) -> int:
    """Print events until stopped (or, with --no-follow, until the stream's end)."""
    nc = await bus.connect(
        config.nats_url(), "mailfold-tail", reconnect=True, auth=config.nats_auth()
    )
    try:
        js = nc.jetstream()
        sub = await js.pull_subscribe(
            subject(args.org, args.type), stream=STREAM, config=consumer_config(args)
        )
        while not stop.is_set():
            try:
                messages = await sub.fetch(FETCH, timeout=1.0)
            except TimeoutError:
                messages = []
            for msg in messages:
                meta = msg.metadata
                line = Line(
                    seq=int(meta.sequence.stream),
                    time=meta.timestamp,
                    subject=msg.subject,
                    event=msgspec.Raw(msg.data),
                )
                out.write(_ENCODER.encode(line).decode() + "\n")
            out.flush()
            if not args.follow and (not messages or messages[-1].metadata.num_pending == 0):
                break
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    finally:
        await bus.close(nc)
    return 0


def tail_command(args: argparse.Namespace) -> int:
    """`mailfold tail [--org ORG] [--type TYPE] [--from-seq N | --since TIME] [--no-follow]`."""
    if args.org is not None and not valid_org_id(args.org):
        print("error: --org must be an org id", file=sys.stderr)
        return 2
    if args.type is not None and args.type not in EVENT_TYPES:
        print(f"error: --type must be one of: {', '.join(sorted(EVENT_TYPES))}", file=sys.stderr)
        return 2
    if args.from_seq is not None and args.since is not None:
        print("error: give --from-seq or --since, not both", file=sys.stderr)
        return 2
    if args.from_seq is not None and args.from_seq < 1:
        print("error: --from-seq must be at least 1", file=sys.stderr)
        return 2

    async def run() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await tail(args, sys.stdout, stop)

    try:
        return asyncio.run(run())
    except BrokenPipeError:  # piped into `head`: the reader has what it wanted
        return 0


def add_parser(sub: Any) -> None:
    """Register `mailfold tail`."""
    p = sub.add_parser("tail", help="print the event stream as JSON lines (live)")
    p.add_argument("--org", help="only this org's events")
    p.add_argument("--type", help="only events of this type, e.g. email_bounced")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--from-seq", type=int, help="start at this stream sequence")
    start.add_argument("--since", type=parse_since, help="start at this time (RFC 3339)")
    p.add_argument(
        "--no-follow",
        dest="follow",
        action="store_false",
        help="stop at the end of the stream instead of waiting for new events",
    )
    p.set_defaults(func=tail_command)
