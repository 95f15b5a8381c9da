"""Fuzzing the running stack: every HTTP operation from its OpenAPI document, and the SMTP door.

The seed is printed (and can be set with MAILFOLD_FUZZ_SEED) so that a failure replays.
"""

from __future__ import annotations

import os
import random
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

pytestmark = pytest.mark.timeout(600)

SEED = int(os.environ.get("MAILFOLD_FUZZ_SEED") or random.randrange(2**32))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
EXAMPLES = {GenerationMode.POSITIVE: 30, GenerationMode.NEGATIVE: 20}


@pytest.fixture(scope="module")
def fuzz_org(stack: Any) -> tuple[str, str]:
    """An org of its own, so that fuzzed settings never reach the other tests' org."""
    created = stack.cli("org", "create", "fuzz")
    return "fuzz", created.stdout.strip()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize("api", ["ingest", "query"])
def test_every_operation_answers_without_a_server_error_and_as_documented(
    stack: Any, fuzz_org: tuple[str, str], api: str, mode: GenerationMode
) -> None:
    print(f"schemathesis seed {SEED} (replay with MAILFOLD_FUZZ_SEED={SEED})")
    base = str(getattr(stack, api))
    org, token = fuzz_org
    document = httpx.get(f"{base}/openapi.json", timeout=30).json()
    schema = schemathesis.openapi.from_dict(document)
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        operations.append(result.ok())
    assert operations
    for operation in operations:
        strategy = operation.as_strategy(mode, path_parameters={"org": org})
        statuses: list[int] = []

        @seed(SEED)
        @settings(
            max_examples=EXAMPLES[mode],
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def run(case: Any, statuses: list[int] = statuses) -> None:
            response = case.call_and_validate(
                base_url=base,
                headers={"Authorization": f"Bearer {token}"},
                checks=CHECKS,
                timeout=30,
            )
            statuses.append(response.status_code)

        run()
        print(operation.label, sorted(set(statuses)))
