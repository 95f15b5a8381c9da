"""`mailfold schema --asyncapi`: FastStream's AsyncAPI 3 document of every service's broker.

Each service declares its subscribers and publishers on its broker in its composition root
(`declare`); this builds those brokers without connecting them and asks FastStream for the
document. An operation is named `<service>:<event_type>`: `send` for a publisher, `receive` for
a subscriber, so each channel (subject) says who publishes it and who consumes it.
"""

from __future__ import annotations

import json
from typing import Any

from faststream.specification import AsyncAPI

from mailfold.events import DLQ_STREAM, STREAM
from mailfold.runtime.broker import UNCONNECTED_URL, described_broker


def asyncapi_document() -> dict[str, Any]:
    """The document, as JSON-ready data."""
    from mailfold.ingest import bootstrap as ingest
    from mailfold.mailbox import bootstrap as mailbox
    from mailfold.projector.entrypoints import consumer as projector
    from mailfold.sender import bootstrap as sender
    from mailfold.sender.service_layer.handlers import DONE, Disposition
    from mailfold.tracker import bootstrap as tracker
    from mailfold.webhooks import bootstrap as webhooks

    async def never(event: Any, redelivered: bool) -> Disposition:  # pragma: no cover
        return DONE

    async def nothing(batch: Any, raw: Any) -> None:  # pragma: no cover
        return None

    sender_broker = described_broker("sender")
    sender.declare(sender_broker, never, sender.Settings.from_env())
    webhooks_broker = described_broker("webhooks")
    webhooks.declare(webhooks_broker, nothing, webhooks.Settings(nats_url=UNCONNECTED_URL))
    brokers = [
        ingest.declare(described_broker("ingest")),
        sender_broker,
        tracker.declare(described_broker("tracker")),
        projector.declare(described_broker("projector")),
        webhooks_broker,
        mailbox.declare(described_broker("mailbox")),
    ]
    spec = AsyncAPI(
        *brokers,
        title="mailfold",
        version="1",
        description=f"Every fact about every email, on the JetStream stream {STREAM}; "
        f"messages a consumer cannot use on {DLQ_STREAM} (`mail.dlq.<consumer>`).",
    )
    doc: dict[str, Any] = json.loads(spec.to_specification().to_json())
    return doc
