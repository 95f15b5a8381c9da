"""OpenAPI 3.1 documents built from the msgspec types the handlers convert requests to.

A service lists its operations (method, path, parameters, body type, answer types); the JSON
Schemas come from `msgspec.json.schema_components`, so the document cannot drift from what the
handlers accept. Every error answer is the one problem+json document (`Problem` below).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mailfold.runtime.problems import PROBLEM_JSON

_REF: Final = "#/components/schemas/{name}"


class ProblemField(msgspec.Struct, kw_only=True):
    """One field at fault."""

    field: str
    message: str


class Problem(msgspec.Struct, kw_only=True):
    """An RFC 9457 problem document: every error any service answers."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[ProblemField]


@dataclass(frozen=True, slots=True)
class Param:
    """A path, query or header parameter, with its JSON Schema."""

    name: str
    where: str  # "path" | "query" | "header"
    schema: dict[str, Any]
    description: str = ""
    required: bool = False


@dataclass(frozen=True, slots=True)
class Operation:
    """One method on one path."""

    method: str
    path: str
    operation_id: str
    summary: str
    # status -> (description, answer type: None for no body, a tuple for one of several types)
    answers: dict[int, tuple[str, Any]]
    params: Sequence[Param] = ()
    body: Any = None
    tags: Sequence[str] = ()
    links: dict[int, dict[str, Any]] = field(default_factory=dict)


def document(
    *, title: str, version: str, description: str, operations: Sequence[Operation]
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of these operations, with bearer auth and problem answers."""
    types: list[Any] = [Problem]
    for op in operations:
        if op.body is not None:
            types.append(op.body)
        for _, answer in op.answers.values():
            types.extend(
                answer if isinstance(answer, tuple) else [] if answer is None else [answer]
            )
    schemas, components = msgspec.json.schema_components(types, ref_template=_REF)
    schema_of = dict(zip(map(id, types), schemas, strict=True))
    problem_ref = schema_of[id(Problem)]
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        responses: dict[str, Any] = {}
        for status, (text, answer_type) in op.answers.items():
            response: dict[str, Any] = {"description": text}
            if isinstance(answer_type, tuple):
                schema = {"anyOf": [schema_of[id(t)] for t in answer_type]}
                response["content"] = {"application/json": {"schema": schema}}
            elif answer_type is not None:
                response["content"] = {"application/json": {"schema": schema_of[id(answer_type)]}}
            if status in op.links:
                response["links"] = op.links[status]
            responses[str(status)] = response
        responses["default"] = {
            "description": "Refused or failed: the fields at fault are in `errors`",
            "content": {PROBLEM_JSON: {"schema": problem_ref}},
        }
        operation: dict[str, Any] = {
            "operationId": op.operation_id,
            "summary": op.summary,
            "tags": list(op.tags),
            "parameters": [
                {
                    "name": p.name,
                    "in": p.where,
                    "required": p.required or p.where == "path",
                    "schema": p.schema,
                    **({"description": p.description} if p.description else {}),
                }
                for p in op.params
            ],
            "responses": responses,
        }
        if op.body is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": schema_of[id(op.body)]}},
            }
        paths.setdefault(op.path, {})[op.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": description},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }


def openapi_route(doc: dict[str, Any]) -> Route:
    """`GET /openapi.json`: the service's document (no token needed)."""
    body = msgspec.json.encode(doc)

    async def serve(_: Request) -> Response:
        return Response(body, media_type="application/json")

    return Route("/openapi.json", serve, methods=["GET"])
