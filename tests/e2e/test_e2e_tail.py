"""`mailfold tail --from-seq 1` prints every event of the run as JSON lines."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import httpx
from tests.e2e.conftest import Stack

from mailfold.events import decode
from mailfold.events.subjects import STREAM
from mailfold.runtime import bus


async def _last_seq(nats_url: str) -> int:
    nc = await bus.connect(nats_url, "e2e-tail-check", reconnect=False)
    try:
        return int((await nc.jetstream().stream_info(STREAM)).state.last_seq)
    finally:
        await bus.close(nc)


def test_tail_from_seq_1_prints_every_event_of_the_run_as_json_lines(stack: Stack) -> None:
    composed = httpx.post(
        f"{stack.ingest}/v1/orgs/{stack.org}/emails",
        headers={"authorization": f"Bearer {stack.token}"},
        json={
            "source": "individual",
            "from": "rep@e2e.example",
            "to": ["tail@example.org"],
            "subject": "Tail",
            "text": "hello",
        },
        timeout=30,
    )
    assert composed.status_code in (201, 202), composed.text
    last = asyncio.run(_last_seq(stack.nats_url))
    assert last > 0
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailfold.cli", "tail", "--from-seq", "1"],
        env=stack.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[dict[str, object]] = []
    try:
        assert proc.stdout is not None
        while not lines or int(str(lines[-1]["seq"])) < last:
            text = proc.stdout.readline()
            assert text, f"tail ended early: {proc.stderr.read() if proc.stderr else ''}"
            lines.append(json.loads(text))
    finally:
        proc.terminate()
        proc.communicate(timeout=30)  # closes the pipes
    assert [line["seq"] for line in lines] == list(range(1, last + 1))
    for item in lines:
        event = decode(json.dumps(item["event"]).encode())
        assert item["subject"] == f"mail.events.{event.org_id}.{event.event_type}"
    # --no-follow stops at the end of the stream, for scripts.
    done = stack.cli("tail", "--from-seq", "1", "--no-follow")
    assert len(done.stdout.splitlines()) >= last
