"""Composing a bulk send: one EmailComposed per recipient, all of one campaign.

Mass Email and the other bulk sources reach each recipient alone: each target becomes its own
email, with only its recipient in To, tracked like an individual email, attached only to the
records that have its address. The campaign id is claimed under the Idempotency-Key like an
email id is; every email id is derived from it, so a repeated request publishes the same events.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Final

import msgspec

from mailfold.events import EmailComposed, new_id
from mailfold.ingest.domain.campaigns import (
    REFUSED,
    CampaignView,
    Refusal,
    TargetView,
    Wanted,
    campaign_email_id,
    records_of,
    wanted_targets,
)
from mailfold.ingest.domain.requests import ComposeEmail
from mailfold.ingest.domain.template import Template
from mailfold.ingest.service_layer import quota
from mailfold.ingest.service_layer.api import (
    HTML,
    PRODUCER,
    TEXT,
    _body,
    _check_mailbox,
    _check_payload,
    _check_size,
    _store_attachments,
    _template,
    composed_event_id,
    named_records,
)
from mailfold.ingest.service_layer.ports import IdempotencyClaim, Ports
from mailfold.runtime.directory import RecordEntry

# Publishes in flight at once: each waits for its stream ack, so a campaign of hundreds goes out
# in a few round trips rather than one after the other.
_IN_FLIGHT: Final = 32
_view_dec: Final = msgspec.json.Decoder(CampaignView)
_enc: Final = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class Campaign:
    """The answer to a bulk compose, and whether an earlier request already made it."""

    view: CampaignView
    replayed: bool = False

    @property
    def campaign_id(self) -> str:
        return self.view.campaign_id


async def compose_campaign(
    ports: Ports,
    org_id: str,
    cmd: ComposeEmail,
    *,
    idempotency_key: str | None = None,
    fingerprint: str = "",
) -> Campaign:
    """Publish one EmailComposed per distinct recipient; answer each target's email id."""
    held: IdempotencyClaim | None = None
    if idempotency_key is not None:
        held = await ports.idempotency.get(org_id, idempotency_key)
        if held is not None:
            _check_payload(held, fingerprint)
            if held.done and held.answer:
                return Campaign(_view_dec.decode(held.answer), replayed=True)

    template = await _template(ports, org_id, cmd)
    entries = await named_records(ports, org_id, cmd.record_ids or ())
    await _check_mailbox(ports, org_id, cmd)
    _check_size(cmd, template)

    campaign_id = held.email_id if held is not None else new_id()
    if idempotency_key is not None and held is None:
        mine = IdempotencyClaim(email_id=campaign_id, fingerprint=fingerprint)
        held = await ports.idempotency.claim(org_id, idempotency_key, mine)
        if held != mine:
            _check_payload(held, fingerprint)
            if held.done and held.answer:
                return Campaign(_view_dec.decode(held.answer), replayed=True)
            campaign_id = held.email_id

    html, text, own = await asyncio.gather(
        _body(ports, cmd.html, HTML),
        _body(ports, cmd.text, TEXT),
        _store_attachments(ports, cmd.attachments, from_template=False),
    )
    base = EmailComposed(
        event_id=composed_event_id(campaign_id),
        org_id=org_id,
        email_id=campaign_id,
        occurred_at=ports.clock(),
        producer=PRODUCER,
        source=cmd.source,
        transport=cmd.transport,
        from_addr=cmd.from_addr,
        subject=cmd.subject if cmd.subject is not None else (template.subject if template else ""),
        html=html if html is not None else (template.html if template else None),
        text=text if text is not None else (template.text if template else None),
        attachments=(*own, *(template.attachments if template else ())),
        template_id=cmd.template_id,
        mailbox_user=cmd.mailbox_user,
        campaign_id=campaign_id,
    )
    gate = asyncio.Semaphore(_IN_FLIGHT)

    async def one(wanted: Wanted) -> TargetView:
        async with gate:
            return await _send_one(ports, base, cmd, template, entries, wanted)

    views = await asyncio.gather(*(one(w) for w in wanted_targets(entries, cmd.to)))
    view = CampaignView(campaign_id=campaign_id, emails=tuple(views))
    if idempotency_key is not None:
        done = IdempotencyClaim(
            email_id=campaign_id,
            fingerprint=fingerprint,
            done=True,
            answer=_enc.encode(view).decode(),
        )
        await ports.idempotency.complete(org_id, idempotency_key, done)
    return Campaign(view)


async def _send_one(
    ports: Ports,
    base: EmailComposed,
    cmd: ComposeEmail,
    template: Template | None,
    entries: list[RecordEntry],
    wanted: Wanted,
) -> TargetView:
    """Publish the campaign's email to one target (charging its records' quota first)."""
    if wanted.address is None:
        return TargetView(
            email_id=None,
            recipient=None,
            record_ids=(wanted.record_id,) if wanted.record_id else (),
            status=REFUSED,
            reason=Refusal.NO_ADDRESS.value,
            detail=f"record {wanted.record_id!r} has no email address",
        )
    org_id = base.org_id
    assert base.campaign_id is not None
    email_id = campaign_email_id(base.campaign_id, wanted.address)
    found = await ports.directory.records_for_addresses(org_id, [wanted.address])
    records = records_of(wanted, found, entries)
    charge = quota.compose_charge(
        email_id, cmd.attachments_size, template.attachments if template else ()
    )
    over = await quota.reserve(ports.usage, org_id, charge, records)
    event = msgspec.structs.replace(
        base,
        event_id=composed_event_id(email_id),
        email_id=email_id,
        to=(wanted.address,),
        records=records,
        over_quota_record=None if over is None else over.record_id,
    )
    try:
        await ports.publisher.publish(event)
    except Exception:
        if over is None:
            await quota.release(ports.usage, org_id, charge, records)
        raise
    record_ids = tuple(r.record_id for r in records)
    if over is not None:
        return TargetView(
            email_id=email_id,
            recipient=wanted.address,
            record_ids=record_ids,
            status=REFUSED,
            reason=Refusal.RECORD_ATTACHMENT_QUOTA.value,
            detail=quota.over_quota_detail(over),
        )
    return TargetView(email_id=email_id, recipient=wanted.address, record_ids=record_ids)
