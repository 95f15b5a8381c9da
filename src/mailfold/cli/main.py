"""`mailfold`: run the pipeline, run one service, and the operator's commands."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from mailfold.cli import config

SERVICES = ("ingest", "sender", "tracker", "projector", "webhooks", "mailbox")


def _service_entry(service: str) -> Callable[[], None] | None:
    """The service's `bootstrap.main`, or None where the service is not installed."""
    try:
        module = importlib.import_module(f"mailfold.{service}.bootstrap")
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith(f"mailfold.{service}"):
            return None
        raise
    entry: Callable[[], None] = module.main
    return entry


def available_services() -> list[str]:
    """The services this installation can run."""
    return [s for s in SERVICES if _service_entry(s) is not None]


async def ensure_topology(js: Any, *, replicas: int, within_s: float = 60.0) -> None:
    """Every stream, KV bucket and object store with `replicas`: the shared ones
    (bus.ensure_topology) and those of each installed service that has its own.

    A cluster that has just elected its leader may leave a create unanswered or answer 503:
    it is tried again, for up to `within_s` seconds (every step is idempotent).
    """
    from mailfold.runtime import bus

    async def every_step() -> None:
        await bus.ensure_topology(js, replicas=replicas)
        for service in available_services():
            own = getattr(
                importlib.import_module(f"mailfold.{service}.bootstrap"), "ensure_topology", None
            )
            if own is not None:
                await own(js, replicas=replicas)

    await bus.through_elections(every_step, within_s=within_s)


def _cmd_schema(args: argparse.Namespace) -> int:
    from mailfold.events import json_schema

    if args.openapi == "ingest":
        from mailfold.ingest.entrypoints.openapi import openapi

        print(json.dumps(openapi(), indent=2))
    elif args.openapi == "query":
        from mailfold.projector.entrypoints.openapi import openapi as query_openapi

        print(json.dumps(query_openapi(), indent=2))
    elif args.openapi == "webhooks":
        from mailfold.webhooks.entrypoints.openapi import openapi as webhooks_openapi

        print(json.dumps(webhooks_openapi(), indent=2))
    elif args.asyncapi:
        from mailfold.cli.asyncapi import asyncapi_document

        print(json.dumps(asyncapi_document(), indent=2))
    else:
        print(json.dumps(json_schema(), indent=2))
    return 0


def _cmd_policy(args: argparse.Namespace) -> int:
    from mailfold.events import POLICY, SOURCES
    from mailfold.events.model import STATUS_PRECEDENCE

    def ordered(statuses: frozenset[Any]) -> list[str]:
        return [s.value for s in reversed(STATUS_PRECEDENCE) if s in statuses]

    if args.json:
        rows = [
            {
                "name": row.name,
                "description": row.description,
                "channel": row.channel.value,
                "transport": row.transport.value if row.transport else None,
                "multi_recipient": row.multi_recipient,
                "sources": [SOURCES[s].display for s in row.sources],
                "reachable": ordered(row.reachable),
                "note": row.note,
            }
            for row in POLICY
        ]
        print(json.dumps(rows, indent=2))
        return 0
    for row in POLICY:
        print(f"{row.description}")
        print(f"  reachable: {', '.join(ordered(row.reachable))}")
        print(f"  sources:   {', '.join(SOURCES[s].display for s in row.sources)}")
        if row.note:
            print(f"  note:      {row.note}")
        print()
    return 0


def _cmd_org_create(args: argparse.Namespace) -> int:
    from mailfold.runtime import bus
    from mailfold.runtime.orgs import OrgExists, create_org, valid_org_id

    if not valid_org_id(args.org):
        print("error: org id must be 1-63 characters of a-z, 0-9, '-' and '_'", file=sys.stderr)
        return 2

    async def run() -> str:
        nc = await bus.connect(
            config.nats_url(), "mailfold-cli", reconnect=False, auth=config.nats_auth()
        )
        try:
            js = nc.jetstream()
            bucket = await bus.kv(js, bus.BUCKET_ORGS)
            return await create_org(bucket, args.org, rotate=args.rotate)
        finally:
            await bus.close(nc)

    try:
        token = asyncio.run(run())
    except OrgExists as exc:
        print(f"error: {exc} (use --rotate to issue a new token)", file=sys.stderr)
        return 1
    print(f"org {args.org} created; its API token (shown once, keep it):", file=sys.stderr)
    print(token)
    return 0


def _cmd_topology(args: argparse.Namespace) -> int:
    from mailfold.runtime import bus

    async def run() -> None:
        nc = await bus.connect(
            config.nats_url(), "mailfold-cli", reconnect=False, auth=config.nats_auth()
        )
        try:
            await ensure_topology(nc.jetstream(timeout=10), replicas=args.replicas)
        finally:
            await bus.close(nc)

    asyncio.run(run())
    print(
        f"streams, buckets and object store ready on {bus.redact(config.nats_url())} "
        f"(replicas {args.replicas})"
    )
    return 0


