"""`mailfold serve <service>` as a child process for tests: start, kill, stop, wait for health."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx


@dataclass
class ServiceProcess:
    """`mailfold serve <service>` as a child process, with its log in a file."""

    service: str
    env: dict[str, str]
    health_port: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mailfold.cli", "serve", self.service],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    async def health(self) -> tuple[int, str]:
        """The status and body of its /healthz (0 when it does not answer)."""
        async with httpx.AsyncClient(timeout=5) as client:
            try:
                response = await client.get(f"http://127.0.0.1:{self.health_port}/healthz")
            except httpx.TransportError as exc:
                return 0, repr(exc)
        return response.status_code, response.text

    async def wait_healthy(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            assert self.proc.poll() is None, f"{self.service} exited:\n{self.tail()}"
            if (await self.health())[0] == 200:
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"{self.service} not healthy in {timeout} s:\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])
