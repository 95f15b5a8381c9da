"""A real Dovecot (IMAP and POP3) on loopback in a folder of its own, for `mailfold dev` and tests.

Dovecot comes from the Debian packages dovecot-imapd and dovecot-pop3d (PyPI does not ship it):
`scripts/ensure-debian-packages.sh` installs them where they are missing and the machine allows it.
The server runs in the foreground as a child process, with passwd-file authentication, Maildir
storage under its folder, and no path outside that folder (no root-owned files, no system config).
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Final

from mailfold.cli.embedded import StartStop, free_ports

LOOPBACK: Final = "127.0.0.1"
START_TIMEOUT: Final = 20.0
MISSING_HINT: Final = (
    "Dovecot is not installed: run `apt-get install dovecot-imapd dovecot-pop3d` as root "
    "(or `make test`, which installs it where it may)"
)


class DovecotError(RuntimeError):
    """Dovecot could not be found, started or driven."""


def dovecot_binary() -> str | None:
    """The dovecot executable, or None where it is not installed."""
    return shutil.which("dovecot") or (
        "/usr/sbin/dovecot" if os.access("/usr/sbin/dovecot", os.X_OK) else None
    )


def _doveadm_binary() -> str:
    found = shutil.which("doveadm") or "/usr/bin/doveadm"
    if not os.access(found, os.X_OK):
        raise DovecotError(MISSING_HINT)
    return found


class Dovecot(StartStop):
    """One Dovecot instance: IMAP and POP3 on free loopback ports, users added at will."""

    def __init__(
        self,
        folder: Path,
        *,
        imap_port: int = 0,
        pop3_port: int = 0,
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        """`tls` = (certificate, key) PEM files: STARTTLS on both ports, and IMAPS and POP3S on
        ports of their own (`imaps_port`, `pop3s_port`; 0 without `tls`)."""
        self.folder = folder.resolve()
        picked = free_ports(4 if tls else 2)
        self.imap_port = imap_port or picked[0]
        self.pop3_port = pop3_port or picked[1]
        self.tls = None if tls is None else (tls[0].resolve(), tls[1].resolve())
        self.imaps_port = picked[2] if tls else 0
        self.pop3s_port = picked[3] if tls else 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._users: dict[str, str] = {}
        self._revision = 0
        self._name = f"mf{uuid.uuid4().hex[:8]}"

    @property
    def config_path(self) -> Path:
        """The dovecot.conf this instance runs with."""
        return self.folder / "dovecot.conf"

    @property
    def passwd_path(self) -> Path:
        """The passwd-file of its users."""
        return self.folder / "passwd"

    def maildir(self, user: str) -> Path:
        """A user's Maildir (INBOX at its root, other folders as `.Name`)."""
        return self.folder / "mail" / user / "Maildir"

    def config_text(self) -> str:
        """Dovecot 2.3 configuration: everything under the instance's own folder."""
        login, internal, mail = _accounts()
        d = self.folder
        return f"""# Written by mailfold for a local instance; everything lives under {d}.
instance_name = {self._name}
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
info_log_path = {d}/dovecot.log
protocols = imap pop3
listen = {LOOPBACK}
{self._ssl_text()}
disable_plaintext_auth = no
auth_mechanisms = plain login
default_internal_user = {internal.pw_name}
default_internal_group = {grp.getgrgid(internal.pw_gid).gr_name}
default_login_user = {login.pw_name}
first_valid_uid = {mail.pw_uid}
first_valid_gid = {mail.pw_gid}
mail_location = maildir:{d}/mail/%u/Maildir
mail_plugins = $mail_plugins
pop3_uidl_format = %08Xu%08Xv
mail_max_userip_connections = 1000
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {d}/passwd
}}
userdb {{
  driver = static
  args = uid={mail.pw_uid} gid={mail.pw_gid} home={d}/mail/%u allow_all_users=yes
}}
namespace inbox {{
  inbox = yes
  separator = /
  mailbox Sent {{
    special_use = \\Sent
    auto = subscribe
  }}
  mailbox Trash {{
    special_use = \\Trash
    auto = subscribe
  }}
}}
service imap-login {{
  inet_listener imap {{
    address = {LOOPBACK}
    port = {self.imap_port}
  }}
  inet_listener imaps {{
    address = {LOOPBACK}
    port = {self.imaps_port}
    ssl = yes
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    address = {LOOPBACK}
    port = {self.pop3_port}
  }}
  inet_listener pop3s {{
    address = {LOOPBACK}
    port = {self.pop3s_port}
    ssl = yes
  }}
}}
service auth {{
  unix_listener auth-userdb {{
    mode = 0600
  }}
}}
"""

    def _ssl_text(self) -> str:
        if self.tls is None:
            return "ssl = no"
        cert, key = self.tls
        return f"ssl = yes\nssl_cert = <{cert}\nssl_key = <{key}"

    def _ports(self) -> tuple[int, ...]:
        return tuple(
            p for p in (self.imap_port, self.pop3_port, self.imaps_port, self.pop3s_port) if p
        )

    def add_user(self, user: str, password: str) -> None:
        """A user with this plain password (takes effect at once: the file is re-read)."""
        if ":" in user or ":" in password or "\n" in user + password:
            raise ValueError("user and password may not contain ':' or a line break")
        self._users[user] = password
        self.folder.mkdir(parents=True, exist_ok=True)
        lines = [f"{u}:{{PLAIN}}{p}::::::" for u, p in self._users.items()]
        tmp = self.passwd_path.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        # Dovecot re-reads the file when its mtime changes: make every write a new mtime.
        self._revision += 1
        stamp = time.time() + self._revision
        os.utime(tmp, (stamp, stamp))
        tmp.replace(self.passwd_path)
        self.maildir(user).mkdir(parents=True, exist_ok=True)
        _hand_over(self.folder / "mail")

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start in the foreground and wait until every port accepts connections."""
        binary = dovecot_binary()
        if binary is None:
            raise DovecotError(MISSING_HINT)
        for sub in ("run", "state", "mail"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config_text())
        if not self.passwd_path.exists():
            self.passwd_path.write_text("")
        _hand_over(self.folder / "mail")
        log = (self.folder / "stdout.log").open("ab")
        self._proc = subprocess.Popen(
            [binary, "-F", "-c", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise DovecotError(f"dovecot exited at start:\n{self._log_tail()}")
            if all(_accepts(port) for port in self._ports()):
                return
            time.sleep(0.05)
        self.stop()
        raise DovecotError(f"dovecot did not listen within {timeout:.0f}s:\n{self._log_tail()}")

    def _log_tail(self) -> str:
        parts = []
        for name in ("dovecot.log", "stdout.log"):
            path = self.folder / name
            if path.exists():
                parts.append("\n".join(path.read_text(errors="replace").splitlines()[-30:]))
        return "\n".join(parts)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server and every process it started."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout)

    def doveadm(self, *args: str, stdin: bytes | None = None) -> str:
        """Run `doveadm` against this instance; its standard output."""
        done = subprocess.run(
            [_doveadm_binary(), "-c", str(self.config_path), *args],
            input=stdin,
            capture_output=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise DovecotError(
                f"doveadm {' '.join(args)} failed: {done.stderr.decode(errors='replace')}"
            )
        return done.stdout.decode(errors="replace")

    def deliver(self, user: str, raw: bytes, folder: str = "INBOX") -> None:
        """Save one message into a user's folder (as a delivery or a mail client would)."""
        self.doveadm("save", "-u", user, "-m", folder, stdin=raw)

    def write(self, user: str, raw: bytes, folder: str = "INBOX") -> None:
        """Drop one message straight into a folder's Maildir `new/` (fast, for bulk loads)."""
        base = self.maildir(user) if folder == "INBOX" else self.maildir(user) / f".{folder}"
        for sub in ("tmp", "new", "cur"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        name = f"{time.time_ns()}.{uuid.uuid4().hex}.mailfold"
        (base / "tmp" / name).write_bytes(raw)
        if os.getuid() == 0:
            mail = _accounts()[2]
            for path in (base, *(base / sub for sub in ("tmp", "new", "cur")), base / "tmp" / name):
                os.chown(path, mail.pw_uid, mail.pw_gid)
        (base / "tmp" / name).replace(base / "new" / name)

    def expunge(self, user: str, folder: str, header: str, value: str) -> None:
        """Expunge the messages of a folder whose header holds this value."""
        self.doveadm("expunge", "-u", user, "mailbox", folder, "header", header, value)

    def count(self, user: str, folder: str) -> int:
        """How many messages a folder holds."""
        out = self.doveadm("-f", "flow", "mailbox", "status", "-u", user, "messages", folder)
        return int(out.strip().rpartition("=")[2] or 0)

    def reset_uidvalidity(self, user: str, folder: str = "INBOX") -> None:
        """Make the folder's UIDVALIDITY change: delete its dovecot-uidlist and index files."""
        base = self.maildir(user) if folder == "INBOX" else self.maildir(user) / f".{folder}"
        for name in (
            "dovecot-uidlist",
            "dovecot.index",
            "dovecot.index.log",
            "dovecot.index.cache",
        ):
            with contextlib.suppress(FileNotFoundError):
                (base / name).unlink()
        # Sessions that hold the folder open keep their view; a kick makes clients reconnect.
        with contextlib.suppress(DovecotError):
            self.doveadm("kick", user)


def _accounts() -> tuple[pwd.struct_passwd, pwd.struct_passwd, pwd.struct_passwd]:
    """(login, internal, mail) users: the current user, or Debian's own accounts under root.

    Dovecot refuses to access mail as uid 0, so under root the mail belongs to the `dovecot`
    account the Debian package creates (`dovenull` runs the login processes).
    """
    me = pwd.getpwuid(os.getuid())
    if os.getuid() != 0:
        return me, me, me
    try:
        internal = pwd.getpwnam("dovecot")
        login = pwd.getpwnam("dovenull")
    except KeyError as exc:
        raise DovecotError(MISSING_HINT) from exc
    return login, internal, internal


def _hand_over(mail_root: Path) -> None:
    """Under root, give the mail tree to the mail account and let it reach the tree."""
    if os.getuid() != 0:
        return
    _, _, mail = _accounts()
    mail_root.mkdir(parents=True, exist_ok=True)
    for parent in reversed(mail_root.parents):
        mode = parent.stat().st_mode
        if not mode & 0o001:
            parent.chmod(mode | 0o001)
    for path in (mail_root, *mail_root.rglob("*")):
        os.chown(path, mail.pw_uid, mail.pw_gid)


def _accepts(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((LOOPBACK, port)) == 0
