"""`mailfold serve <service> --workers N`: N processes of one service on its ports, supervised.

Each worker is a fresh `mailfold serve <service>` process that binds the service's ports with
SO_REUSEPORT (MAILFOLD_REUSE_PORT), so the kernel spreads connections over the workers and a
worker that stops takes nothing from the others (docs/decisions.md says why not a pre-forked
listener). The parent only supervises: it forwards SIGTERM and SIGINT (each worker stops
accepting, finishes what is in flight and exits), starts again a worker that exits while the
service runs (after a growing pause when it died early), and gives up with a non-zero status when
one keeps dying. Metrics of all workers go through prometheus-client's multiprocess mode:
every worker writes its values to files under PROMETHEUS_MULTIPROC_DIR and `/metrics`, whichever
worker answers it, merges them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from mailfold.runtime.logging import configure_logging, get_logger
from mailfold.runtime.service import wait_set
from mailfold.runtime.settings import CommonSettings, from_env, setting

log = get_logger("mailfold.workers")


@dataclass(frozen=True, slots=True)
class Supervision:
    """How the parent keeps its workers running (MAILFOLD_WORKERS_*; see docs/operations.md)."""

    backoff_s: float = setting("MAILFOLD_WORKERS_BACKOFF_S", 0.5, positive=True)
    backoff_max_s: float = setting("MAILFOLD_WORKERS_BACKOFF_MAX_S", 10.0, positive=True)
    # A worker that ran this long before dying counts as a fresh failure, not a repeated one.
    stable_s: float = setting("MAILFOLD_WORKERS_STABLE_S", 30.0, positive=True)
    max_failures: int = setting("MAILFOLD_WORKERS_MAX_FAILURES", 5, minimum=1)
    stop_timeout_s: float = setting("MAILFOLD_WORKERS_STOP_TIMEOUT_S", 60.0, positive=True)


def _stopped(code: int) -> int:
    """The exit status of a worker asked to stop. One ended by the signal itself got it before
    it set up its handlers (it was still starting): nothing was in flight, a clean stop."""
    return 0 if code in (-signal.SIGTERM, -signal.SIGINT) else code


class _Workers:
    """The parent's state: its workers, whether it is stopping, and whether it gave up."""

    def __init__(self, service: str, count: int, policy: Supervision, metrics_dir: Path) -> None:
        self.service = service
        self.count = count
        self.policy = policy
        self.metrics_dir = metrics_dir
        self.stopping = asyncio.Event()
        self.gave_up = False

    def stop(self, sig: signal.Signals) -> None:
        if not self.stopping.is_set():
            log.info("stopping workers", signal=sig.name)
            self.stopping.set()

    async def spawn(self, index: int) -> asyncio.subprocess.Process:
        env = {
            **os.environ,
            "MAILFOLD_WORKERS": "1",
            "MAILFOLD_WORKER": str(index),
            "MAILFOLD_WORKER_PARENT": str(os.getpid()),
            "MAILFOLD_REUSE_PORT": "true",
            "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir),
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mailfold.cli", "serve", self.service, env=env
        )
        log.info("worker started", worker=index, worker_pid=proc.pid)
        return proc

    async def drain(self, index: int, proc: asyncio.subprocess.Process) -> int:
        """SIGTERM the worker and wait for it to finish (SIGKILL past the timeout).

        Always SIGTERM, even for a SIGINT: a Ctrl-C in a terminal reaches the workers too, and
        uvicorn takes a second SIGINT as an order to drop what is in flight.
        """
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(proc.wait(), self.policy.stop_timeout_s)
        except TimeoutError:
            log.error("worker did not stop in time; killed", worker=index, worker_pid=proc.pid)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            code = await proc.wait()
        self.dead(proc.pid)
        log.info("worker stopped", worker=index, worker_pid=proc.pid, exit_code=code)
        return _stopped(code)

    def dead(self, pid: int) -> None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, str(self.metrics_dir))  # type: ignore[no-untyped-call]

    async def keep(self, index: int) -> int:
        """Run worker `index` until the service stops; its last exit status."""
        failures = 0
        while True:
            proc = await self.spawn(index)
            started = time.monotonic()
            exited = asyncio.ensure_future(proc.wait())
            stopping = asyncio.ensure_future(self.stopping.wait())
            await asyncio.wait((exited, stopping), return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if not exited.done():
                exited.cancel()
                return await self.drain(index, proc)
            code = exited.result()
            self.dead(proc.pid)
            if self.stopping.is_set():
                return _stopped(code)
            if code == 0:
                # Stopped on its own request (a SIGTERM to this worker alone): a restart of
                # one worker, as in a rolling upgrade. Start it again at once.
                log.info("worker exited; starting it again", worker=index, worker_pid=proc.pid)
                failures = 0
                continue
            failures = 1 if time.monotonic() - started >= self.policy.stable_s else failures + 1
            if failures >= self.policy.max_failures:
                log.error(
                    "worker keeps dying; stopping the service",
                    worker=index,
                    exit_code=code,
                    failures=failures,
                )
                self.gave_up = True
                self.stop(signal.SIGTERM)
                return code
            pause = min(self.policy.backoff_s * 2 ** (failures - 1), self.policy.backoff_max_s)
            log.warning(
                "worker died; starting it again",
                worker=index,
                worker_pid=proc.pid,
                exit_code=code,
                failures=failures,
                pause_s=pause,
            )
            await wait_set(self.stopping, pause)
            if self.stopping.is_set():
                return 0

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop, sig)
        codes = await asyncio.gather(*(self.keep(i) for i in range(self.count)))
        if self.gave_up:
            return 1
        return 0 if all(code == 0 for code in codes) else 1


def _metrics_dir(service: str) -> tuple[Path, bool]:
    """The multiprocess metrics folder, emptied (ours: created, and removed at the end)."""
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "").strip()
    if not given:
        return Path(tempfile.mkdtemp(prefix=f"mailfold-{service}-metrics-")), True
    folder = Path(given)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.db"):  # values of an earlier run must not add to this one
        stale.unlink()
    return folder, False


def run_workers(service: str, count: int) -> int:
    """Run `count` workers of `service` until SIGTERM or SIGINT; 0 when all stopped cleanly."""
    common = CommonSettings.from_env()
    configure_logging(service, level=common.log_level, json=common.log_json)
    policy = from_env(Supervision)
    folder, ours = _metrics_dir(service)
    log.info("starting workers", workers=count)
    try:
        return asyncio.run(_Workers(service, count, policy, folder).run())
    finally:
        if ours:
            shutil.rmtree(folder, ignore_errors=True)
