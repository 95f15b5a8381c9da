"""The Grafana dashboards are portable (fixed uid, pinned schema, one data source input) and read
only metrics the services expose or the recording rules write."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tests.deploy_names import (
    DASHBOARDS,
    PROMETHEUS_OWN,
    dashboard_exprs,
    metric_names,
    recorded_names,
    rules,
)
from tests.unit.test_deploy_prometheus import _exposed_names

DS = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}


def _board(path: Path) -> dict[str, Any]:
    board: dict[str, Any] = json.loads(path.read_text())
    return board


def test_the_two_dashboards_exist_with_fixed_uids_and_titles() -> None:
    boards = {_board(p)["uid"]: _board(p)["title"] for p in DASHBOARDS}
    assert boards == {
        "mailfold-deliverability": "mailfold: deliverability",
        "mailfold-pipeline": "mailfold: pipeline",
    }


@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.name for p in DASHBOARDS])
def test_a_dashboard_is_portable(path: Path) -> None:
    board = _board(path)
    assert board["schemaVersion"] == 39
    assert board["id"] is None
    assert [(i["name"], i["type"], i["pluginId"]) for i in board["__inputs"]] == [
        ("DS_PROMETHEUS", "datasource", "prometheus")
    ]
    panels = [p for p in board["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in board["panels"]}) == len(board["panels"])
    for panel in panels:
        assert panel["datasource"] == DS, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DS, panel["title"]
    for variable in board["templating"]["list"]:
        assert variable["datasource"] == DS
    # Nothing names a data source other than through the input.
    assert "${DS_PROMETHEUS}" in path.read_text()
    assert '"uid": "prometheus"' not in path.read_text()


@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.name for p in DASHBOARDS])
def test_every_dashboard_expression_reads_exposed_metrics_or_recorded_rules(path: Path) -> None:
    recorded = {r["record"] for r in rules("rules.yml")}
    for expr in dashboard_exprs(path):
        used = metric_names(expr) - PROMETHEUS_OWN
        assert metric_names(expr) or recorded_names(expr), expr
        assert used <= _exposed_names(), expr
        assert recorded_names(expr) <= recorded, expr


def test_the_deliverability_dashboard_covers_what_the_mail_does() -> None:
    board = _board(next(p for p in DASHBOARDS if p.name == "mailfold-deliverability.json"))
    text = json.dumps(board)
    for metric in (
        "mailfold_deliverability_milestones_total",
        "mailfold_deliverability_bounces_total",
        "mailfold_deliverability_opens_total",
        "mailfold_deliverability_clicks_total",
        "mailfold_deliverability_complaints_total",
        "mailfold_deliverability_violations_total",
        "mailfold_deliverability_sent_to_delivered_seconds_bucket",
        "mailfold_deliverability_sent_to_first_open_seconds_bucket",
    ):
        assert metric in text
    assert "topk(10" in text
    assert any(v["name"] == "source" for v in board["templating"]["list"])
