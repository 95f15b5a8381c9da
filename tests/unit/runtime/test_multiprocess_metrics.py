"""Every metric of every service, FastStream's included, in prometheus-client's multiprocess mode.

`mailfold serve --workers N` sets PROMETHEUS_MULTIPROC_DIR for its workers; prometheus-client
reads it when first imported, so each check runs in a fresh interpreter.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = r"""
import importlib, json
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.metrics import Gauge, MetricWrapperBase

for module in (
    "mailfold.ingest.metrics", "mailfold.sender.metrics", "mailfold.tracker.metrics",
    "mailfold.projector.metrics", "mailfold.projector.entrypoints.pipeline_metrics",
    "mailfold.webhooks.metrics", "mailfold.mailbox.metrics", "mailfold.runtime.broker",
):
    importlib.import_module(module)
from mailfold.runtime.broker import new_broker
from mailfold.runtime.ops import scraped

new_broker("nats://127.0.0.1:1", service="probe")  # FastStream's metrics join the registry
metrics, modes = [], {}
for collector in list(REGISTRY._collector_to_names):
    if not isinstance(collector, MetricWrapperBase):
        continue
    child = collector.labels(*["x"] * len(collector._labelnames)) if collector._labelnames else collector
    if isinstance(collector, Gauge):
        child.set(3)
        modes[collector._name] = collector._multiprocess_mode
    elif hasattr(child, "inc"):
        child.inc(3)
    else:
        child.observe(3)
    metrics.append(collector._name)
from mailfold.mailbox.metrics import BOARD  # a collector computed at scrape time

BOARD.held("box-a")
BOARD.held("box-b")
BOARD.export()  # what each mailbox worker does every few seconds
BOARD.dropped("box-b")  # the mailbox moved to another copy
BOARD.export()
print(json.dumps({
    "metrics": metrics, "modes": modes, "text": generate_latest(scraped(REGISTRY)).decode(),
}))
"""


def probe(multiproc_dir: Path | None, cwd: Path | None = None) -> dict[str, object]:
    """Run PROBE; in multiprocess mode with `multiproc_dir` (prometheus-client takes the
    variable's presence, even empty, for multiprocess mode: it is left out otherwise)."""
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    if multiproc_dir is not None:
        multiproc_dir.mkdir(exist_ok=True)
        env["PROMETHEUS_MULTIPROC_DIR"] = str(multiproc_dir)
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        env=env,
        cwd=cwd,
        capture_output=True,
        check=True,
        timeout=120,
    )
    result: dict[str, object] = json.loads(out.stdout)
    return result


@pytest.mark.parametrize("multiprocess", [False, True], ids=["one process", "workers"])
def test_every_metric_is_scraped_with_its_value(multiprocess: bool, tmp_path: Path) -> None:
    result = probe(tmp_path / "metrics" if multiprocess else None, cwd=tmp_path)
    metrics, text = result["metrics"], str(result["text"])
    assert isinstance(metrics, list)
    assert "mailfold_received_messages_in_process" in metrics  # FastStream's, shared registry
    assert len(metrics) > 60
    for name in metrics:
        # Counters show as <name>_total, histograms as <name>_count: every one is there, set.
        assert any(
            line.startswith((f"{name}{{", f"{name} ", f"{name}_total", f"{name}_count"))
            and not line.endswith(" 0.0")
            for line in text.splitlines()
        ), name
    # The mailbox's sync board: a collector in one process, shared gauges with workers.
    assert 'mailfold_mailbox_mailboxes{state="pending"} 1.0' in text
    assert re.search(r'^mailfold_mailbox_sync_lag_seconds\{mailbox="box-a"\} \d', text, re.M)
    if multiprocess:
        assert list((tmp_path / "metrics").glob("*.db"))  # values went through the shared files
        assert 'mailfold_mailbox_sync_lag_seconds{mailbox="box-b"} 0.0' in text  # dropped
    else:
        assert 'mailbox="box-b"' not in text
        assert not list(tmp_path.rglob("*.db"))  # one process keeps its values in memory


def test_every_gauge_says_how_workers_combine_and_forgets_dead_ones() -> None:
    modes = probe(None)["modes"]
    assert isinstance(modes, dict)
    assert modes
    # A `live*` mode drops a worker's value when the parent marks it dead (a restart).
    assert {name: mode for name, mode in modes.items() if not mode.startswith("live")} == {}
