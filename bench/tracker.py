"""Tracker pixel throughput and latency, next to a bare ASGI app serving the same GIF, same stack.

Each server runs in its own process (`mailfold serve tracker`, and this script with `--bare`),
both on the tracker's own uvicorn runner, so the server stack and its settings are the same. The load
generator, here, is a raw asyncio HTTP/1.1 client with 50 keep-alive connections. A third server,
`mailfold serve tracker --workers 2`, is measured in the same rounds (`tracker.workers_2`: its
req/s over one worker's, with the CPU each server used). Afterwards every 2xx answer of the
trackers must be one event in MAIL_EVENTS.

    uv run --frozen python bench/tracker.py
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import psutil

from _results import record
from mailfold.cli.embedded import EmbeddedNats, free_port
from mailfold.events import Keyring, TokenKind, TrackingClaims, new_id
from mailfold.events.subjects import STREAM
from mailfold.runtime import bus

HOST: Final = "127.0.0.1"
CORES: Final = psutil.cpu_count() or 1
CONNECTIONS: Final = 50
WARMUP_S: Final = 2.0
MEASURE_S: Final = 6.0
# Interleaved rounds, best kept: the machine is shared, and other load only ever slows a round.
ROUNDS: Final = 3
KEYS: Final = "bench:a-benchmark-tracking-key-0123456789"
BROWSER: Final = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36"
)


@dataclass
class Load:
    """What one load run saw."""

    answers_2xx: int = 0
    others: int = 0
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    server_cpu: float = 0.0  # cores the server used while loaded
    machine_cpu: float = 0.0  # cores busy on the whole machine meanwhile

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def percentile_ms(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else 0.0


def pixel_requests(count: int) -> list[bytes]:
    """GET requests for `count` distinct open tokens, as a browser would send them."""
    ring = Keyring.parse(KEYS)
    requests = []
    for i in range(count):
        token = ring.sign(
            TrackingClaims(TokenKind.OPEN, "benchorg", new_id(), f"reader{i}@example.org")
        )
        requests.append(
            f"GET /o/{token}.gif HTTP/1.1\r\nHost: {HOST}\r\nUser-Agent: {BROWSER}\r\n"
            "Accept: image/avif,image/webp,*/*\r\n\r\n".encode()
        )
    return requests


async def _connection(
    port: int, requests: list[bytes], offset: int, warm_until: float, stop_at: float, load: Load
) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    i = offset
    try:
        while True:
            started = time.perf_counter()
            if started >= stop_at:
                return
            writer.write(requests[i % len(requests)])
            i += 1
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            lowered = head.lower()
            at = lowered.find(b"content-length:")
            if at >= 0:
                length = int(lowered[at + 15 : lowered.find(b"\r\n", at)])
                if length:
                    await reader.readexactly(length)
            if 200 <= status < 300:
                load.answers_2xx += 1
            else:
                load.others += 1
            if started >= warm_until:
                load.latencies.append(time.perf_counter() - started)
    finally:
        writer.close()
        await writer.wait_closed()


async def run_load(port: int, requests: list[bytes]) -> Load:
    """CONNECTIONS keep-alive connections for WARMUP_S, then MEASURE_S measured."""
    load = Load()
    now = time.perf_counter()
    warm_until = now + WARMUP_S
    stop_at = warm_until + MEASURE_S
    await asyncio.gather(
        *(_connection(port, requests, n * 7, warm_until, stop_at, load) for n in range(CONNECTIONS))
    )
    load.seconds = MEASURE_S
    return load


def wait_healthy(port: int, proc: subprocess.Popen[bytes], path: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with {proc.returncode}")
        try:
            conn = http.client.HTTPConnection(HOST, port, timeout=1)
            conn.request("GET", path)
            status = conn.getresponse().status
            conn.close()
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server on port {port} did not answer {path}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def stream_count(url: str) -> int:
    nc = await bus.connect(url, "bench-tracker", reconnect=False)
    try:
        info = await nc.jetstream().stream_info(STREAM)
        return int(info.state.messages)
    finally:
        await bus.close(nc)


async def prepare(url: str) -> None:
    nc = await bus.connect(url, "bench-tracker", reconnect=False)
    try:
        await bus.ensure_topology(nc.jetstream())
    finally:
        await bus.close(nc)


def serve_bare(port: int) -> None:
    """The baseline: an ASGI app that only answers the GIF, on the tracker's HTTP server class."""
    from starlette.types import Receive, Scope, Send

    from mailfold.runtime.ops import HttpServer
    from mailfold.tracker.entrypoints.http import PIXEL, PIXEL_HEADERS

    async def bare(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": PIXEL_HEADERS})
        await send({"type": "http.response.body", "body": PIXEL})

    async def main() -> None:
        server = HttpServer(bare, HOST, port)
        await server.start()
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stopping.set)
        await stopping.wait()
        await server.stop()

    asyncio.run(main())


