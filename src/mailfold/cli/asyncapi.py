"""An AsyncAPI 3 document of the event streams, generated from the event types."""

from __future__ import annotations

from typing import Any

from mailfold.events import EVENT_CLASSES, json_schema
from mailfold.events.subjects import DLQ_STREAM, STREAM


def asyncapi_document() -> dict[str, Any]:
    """Channels `mail.events.{org}.<type>`, one message per event type, payloads from msgspec."""
    schema = json_schema()
    defs = schema["$defs"]
    assert isinstance(defs, dict)
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for cls in EVENT_CLASSES:
        tag = str(cls.__struct_config__.tag)
        name = cls.__name__
        messages[name] = {
            "name": name,
            "title": name,
            "summary": (cls.__doc__ or "").strip(),
            "contentType": "application/json",
            "headers": {
                "type": "object",
                "properties": {"Nats-Msg-Id": {"type": "string", "description": "the event_id"}},
            },
            "payload": {"$ref": f"#/components/schemas/{name}"},
        }
        channels[tag] = {
            "address": f"mail.events.{{org}}.{tag}",
            "parameters": {"org": {"description": "the org id"}},
            "messages": {name: {"$ref": f"#/components/messages/{name}"}},
        }
        operations[f"receive_{tag}"] = {
            "action": "receive",
            "channel": {"$ref": f"#/channels/{tag}"},
        }
    schemas = {k: _rewrite_refs(v) for k, v in defs.items()}
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "mailfold events",
            "version": "1",
            "description": f"Every fact about every email, on the JetStream stream {STREAM}; "
            f"poison messages on {DLQ_STREAM}.",
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }


def _rewrite_refs(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            k: (v.replace("#/$defs/", "#/components/schemas/") if k == "$ref" else _rewrite_refs(v))
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_rewrite_refs(v) for v in node]
    return node
