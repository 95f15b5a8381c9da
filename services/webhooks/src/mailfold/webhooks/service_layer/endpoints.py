"""Creating, changing and removing endpoints: validation, SSRF check, secrets and rotation."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import msgspec

from mailfold.webhooks.adapters.http import Resolve, UnreachableAddress, checked_address, resolve
from mailfold.webhooks.domain.endpoints import (
    MAX_ENDPOINTS_PER_ORG,
    MAX_SECRETS,
    Endpoint,
    EndpointInput,
    EndpointPatch,
    InvalidField,
    Secret,
    TooManyEndpoints,
    check_event_types,
    check_secret,
    check_sources,
    check_url_shape,
    new_secret,
)
from mailfold.webhooks.service_layer.ports import EndpointStore


def new_endpoint_id() -> str:
    """`ep_` and 24 hex characters: safe in KV keys, subjects and consumer names."""
    return "ep_" + secrets.token_hex(12)


class Manager:
    """Endpoint changes, as the API asks for them."""

    def __init__(
        self,
        store: EndpointStore,
        *,
        allow_loopback: bool,
        resolver: Resolve = resolve,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_deleted: Callable[[str, str], Awaitable[None]] | None = None,
    ) -> None:
        self._store = store
        self._allow_loopback = allow_loopback
        self._resolver = resolver
        self._clock = clock
        self._on_deleted = on_deleted

    async def _check_url(self, url: str) -> str:
        # http is for development, and then only to loopback (the address check below).
        check_url_shape(url, allow_http=self._allow_loopback)
        try:
            await checked_address(url, allow_loopback=self._allow_loopback, resolver=self._resolver)
        except UnreachableAddress as exc:
            raise InvalidField("url", f"refused: {exc}") from exc
        return url

    async def create(self, org_id: str, data: EndpointInput) -> tuple[Endpoint, str]:
        """A new endpoint, and its secret (shown to the caller once)."""
        if len(self._store.of_org(org_id)) >= MAX_ENDPOINTS_PER_ORG:
            raise TooManyEndpoints(f"an org has at most {MAX_ENDPOINTS_PER_ORG} webhook endpoints")
        url = await self._check_url(data.url)
        secret = check_secret(data.secret) if data.secret is not None else new_secret()
        now = self._clock()
        endpoint = Endpoint(
            endpoint_id=new_endpoint_id(),
            org_id=org_id,
            url=url,
            event_types=check_event_types(data.event_types),
            sources=check_sources(data.sources),
            description=data.description,
            secrets=(Secret(value=secret, created_at=now),),
            enabled=data.enabled,
            created_at=now,
            updated_at=now,
        )
        await self._store.put(endpoint)
        return endpoint, secret

    async def patch(self, endpoint: Endpoint, data: EndpointPatch) -> tuple[Endpoint, str | None]:
        """The changed endpoint, and a new secret when one was rotated in (shown once)."""
        changes: dict[str, object] = {}
        if data.url is not None:
            changes["url"] = await self._check_url(data.url)
        if data.event_types is not None:
            changes["event_types"] = check_event_types(data.event_types)
        if data.sources is not None:
            changes["sources"] = check_sources(data.sources)
        if data.description is not None:
            changes["description"] = data.description
        if data.enabled is not None:
            changes["enabled"] = data.enabled
            if data.enabled:
                changes["disabled_reason"] = ""
        now = self._clock()
        shown: str | None = None
        kept = endpoint.secrets
        if data.drop_old_secrets:
            kept = kept[:1]
        if data.rotate_secret or data.secret is not None:
            shown = check_secret(data.secret) if data.secret is not None else new_secret()
            # The new secret signs next to the previous one until the receiver has switched.
            kept = (Secret(value=shown, created_at=now), *kept)[:MAX_SECRETS]
        changes["secrets"] = kept
        changes["updated_at"] = now
        updated = msgspec.structs.replace(endpoint, **changes)
        await self._store.put(updated)
        return updated, shown

    async def delete(self, endpoint: Endpoint) -> None:
        """Remove the endpoint, then what it leaves behind (queued jobs, delivery records)."""
        await self._store.delete(endpoint.org_id, endpoint.endpoint_id)
        if self._on_deleted is not None:
            await self._on_deleted(endpoint.org_id, endpoint.endpoint_id)