def cpu_seconds(pid: int) -> float:
    """CPU time used so far by a process and its children (a parent's workers)."""
    total = 0.0
    parent = psutil.Process(pid)
    for proc in (parent, *parent.children(recursive=True)):
        times = proc.cpu_times()
        total += times.user + times.system
    return total


def measure(nats_url: str) -> tuple[dict[str, list[Load]], int, int]:
    """Interleaved load rounds on both servers; then the tracker's answers and stored events."""
    requests = pixel_requests(1000)
    tracker_port, bare_port, workers_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "MAILFOLD_NATS_URL": nats_url,
        "MAILFOLD_HTTP_HOST": HOST,
        "MAILFOLD_TRACKER_PORT": str(tracker_port),
        "MAILFOLD_TRACKING_KEYS": KEYS,
        "MAILFOLD_LOG_LEVEL": "warning",
        "MAILFOLD_TRACKER_FLUSH_TIMEOUT_S": "60",
    }
    tracker = subprocess.Popen([sys.executable, "-m", "mailfold.cli", "serve", "tracker"], env=env)
    bare = subprocess.Popen([sys.executable, __file__, "--bare", str(bare_port)])
    workers = subprocess.Popen(
        [sys.executable, "-m", "mailfold.cli", "serve", "tracker", "--workers", "2"],
        env=env | {"MAILFOLD_TRACKER_PORT": str(workers_port)},
    )
    results: dict[str, list[Load]] = {"bare": [], "tracker": [], "workers_2": []}
    servers = (
        ("bare", bare_port, bare),
        ("tracker", tracker_port, tracker),
        ("workers_2", workers_port, workers),
    )
    try:
        wait_healthy(tracker_port, tracker, "/healthz")
        wait_healthy(bare_port, bare, "/o/x.gif")
        wait_healthy(workers_port, workers, "/healthz")
        time.sleep(2)  # both workers up, not only the first to answer
        for _ in range(ROUNDS):
            for name, port, proc in servers:
                psutil.cpu_percent()
                used = cpu_seconds(proc.pid)
                load = asyncio.run(run_load(port, requests))
                load.server_cpu = (cpu_seconds(proc.pid) - used) / (WARMUP_S + MEASURE_S)
                load.machine_cpu = psutil.cpu_percent() * CORES / 100
                results[name].append(load)
                print(
                    f"{name:9s} {load.rps:8.0f} req/s  p50 {load.percentile_ms(0.5):6.2f} ms"
                    f"  p99 {load.percentile_ms(0.99):6.2f} ms  non-2xx {load.others}"
                    f"  server CPU {load.server_cpu:4.2f} cores, machine {load.machine_cpu:4.2f}"
                    f" of {CORES}",
                    flush=True,
                )
        answers = sum(load.answers_2xx for load in results["tracker"] + results["workers_2"])
        # The publisher drains in the background; the count is final once the tracker stopped.
        deadline = time.monotonic() + 60
        while asyncio.run(stream_count(nats_url)) < answers and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        stop(tracker)
        stop(bare)
        stop(workers)
    return results, answers, asyncio.run(stream_count(nats_url))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bare", type=int, metavar="PORT", help="serve the baseline app only")
    args = parser.parse_args()
    if args.bare:
        serve_bare(args.bare)
        return 0

    with (
        tempfile.TemporaryDirectory(prefix="bench-tracker-") as tmp,
        EmbeddedNats(Path(tmp) / "nats") as nats_server,
    ):
        asyncio.run(prepare(nats_server.url))
        results, answers, events = measure(nats_server.url)

    best_tracker = max(results["tracker"], key=lambda load: load.rps)
    bare_rps = max(load.rps for load in results["bare"])
    tracker_rps = best_tracker.rps
    p50 = best_tracker.percentile_ms(0.5)
    p99 = best_tracker.percentile_ms(0.99)
    print(
        f"tracker {tracker_rps:.0f} req/s (p50 {p50:.2f} ms, p99 {p99:.2f} ms) vs bare "
        f"{bare_rps:.0f} req/s; {answers} answers 2xx, {events} events in {STREAM}"
    )
    best_workers = max(results["workers_2"], key=lambda load: load.rps)
    print(
        f"tracker --workers 2: {best_workers.rps:.0f} req/s using {best_workers.server_cpu:.2f}"
        f" cores (machine {best_workers.machine_cpu:.2f} busy) vs 1 worker {tracker_rps:.0f}"
        f" req/s using {best_tracker.server_cpu:.2f} cores (machine"
        f" {best_tracker.machine_cpu:.2f} busy); the load generator shares the machine"
    )
    record("tracker.pixel", tracker_rps, "req/s", bare_rps)
    record("tracker.workers_2", best_workers.rps, "req/s", tracker_rps)
    record("tracker.p99_ms", p99, "ms", 15.0)
    record("tracker.lost", answers - events, "events", 1.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
