"""The whole stack, started as a user starts it (`mailfold dev`), driven through its public interfaces."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class Stack:
    """Addresses of a running `mailfold dev` and an org token."""

    data: Path
    runtime: dict[str, object]
    org: str
    token: str

    @property
    def ingest(self) -> str:
        return str(self.runtime["ingest_url"])

    @property
    def query(self) -> str:
        return str(self.runtime["query_url"])

    @property
    def tracker(self) -> str:
        return str(self.runtime["tracker_url"])

    @property
    def nats_url(self) -> str:
        return str(self.runtime["nats_url"])

    @property
    def smtp_port(self) -> int:
        return int(str(self.runtime["smtp"]).rsplit(":", 1)[1])

    @property
    def sink(self) -> Path:
        return self.data / "sink"

    def env(self) -> dict[str, str]:
        """Environment for CLI commands against this stack."""
        return {**os.environ, "MAILFOLD_DATA_DIR": str(self.data)}

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run `mailfold ...` against this stack."""
        return subprocess.run(
            [sys.executable, "-m", "mailfold.cli", *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=120,
            check=check,
        )


def _wait_ready(proc: subprocess.Popen[str], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text() if log.exists() else ""
        if "\nready" in text:
            return
        if proc.poll() is not None:
            raise RuntimeError(f"mailfold dev exited with {proc.returncode}:\n{text}")
        time.sleep(0.2)
    raise RuntimeError(f"mailfold dev not ready after {timeout} s:\n{log.read_text()}")


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """`mailfold dev --no-demo` in a temp data folder, and an org created with `mailfold org create`."""
    data = tmp_path_factory.mktemp("e2e")
    log = data / "dev.out"
    env = {**os.environ, "MAILFOLD_DATA_DIR": str(data), "MAILFOLD_LOG_JSON": "true"}
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mailfold.cli", "dev", "--no-demo"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        _wait_ready(proc, log, timeout=120)
        runtime = json.loads((data / "runtime.json").read_text())
        created = subprocess.run(
            [sys.executable, "-m", "mailfold.cli", "org", "create", "e2e"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        yield Stack(data=data, runtime=runtime, org="e2e", token=created.stdout.strip())
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The log check reads what the whole run wrote: it goes last."""
    items.sort(key=lambda item: "test_e2e_logs.py" in item.nodeid)
