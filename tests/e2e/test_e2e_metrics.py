"""Every metric that a dashboard or a Prometheus rule reads is on a running service's /metrics."""

from __future__ import annotations

import re

import httpx
from tests.deploy_names import service_metric_names
from tests.e2e.conftest import Stack

_TYPE = re.compile(r"^# TYPE (\S+) (\S+)$")
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]")
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}


def exposed(text: str) -> set[str]:
    """The names a scrape offers: samples, and for families without samples yet (labelled
    metrics never incremented) the names their type gives them."""
    names: set[str] = set()
    for line in text.splitlines():
        if typed := _TYPE.match(line):
            name, kind = typed.groups()
            names.add(name)
            names.update(name + suffix for suffix in _SUFFIXES.get(kind, ()))
        elif not line.startswith("#") and (sample := _SAMPLE.match(line)):
            names.add(sample.group(1))
    return names


def test_every_metric_in_the_dashboards_and_rules_is_scraped_from_the_running_stack(
    stack: Stack,
) -> None:
    keys = ("ingest_url", "sender_url", "tracker_url", "webhooks_url")
    urls = [str(stack.runtime[key]) for key in keys]
    ports = dict(stack.runtime["ports"])  # type: ignore[call-overload]
    urls.append(f"http://127.0.0.1:{ports['mailbox_http']}")
    urls.append(stack.query)
    scraped: set[str] = set()
    with httpx.Client(timeout=10) as client:
        for url in urls:
            response = client.get(f"{url}/metrics")
            assert response.status_code == 200, url
            assert response.headers["content-type"].startswith("text/plain")
            scraped |= exposed(response.text)
    wanted = service_metric_names()
    assert len(wanted) > 30  # the deliverability and pipeline names, not an empty parse
    assert wanted - scraped == set()
