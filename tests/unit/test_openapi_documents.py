"""The OpenAPI documents shipped in docs/ are the ones the services generate and serve."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mailfold.ingest.entrypoints.openapi import openapi as ingest_openapi
from mailfold.projector.entrypoints.openapi import openapi as query_openapi
from mailfold.webhooks.entrypoints.openapi import openapi as webhooks_openapi

DOCS = Path(__file__).parent.parent.parent / "docs" / "openapi"


GENERATORS: dict[str, Callable[[], dict[str, Any]]] = {
    "ingest": ingest_openapi,
    "query": query_openapi,
    "webhooks": webhooks_openapi,
}


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_the_shipped_document_is_the_generated_one(name: str) -> None:
    generated = GENERATORS[name]()
    shipped = json.loads((DOCS / f"{name}.json").read_text())
    assert shipped == json.loads(json.dumps(generated)), (
        f"regenerate: mailfold schema --openapi {name} > docs/openapi/{name}.json"
    )
    assert shipped["openapi"] == "3.1.0"


def test_every_ingest_body_names_its_fields_and_every_error_is_a_problem() -> None:
    doc = ingest_openapi()
    for path, methods in doc["paths"].items():
        for method, operation in methods.items():
            default = operation["responses"]["default"]["content"]
            assert list(default) == ["application/problem+json"], (method, path)
    compose = doc["components"]["schemas"]["ComposeEmailBody"]
    assert compose["additionalProperties"] is False
    assert {"source", "from"} <= set(compose["required"])


def test_every_webhooks_body_is_its_decoder_type_and_every_error_is_a_problem() -> None:
    doc = webhooks_openapi()
    operations = [op for methods in doc["paths"].values() for op in methods.values()]
    assert {op["operationId"] for op in operations} >= {"createWebhook", "replayWebhook"}
    for operation in operations:
        assert list(operation["responses"]["default"]["content"]) == ["application/problem+json"]
    schemas = doc["components"]["schemas"]
    assert schemas["EndpointInput"]["required"] == ["url"]
    assert schemas["EndpointInput"]["additionalProperties"] is False
    assert set(schemas["ReplayRequest"]["properties"]) == {"event_id", "since", "until"}


def test_the_query_document_declares_the_stats_parameters() -> None:
    stats = query_openapi()["paths"]["/v1/orgs/{org}/stats"]["get"]
    assert [p["name"] for p in stats["parameters"]] == ["org", "from", "to", "source"]
    answer = stats["responses"]["200"]["content"]["application/json"]["schema"]
    assert answer == {"$ref": "#/components/schemas/OrgStats"}
