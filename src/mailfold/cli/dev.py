"""`mailfold dev`: embedded NATS and PostgreSQL, the topology, every service, stopped on Ctrl-C."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Final

from mailfold.cli import config
from mailfold.cli.main import available_services, ensure_topology
from mailfold.runtime.settings import NatsAuth

if TYPE_CHECKING:
    from mailfold.cli.embedded import NatsCredentials

LOOPBACK: Final = "127.0.0.1"

# Default ports of each service in dev; a taken port falls back to a free one.
DEV_PORTS: Final = {
    "nats": 4222,
    "postgres": 5432,
    "ingest_http": 8001,
    "tracker_http": 8002,
    "projector_http": 8003,
    "sender_http": 8004,
    "webhooks_http": 8006,
    "mailbox_http": 8005,
    "ingest_smtp": 2525,
    "sink_smtp": 2526,
    "dovecot_imap": 1143,
    "dovecot_pop3": 1110,
}
DEMO_MAILBOX_USER: Final = "rep"
DEMO_MAILBOX_PASSWORD: Final = "demo-mailbox-password"
CLUSTER_REPLICAS: Final = 3


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def _pick_port(preferred: int, taken: set[int]) -> int:
    from mailfold.cli.embedded import free_port

    port = preferred
    while port in taken or not _port_free(port):
        port = free_port()
    taken.add(port)
    return port


@dataclass
class DevStack:
    """What `mailfold dev` started, so that it can print it and stop it."""

    data: Path
    cluster: bool = False
    ports: dict[str, int] = field(default_factory=dict)
    nats_url: str = ""  # the admin's (with credentials), for dev itself and the CLI
    nats_servers: str = ""  # every server's address, without credentials
    credentials: NatsCredentials | None = None  # None on a NATS given by MAILFOLD_NATS_URL
    nats_monitoring: list[str] = field(default_factory=list)  # each embedded node's /varz etc.

    @property
    def admin_auth(self) -> NatsAuth | None:
        """Embedded NATS: the admin in nats_url; a given NATS: MAILFOLD_NATS_USER and co."""
        return None if self.credentials is not None else NatsAuth.from_env()

    database_url: str = ""
    children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    servers: list[object] = field(default_factory=list)
    dovecot_imap: int | None = None  # the demo mailbox's IMAP port, where Dovecot is installed

    def service_env(self, service: str | None = None) -> dict[str, str]:
        """The environment of a child: a service connects to NATS as its own user."""
        env = dict(os.environ)
        if self.credentials is not None:
            env.pop("MAILFOLD_NATS_USER", None)
            env.pop("MAILFOLD_NATS_PASSWORD", None)
            if service is not None:
                env["MAILFOLD_NATS_USER"] = service
                env["MAILFOLD_NATS_PASSWORD"] = self.credentials.password(service)
        env.update(
            {
                "MAILFOLD_NATS_URL": self.nats_servers,
                "MAILFOLD_DATABASE_URL": self.database_url,
                "MAILFOLD_HTTP_HOST": LOOPBACK,
                "MAILFOLD_INGEST_HTTP_PORT": str(self.ports["ingest_http"]),
                "MAILFOLD_INGEST_SMTP_PORT": str(self.ports["ingest_smtp"]),
                "MAILFOLD_TRACKER_PORT": str(self.ports["tracker_http"]),
                "MAILFOLD_PROJECTOR_PORT": str(self.ports["projector_http"]),
                "MAILFOLD_SENDER_PORT": str(self.ports["sender_http"]),
                "MAILFOLD_WEBHOOKS_PORT": str(self.ports["webhooks_http"]),
                # Development: webhook endpoints may be http on this machine (a local receiver).
                "MAILFOLD_WEBHOOKS_ALLOW_LOOPBACK": env_or(
                    "MAILFOLD_WEBHOOKS_ALLOW_LOOPBACK", "true"
                ),
                "MAILFOLD_MAILBOX_PORT": str(self.ports["mailbox_http"]),
                "MAILFOLD_TRACKER_PUBLIC_URL": f"http://{LOOPBACK}:{self.ports['tracker_http']}",
                # Nothing leaves the machine in dev: every domain routes to the local sink MX.
                "MAILFOLD_SMTP_ROUTES": env_or(
                    "MAILFOLD_SMTP_ROUTES", f"*={LOOPBACK}:{self.ports['sink_smtp']}"
                ),
                "MAILFOLD_LOG_JSON": os.environ.get("MAILFOLD_LOG_JSON", "false"),
            }
        )
        return env


def env_or(name: str, default: str) -> str:
    """An environment variable, or the default when unset."""
    return os.environ.get(name) or default


def _start_servers(stack: DevStack) -> None:
    from mailfold.cli.embedded import (
        EmbeddedNats,
        EmbeddedNatsCluster,
        EmbeddedPostgres,
        NatsCredentials,
    )

    previous: dict[str, int] = {}
    runtime = config.runtime_file()
    if runtime.exists():
        try:
            previous = {
                k: int(v) for k, v in json.loads(runtime.read_text()).get("ports", {}).items()
            }
        except (ValueError, AttributeError):
            previous = {}
    taken: set[int] = set()
    for name, default in DEV_PORTS.items():
        stack.ports[name] = _pick_port(previous.get(name, default), taken)

    if os.environ.get("MAILFOLD_NATS_URL"):
        stack.nats_url = stack.nats_servers = os.environ["MAILFOLD_NATS_URL"]
    else:
        # One password per NATS user for this data dir, kept 0600 next to the data.
        stack.credentials = NatsCredentials.load_or_create(stack.data / "nats-users.json")
        nats: EmbeddedNats | EmbeddedNatsCluster
        if stack.cluster:
            nats = EmbeddedNatsCluster(stack.data / "nats-cluster", credentials=stack.credentials)
            print(f"starting a 3-node NATS JetStream cluster on {nats.address} ...", flush=True)
        else:
            nats = EmbeddedNats(
                stack.data / "nats", port=stack.ports["nats"], credentials=stack.credentials
            )
            print(f"starting NATS JetStream on {nats.address} ...", flush=True)
        nats.start()
        stack.servers.append(nats)
        stack.nats_url, stack.nats_servers = nats.url, nats.address
        nodes = nats.nodes if isinstance(nats, EmbeddedNatsCluster) else [nats]
        stack.nats_monitoring = [f"http://{LOOPBACK}:{node.http_port}" for node in nodes]

    if os.environ.get("MAILFOLD_DATABASE_URL"):
        stack.database_url = os.environ["MAILFOLD_DATABASE_URL"]
    else:
        pg = EmbeddedPostgres(stack.data / "postgres", port=stack.ports["postgres"])
        print(f"starting PostgreSQL on 127.0.0.1:{pg.port} ...", flush=True)
        pg.start()
        stack.servers.append(pg)
        stack.ports["postgres"] = pg.port
        exists = pg.psql("SELECT 1 FROM pg_database WHERE datname = 'mailfold'")
        if "1" not in exists:
            pg.create_database("mailfold")
        stack.database_url = pg.dsn_for("mailfold")


async def _prepare(stack: DevStack) -> None:
    from mailfold.runtime import bus

    nc = await bus.connect(stack.nats_url, "mailfold-dev", reconnect=False, auth=stack.admin_auth)
    try:
        replicas = CLUSTER_REPLICAS if stack.cluster else 1
        await ensure_topology(nc.jetstream(timeout=10), replicas=replicas)
    finally:
        await bus.close(nc)


def _write_runtime(stack: DevStack) -> None:
    p = stack.ports
    info = {
        "nats_url": stack.nats_url,
        "nats_servers": stack.nats_servers,
        "nats_cluster": stack.cluster,
        "nats_monitoring": stack.nats_monitoring,
        "database_url": stack.database_url,
        "ingest_url": f"http://{LOOPBACK}:{p['ingest_http']}",
        "tracker_url": f"http://{LOOPBACK}:{p['tracker_http']}",
        "query_url": f"http://{LOOPBACK}:{p['projector_http']}",
        "sender_url": f"http://{LOOPBACK}:{p['sender_http']}",
        "webhooks_url": f"http://{LOOPBACK}:{p['webhooks_http']}",
        "smtp": f"{LOOPBACK}:{p['ingest_smtp']}",
        "pid": os.getpid(),
        "ports": p,
    }
    # It holds the admin's password (the CLI's commands connect as admin): owner only.
    path = config.runtime_file()
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(json.dumps(info, indent=2) + "\n")


def _start_sink(stack: DevStack) -> None:
    """The local MX every outbound message is routed to in dev."""
    _spawn_sink(stack)
    port = stack.ports["sink_smtp"]
    logs = stack.data / "logs"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and stack.children["sink"].poll() is None:
        with socket.socket() as sock:
            if sock.connect_ex((LOOPBACK, port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"the sink MX did not start; see {logs / 'sink.log'}")


def _spawn_sink(stack: DevStack) -> None:
    logs = stack.data / "logs"
    logs.mkdir(exist_ok=True)
    port = stack.ports["sink_smtp"]
    with (logs / "sink.log").open("ab") as log:
        stack.children["sink"] = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mailfold.cli.sink",
                "--port",
                str(port),
                "--dir",
                str(stack.data / "sink"),
            ],
            env=stack.service_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def _start_dovecot(stack: DevStack) -> str:
    """A local Dovecot with the demo mailbox, where Dovecot is installed; a line to print."""
    from mailfold.cli.dovecot import Dovecot, DovecotError, dovecot_binary

    if dovecot_binary() is None:
        return (
            "  demo mailbox     none: Dovecot is not installed (sudo apt-get install "
            "dovecot-imapd dovecot-pop3d, then make run again)"
        )
    dovecot = Dovecot(
        stack.data / "dovecot",
        imap_port=stack.ports["dovecot_imap"],
        pop3_port=stack.ports["dovecot_pop3"],
    )
    fresh = not dovecot.maildir(DEMO_MAILBOX_USER).exists()
    try:
        dovecot.add_user(DEMO_MAILBOX_USER, DEMO_MAILBOX_PASSWORD)
        dovecot.start()
    except DovecotError as exc:
        return f"  demo mailbox     none: Dovecot did not start ({str(exc).splitlines()[0]})"
    stack.servers.append(dovecot)
    stack.dovecot_imap = dovecot.imap_port
    if fresh:
        reply = (
            "From: Bob <bob@example.org>\r\nTo: rep@demo.example\r\n"
            "Subject: Re: Sent through my own mailbox\r\n"
            "Message-ID: <demo-reply-1@example.org>\r\n"
            "Date: Mon, 30 Nov 2026 09:00:00 +0000\r\n\r\nThanks, that helps.\r\n"
        )
        dovecot.deliver(DEMO_MAILBOX_USER, reply.encode())
    return (
        f"  demo mailbox     imap://{DEMO_MAILBOX_USER}@{LOOPBACK}:{dovecot.imap_port} "
        f"(password {DEMO_MAILBOX_PASSWORD}; POP3 on {dovecot.pop3_port})"
    )


def _spawn_service(stack: DevStack, service: str) -> None:
    logs = stack.data / "logs"
    logs.mkdir(exist_ok=True)
    with (logs / f"{service}.log").open("ab") as log:
        stack.children[service] = subprocess.Popen(
            [sys.executable, "-m", "mailfold.cli", "serve", service],
            env=stack.service_env(service),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches us; we stop the children in order
        )


def _start_services(stack: DevStack, services: list[str]) -> None:
    for service in services:
        _spawn_service(stack, service)


@dataclass
class Restarts:
    """When each child that died may be started again: backoff doubles per quick death."""

    first_delay: float = 1.0
    max_delay: float = 30.0
    stable_after: float = 60.0  # a child up this long starts over at the first delay
    delay: dict[str, float] = field(default_factory=dict)
    due: dict[str, float] = field(default_factory=dict)
    started: dict[str, float] = field(default_factory=dict)

    def died(self, name: str, now: float) -> float:
        """Record a death; returns the seconds until the restart."""
        up = now - self.started.get(name, now)
        previous = self.delay.get(name, 0.0)
        delay = (
            self.first_delay
            if up >= self.stable_after or not previous
            else min(previous * 2, self.max_delay)
        )
        self.delay[name] = delay
        self.due[name] = now + delay
        return delay


def _supervise(stack: DevStack, restarts: Restarts) -> None:
    """Restart every child that died, after its backoff; say so on stdout and in its log."""
    now = time.monotonic()
    for name, proc in list(stack.children.items()):
        if proc.poll() is None or name in restarts.due:
            continue
        delay = restarts.died(name, now)
        print(
            f"service {name} exited with {proc.returncode}; restarting in {delay:g} s "
            f"(see {stack.data}/logs/{name}.log)",
            flush=True,
        )
    for name, due in list(restarts.due.items()):
        if due > now:
            continue
        del restarts.due[name]
        if name == "sink":
            _spawn_sink(stack)
        else:
            _spawn_service(stack, name)
        restarts.started[name] = time.monotonic()
        print(f"service {name} restarted (pid {stack.children[name].pid})", flush=True)


def _wait_healthy(stack: DevStack, timeout: float = 60.0) -> list[str]:
    import urllib.request

    urls = {
        "ingest": stack.ports["ingest_http"],
        "tracker": stack.ports["tracker_http"],
        "projector": stack.ports["projector_http"],
        "sender": stack.ports["sender_http"],
        "webhooks": stack.ports["webhooks_http"],
        "mailbox": stack.ports["mailbox_http"],
    }
    pending = {s: urls[s] for s in stack.children if s in urls}
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for service, port in list(pending.items()):
            proc = stack.children[service]
            if proc.poll() is not None:
                pending.pop(service)
                continue
            try:
                with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/healthz", timeout=1) as r:
                    if r.status == 200:
                        pending.pop(service)
            except OSError:
                pass
        time.sleep(0.2)
    return [s for s, p in stack.children.items() if p.poll() is not None or s in pending]


def _stop(stack: DevStack) -> None:
    # Services first (they flush what they hold), the sink last.
    for proc in stack.children.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 15
    for proc in stack.children.values():
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for server in reversed(stack.servers):
        server.stop()  # type: ignore[attr-defined]


def run_dev(*, demo: bool = True, cluster: bool = False) -> int:
    """Start everything, print where to look, wait for Ctrl-C, stop everything."""
    stack = DevStack(data=config.data_dir(), cluster=cluster)
    stack.data.mkdir(parents=True, exist_ok=True)
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        _start_servers(stack)
        asyncio.run(_prepare(stack))
        _write_runtime(stack)
        services = available_services()
        _start_sink(stack)
        mailbox_line = _start_dovecot(stack)
        _start_services(stack, services)
        failed = _wait_healthy(stack)
        if failed:
            for service in failed:
                print(
                    f"service {service} did not become healthy; see {stack.data}/logs/{service}.log"
                )
            return 1
        if demo:
            from mailfold.cli.demo import seed_demo

            demo_lines = seed_demo(stack)
        else:
            demo_lines = []
        _print_banner(stack, services, [mailbox_line, *demo_lines])
        # A child that dies is restarted (with backoff), not a reason to stop the stack.
        restarts = Restarts(started=dict.fromkeys(stack.children, time.monotonic()))
        while not stopping:
            _supervise(stack, restarts)
            time.sleep(0.3)
        print("\nstopping ...", flush=True)
        return 0
    finally:
        _stop(stack)
        config.runtime_file().unlink(missing_ok=True)
        print("stopped.", flush=True)


def _print_banner(stack: DevStack, services: list[str], demo_lines: list[str]) -> None:
    p = stack.ports
    lines = [
        "",
        "mailfold is running (Ctrl-C stops everything; data stays in " + str(stack.data) + ")",
        f"  NATS JetStream   {stack.nats_servers}"
        + (f" (cluster, {CLUSTER_REPLICAS} replicas)" if stack.cluster else ""),
        f"  PostgreSQL       {stack.database_url}",
        f"  services         {', '.join(services) or 'none installed'}",
    ]
    if "ingest" in services:
        lines.append(
            f"  ingest API       http://{LOOPBACK}:{p['ingest_http']}/v1/orgs/{{org}}/emails"
        )
        lines.append(f"  SMTP ingress     {LOOPBACK}:{p['ingest_smtp']}")
    if "tracker" in services:
        lines.append(f"  tracker          http://{LOOPBACK}:{p['tracker_http']}/o/{{token}}.gif")
    if "projector" in services:
        lines.append(
            f"  query API        http://{LOOPBACK}:{p['projector_http']}/v1/orgs/{{org}}/..."
        )
    if "webhooks" in services:
        lines.append(
            f"  webhooks API     http://{LOOPBACK}:{p['webhooks_http']}/v1/orgs/{{org}}/webhooks"
        )
    lines.append(f"  sink MX          {LOOPBACK}:{p['sink_smtp']} (all outbound mail lands here)")
    if "mailbox" in services:
        lines.append(
            f"  mailbox API      http://{LOOPBACK}:{p['mailbox_http']}/v1/orgs/{{org}}/emails/{{id}}"
        )
    lines.append(
        "  metrics          "
        + ", ".join(f"http://{LOOPBACK}:{p[s + '_http']}/metrics" for s in services)
    )
    if stack.credentials is not None:
        lines.append(
            f"  NATS users       each service its own; passwords in {stack.data}/nats-users.json"
        )
    lines.append(f"  logs             {stack.data}/logs/")
    lines.extend(line for line in demo_lines if line is not None)
    lines.append("")
    lines.append("ready")
    print("\n".join(lines), flush=True)