def _cmd_nats_config(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mailfold.cli.natsconf import write_deploy_configs

    for path in write_deploy_configs(Path(args.folder)):
        print(f"wrote {path}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    entry = _service_entry(args.service)
    if entry is None:
        print(f"error: service {args.service!r} is not installed", file=sys.stderr)
        return 2
    from mailfold.runtime.settings import ConfigError, env_int

    try:
        workers = args.workers or env_int("MAILFOLD_WORKERS", 1, minimum=1)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if workers > 1:
        from mailfold.cli.workers import run_workers

        return run_workers(args.service, workers)
    entry()
    return 0


def _cmd_dev(args: argparse.Namespace) -> int:
    from mailfold.cli.dev import run_dev

    return run_dev(demo=not args.no_demo, cluster=args.cluster)


def _delegate(module: str, function: str) -> Callable[[argparse.Namespace], int]:
    """A command implemented by a service package (imported only when used)."""

    def run(args: argparse.Namespace) -> int:
        try:
            target = getattr(importlib.import_module(module), function)
        except (ModuleNotFoundError, AttributeError):
            print(f"error: {args.command} is not available in this installation", file=sys.stderr)
            return 2
        result: int = target(args)
        return result

    return run


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="mailfold", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("dev", help="the whole stack on embedded NATS and PostgreSQL")
    p.add_argument("--no-demo", action="store_true", help="do not create the demo org and emails")
    p.add_argument(
        "--cluster",
        action="store_true",
        help="three NATS nodes and every stream, bucket and object store with 3 replicas",
    )
    p.set_defaults(func=_cmd_dev)

    p = sub.add_parser("serve", help="run one service in the foreground")
    p.add_argument("service", choices=SERVICES)
    p.add_argument(
        "--workers",
        type=_positive,
        default=None,
        help="processes sharing the service's ports (default MAILFOLD_WORKERS, else 1)",
    )
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("topology", help="create the streams, KV buckets and object store")
    p.add_argument("--replicas", type=int, default=1, help="JetStream replicas (3 on a cluster)")
    p.set_defaults(func=_cmd_topology)

    p = sub.add_parser(
        "nats-config", help="write the nats-server configs (users, permissions, cluster, TLS)"
    )
    p.add_argument("folder", help="where to write them (deploy/nats in this repository)")
    p.set_defaults(func=_cmd_nats_config)

    p = sub.add_parser("schema", help="print the JSON Schema of every event")
    p.add_argument("--asyncapi", action="store_true", help="print an AsyncAPI document instead")
    p.add_argument(
        "--openapi",
        choices=["ingest", "query", "webhooks"],
        help="print the OpenAPI document of an HTTP API instead (docs/openapi/ holds them)",
    )
    p.set_defaults(func=_cmd_schema)

    p = sub.add_parser("policy", help="print the reachability table")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_policy)

    p = sub.add_parser("org", help="manage orgs")
    org_sub = p.add_subparsers(dest="org_command", required=True, metavar="ACTION")
    c = org_sub.add_parser("create", help="create an org and print its API token once")
    c.add_argument("org")
    c.add_argument("--rotate", action="store_true", help="replace the token of an existing org")
    c.set_defaults(func=_cmd_org_create)

    p = sub.add_parser("migrate", help="apply the projector's database migrations")
    p.set_defaults(func=_delegate("mailfold.projector.cli", "migrate_command"))

    p = sub.add_parser("replay", help="rebuild the projection from the stream")
    p.add_argument("--from-seq", type=int, default=1)
    p.add_argument("--to-seq", type=int, default=None)
    p.add_argument("--verify", action="store_true", help="compare with the live projection")
    p.set_defaults(func=_delegate("mailfold.projector.cli", "replay_command"))

    p = sub.add_parser(
        "repartition", help="change the number of projector partitions (projectors stopped)"
    )
    p.add_argument("partitions", type=int, help="the new number of partitions")
    p.set_defaults(func=_delegate("mailfold.projector.cli", "repartition_command"))

    p = sub.add_parser("audit", help="an email's full history, for a person")
    p.add_argument("email_id")
    p.set_defaults(func=_delegate("mailfold.projector.cli", "audit_command"))

    p = sub.add_parser("export", help="write an org's emails to emails.csv with attachments")
    p.add_argument("org")
    p.add_argument("--out", default="export", help="output folder")
    p.set_defaults(func=_delegate("mailfold.projector.cli", "export_command"))

    from mailfold.cli.tail import add_parser as add_tail

    add_tail(sub)

    p = sub.add_parser("dsn", help="bounce reports")
    dsn_sub = p.add_subparsers(dest="dsn_command", required=True, metavar="ACTION")
    c = dsn_sub.add_parser("parse", help="one JSON line per reported recipient")
    c.add_argument("files", nargs="+")
    c.add_argument(
        "--explain", action="store_true", help="add which reader and rule decided each field"
    )
    c.set_defaults(func=_delegate("mailfold.ingest.cli", "dsn_parse_command"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `mailfold` command."""
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)


if __name__ == "__main__":
    sys.exit(main())
