"""What the handlers talk to, as protocols: tests pass fakes, bootstrap passes the NATS adapters."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol

from mailfold.events import AnyEvent
from mailfold.webhooks.adapters.http import Answer
from mailfold.webhooks.domain.deliveries import Delivery, Job
from mailfold.webhooks.domain.endpoints import Endpoint
from mailfold.webhooks.domain.payload import EmailFold


class EndpointStore(Protocol):
    """Endpoints by org."""

    def of_org(self, org_id: str) -> list[Endpoint]: ...
    def get(self, org_id: str, endpoint_id: str) -> Endpoint | None: ...
    async def put(self, endpoint: Endpoint) -> None: ...
    async def delete(self, org_id: str, endpoint_id: str) -> None: ...


class FoldStore(Protocol):
    """The per-email fold."""

    async def get(self, org_id: str, email_id: str) -> EmailFold | None: ...
    async def apply(self, event: AnyEvent) -> tuple[EmailFold, int]: ...


class DeliveryStore(Protocol):
    """Delivery records."""

    async def get(self, org_id: str, endpoint_id: str, event_id: str) -> Delivery | None: ...
    async def put_many(self, deliveries: Sequence[Delivery]) -> list[BaseException | None]: ...


class Queue(Protocol):
    """The durable delivery queue."""

    async def start_enqueue(self, job: Job, msg_id: str) -> asyncio.Future[int]:
        """Send one job; the future resolves with its stream sequence once stored."""


class Post(Protocol):
    """One outbound attempt."""

    async def post(self, url: str, headers: dict[str, str], body: bytes) -> Answer: ...
