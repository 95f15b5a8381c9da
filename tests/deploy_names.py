"""The metric names that deploy/ (Prometheus rules, Grafana dashboards) reads, for the tests."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS = ROOT / "deploy" / "prometheus"
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARDS = sorted(GRAFANA.glob("*.json"))
# Prometheus's own series about each scrape: not exposed by a service, written by Prometheus.
PROMETHEUS_OWN = frozenset({"up"})
# A service metric name, not part of a recording rule's name (level:metric:operations).
_NAME = re.compile(r"(?<![\w:])(mailfold_[a-z0-9_]+|up)(?![\w:(])")
_RECORDED = re.compile(r"(?<![\w:])([a-z_]*:[a-z0-9_:]+)")


def load_yaml(name: str) -> Any:
    return yaml.safe_load((PROMETHEUS / name).read_text())


def rules(name: str) -> list[dict[str, Any]]:
    return [rule for group in load_yaml(name)["groups"] for rule in group["rules"]]


def dashboard_exprs(path: Path) -> list[str]:
    """Every PromQL expression of a dashboard: panel targets and query variables."""
    board = json.loads(path.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    for variable in board.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            exprs.append(variable["definition"])
    return exprs


def all_exprs() -> dict[str, list[str]]:
    """Expressions by file: rules, alerts, each dashboard."""
    out = {name: [r["expr"] for r in rules(name)] for name in ("rules.yml", "alerts.yml")}
    for path in DASHBOARDS:
        out[path.name] = dashboard_exprs(path)
    return out


def metric_names(expr: str) -> set[str]:
    """The service metric names (and `up`) an expression reads."""
    # Label values and matchers in quotes are not names.
    bare = re.sub(r'"[^"]*"', '""', expr)
    return set(_NAME.findall(bare))


def recorded_names(expr: str) -> set[str]:
    """The recording-rule names an expression reads."""
    bare = re.sub(r'"[^"]*"', '""', expr)
    return {n for n in _RECORDED.findall(bare) if not n.startswith(":")}


def service_metric_names() -> set[str]:
    """Every service metric name used anywhere in deploy/, Prometheus's own left out."""
    names: set[str] = set()
    for exprs in all_exprs().values():
        for expr in exprs:
            names |= metric_names(expr)
    return names - PROMETHEUS_OWN
