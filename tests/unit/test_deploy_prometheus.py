"""The Prometheus config scrapes every service; the rules and alerts are valid (promtool), each
alert is unit-tested firing and quiet, names metrics the services expose and links a runbook."""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY
from tests.deploy_names import (
    PROMETHEUS,
    PROMETHEUS_OWN,
    ROOT,
    load_yaml,
    metric_names,
    recorded_names,
    rules,
)

SERVICES = ("ingest", "sender", "tracker", "projector", "webhooks", "mailbox")
# Modules that define metrics beyond each service's metrics.py.
METRIC_MODULES = (
    "mailfold.projector.service_layer.deliverability",
    "mailfold.projector.entrypoints.pipeline_metrics",
)
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
TEST_FILES = ("tests/alerts_test.yml", "tests/complaints_test.yml")


def _exposed_names() -> set[str]:
    for service in SERVICES:
        importlib.import_module(f"mailfold.{service}.metrics")
    for module in METRIC_MODULES:
        importlib.import_module(module)
    names: set[str] = set()
    for family in REGISTRY.collect():
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        if family.type == "counter":
            names.add(family.name + "_total")
        if family.type == "histogram":
            names.update(family.name + suffix for suffix in ("_bucket", "_count", "_sum"))
    return names


def test_every_service_is_scraped_on_its_default_port() -> None:
    jobs = {job["job_name"]: job for job in load_yaml("prometheus.yml")["scrape_configs"]}
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
    assert load_yaml("prometheus.yml")["rule_files"] == ["rules.yml", "alerts.yml"]


ALERTS = rules("alerts.yml")
RECORDS = rules("rules.yml")


@pytest.mark.parametrize(
    "rule", ALERTS + RECORDS, ids=[r.get("alert") or r["record"] for r in ALERTS + RECORDS]
)
def test_every_rule_names_metrics_the_services_expose_or_rules_record(rule: dict[str, Any]) -> None:
    used = metric_names(rule["expr"]) - PROMETHEUS_OWN
    recorded = recorded_names(rule["expr"])
    assert metric_names(rule["expr"]) or recorded, rule["expr"]
    assert used <= _exposed_names()
    assert recorded <= {r["record"] for r in RECORDS}


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    anchors = set()
    for line in markdown.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", title)))
    return anchors


@pytest.mark.parametrize("alert", ALERTS, ids=[r["alert"] for r in ALERTS])
def test_every_alert_has_a_summary_a_severity_and_a_runbook_in_the_operations_page(
    alert: dict[str, Any],
) -> None:
    assert alert["annotations"]["summary"]
    assert alert["labels"]["severity"] in {"page", "ticket"}
    page, _, anchor = alert["annotations"]["runbook_url"].partition("#")
    assert page == "docs/operations.md"
    assert anchor in _anchors((ROOT / page).read_text())


def test_every_alert_is_unit_tested_firing_and_quiet() -> None:
    tests = [
        test
        for name in TEST_FILES
        for test in yaml.safe_load((PROMETHEUS / name).read_text())["tests"]
    ]
    firing: set[str] = set()
    quiet: set[str] = set()
    for test in tests:
        for case in test["alert_rule_test"]:
            (firing if case["exp_alerts"] else quiet).add(case["alertname"])
    names = {a["alert"] for a in ALERTS}
    assert firing == names
    assert quiet == names


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert Path(PROMTOOL).exists(), (
        "promtool missing: run `make system-packages` (Debian package prometheus)"
    )
    return subprocess.run(
        [PROMTOOL, *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=60, check=False
    )


def test_promtool_accepts_the_rules_and_the_config() -> None:
    checked = _promtool("check", "rules", "rules.yml", "alerts.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 13 rules found" in checked.stdout
    assert f"SUCCESS: {len(ALERTS)} rules found" in checked.stdout
    config = _promtool("check", "config", "--syntax-only", "prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr


def test_promtool_unit_tests_of_the_alerts_pass() -> None:
    run = _promtool("test", "rules", *TEST_FILES)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("SUCCESS") == len(TEST_FILES)


def test_promtool_fails_an_alert_test_whose_expectation_is_wrong(tmp_path: Path) -> None:
    """The unit tests can fail: the same file with one expectation flipped does."""
    for name in ("rules.yml", "alerts.yml"):
        shutil.copy(PROMETHEUS / name, tmp_path / name)
    tests = yaml.safe_load((PROMETHEUS / "tests" / "alerts_test.yml").read_text())
    tests["rule_files"] = ["rules.yml", "alerts.yml"]
    tests["tests"] = tests["tests"][:1]
    case = tests["tests"][0]["alert_rule_test"][0]
    assert case["exp_alerts"] == []
    case["exp_alerts"] = [{"exp_labels": {"severity": "page"}}]
    (tmp_path / "t.yml").write_text(yaml.safe_dump(tests))
    run = subprocess.run(
        [PROMTOOL, "test", "rules", "t.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode != 0
    assert "FAILED" in run.stdout + run.stderr
