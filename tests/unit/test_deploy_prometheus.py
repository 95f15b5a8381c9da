"""The Prometheus config scrapes every service, and every alert names metrics that exist."""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

PROMETHEUS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
SERVICES = ("ingest", "sender", "tracker", "projector", "webhooks", "mailbox")


def _load(name: str) -> Any:
    return yaml.safe_load((PROMETHEUS / name).read_text())


def _exposed_names() -> set[str]:
    for service in SERVICES:
        importlib.import_module(f"mailfold.{service}.metrics")
    names: set[str] = set()
    for family in REGISTRY.collect():
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        if family.type == "counter":
            names.add(family.name + "_total")
    return names


def test_every_service_is_scraped_on_its_default_port() -> None:
    jobs = {job["job_name"]: job for job in _load("prometheus.yml")["scrape_configs"]}
    ports = {
        "ingest": 8001,
        "tracker": 8002,
        "projector": 8003,
        "sender": 8004,
        "webhooks": 8006,
        "mailbox": 8005,
    }
    for service, port in ports.items():
        targets = jobs[f"mailfold-{service}"]["static_configs"][0]["targets"]
        assert targets == [f"127.0.0.1:{port}"]
    assert _load("prometheus.yml")["rule_files"] == ["alerts.yml"]


ALERTS = [rule for group in _load("alerts.yml")["groups"] for rule in group["rules"]]


@pytest.mark.parametrize("rule", ALERTS, ids=[r["alert"] for r in ALERTS])
def test_every_alert_names_metrics_the_services_expose(rule: dict[str, Any]) -> None:
    used = set(re.findall(r"mailfold_[a-z_]+", rule["expr"]))
    assert used, rule["expr"]
    assert used <= _exposed_names()
    assert rule["annotations"]["summary"]
