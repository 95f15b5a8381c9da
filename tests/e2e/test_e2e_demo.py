"""`mailfold dev` as a newcomer meets it: the demo is seeded, the printed commands work as
printed, and a second start resumes with the same data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.timeout(400)


def _start(data: Path, log: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILFOLD_")}
    env["MAILFOLD_DATA_DIR"] = str(data)
    with log.open("w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "mailfold.cli", "dev"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )


def _wait_ready(proc: subprocess.Popen[str], log: Path) -> str:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        text = log.read_text()
        if "\nready" in text:
            return text
        assert proc.poll() is None, text
        time.sleep(0.3)
    raise AssertionError(log.read_text())


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        assert proc.wait(timeout=60) == 0
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


def _printed_commands(banner: str) -> list[str]:
    lines = banner.split("try (in another terminal, from this folder):\n", 1)[1].splitlines()
    commands = []
    for line in lines:
        if not line.startswith("  "):
            break
        commands.append(line.strip())
    return commands


def test_the_demo_is_seeded_and_the_printed_commands_work_as_printed(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = _start(data, tmp_path / "first.out")
    try:
        banner = _wait_ready(first, tmp_path / "first.out")
        assert "demo org 'demo' created; its API token (shown once): mf_demo_" in banner
        commands = _printed_commands(banner)
        assert len(commands) == 5  # TOKEN=..., the timeline, one email, the audit, a campaign
        query = commands[1].split('"')[3].split("/v1/")[0]
        assert f"  {query}/ui/orgs/demo/records/contact-ann\n" in banner  # the record page
        sign_in = httpx.get(f"{query}/ui/orgs/demo/records/contact-ann", timeout=10)
        assert sign_in.status_code == 401
        assert 'name="token"' in sign_in.text
        timeline_cmd = commands[0] + " && " + commands[1]
        deadline = time.monotonic() + 60
        while True:
            run = subprocess.run(
                ["bash", "-c", timeline_cmd],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert run.returncode == 0, run.stderr
            items = json.loads(run.stdout)["items"]
            statuses = {(i["source"], i["status"]) for i in items}
            tracked = {("Individual", "Clicked"), ("Mass Email", "Opened")}
            if tracked <= statuses or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert statuses == {
            ("Individual", "Clicked"),
            ("Mass Email", "Opened"),
            ("BCC Dropbox", "Sent"),
            ("External", "Received"),
        }
        email = subprocess.run(
            ["bash", "-c", commands[0] + " && " + commands[2]],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        detail = json.loads(email.stdout)
        assert detail["email"]["status"] == "Clicked"
        assert [h["type"] for h in detail["history"]][:1] == ["email_composed"]
        audit = subprocess.run(
            ["bash", "-c", commands[3]], capture_output=True, text=True, timeout=60, check=True
        )
        assert "email_bounced" in audit.stdout
        assert "userunknown" in audit.stdout
        campaign = subprocess.run(
            ["bash", "-c", commands[0] + " && " + commands[4]],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        counts = json.loads(campaign.stdout)["counts"]
        assert counts["emails"] == 2
        assert counts["sent"] == 2
        assert counts["opened"]["human"] == 2  # Ann opened it; Bob clicked, which implies it
        assert counts["clicked"]["human"] == 1
    finally:
        _stop(first)

    second = _start(data, tmp_path / "second.out")
    try:
        banner = _wait_ready(second, tmp_path / "second.out")
        assert "created" not in banner  # the demo is seeded once; its token is not shown again
        run = subprocess.run(
            ["bash", "-c", " && ".join(_printed_commands(banner)[:2])],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert len(json.loads(run.stdout)["items"]) == 4
    finally:
        _stop(second)
