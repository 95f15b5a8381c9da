"""A bulk send (mass email and the like): its targets, one email each, with ids derived from it.

A compose for a bulk source names records (each sent to its first address) and addresses. Each
distinct address (compared case-insensitively, first mention wins) becomes one email of the
campaign, with an id derived from the campaign id and the address, so the same campaign always
yields the same email ids.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import msgspec

from mailfold.events import RecordRef
from mailfold.events.ids import derived_id, id_time_ms
from mailfold.runtime.directory import RecordEntry


class Refusal(enum.StrEnum):
    """Why a target of a bulk send gets no email (or an email refused before sending)."""

    NO_ADDRESS = "no_address"
    RECORD_ATTACHMENT_QUOTA = "record_attachment_quota"


@dataclass(frozen=True, slots=True)
class Wanted:
    """One target as the request named it: an address, and the record that named it if any."""

    address: str | None
    record_id: str | None = None


class TargetView(msgspec.Struct, frozen=True, kw_only=True):
    """One target in the answer: its email, its recipient, the records it is attached to."""

    email_id: str | None
    recipient: str | None
    record_ids: tuple[str, ...] = ()
    status: str = "accepted"
    reason: str | None = None
    detail: str | None = None


class CampaignView(msgspec.Struct, frozen=True, kw_only=True):
    """The answer to a bulk compose."""

    campaign_id: str
    emails: tuple[TargetView, ...]


ACCEPTED: Final = "accepted"
REFUSED: Final = "refused"


def campaign_email_id(campaign_id: str, address: str) -> str:
    """The id of the campaign's email to `address`: the same for the same campaign and address."""
    return derived_id(
        "campaign_email", campaign_id, address.strip().lower(), unix_ms=id_time_ms(campaign_id)
    )


def wanted_targets(entries: Sequence[RecordEntry], to: Sequence[str]) -> list[Wanted]:
    """Each record's first address, then each `to` address, once per address (case-insensitive).

    A record without an address is kept as a target without one, to be answered as refused.
    """
    seen: set[str] = set()
    out: list[Wanted] = []
    for entry in entries:
        if not entry.addresses:
            out.append(Wanted(None, entry.record_id))
            continue
        address = entry.addresses[0]
        if address.lower() not in seen:
            seen.add(address.lower())
            out.append(Wanted(address, entry.record_id))
    for address in to:
        if address.lower() not in seen:
            seen.add(address.lower())
            out.append(Wanted(address))
    return out


def records_of(
    wanted: Wanted, found: Sequence[RecordRef], entries: Sequence[RecordEntry]
) -> tuple[RecordRef, ...]:
    """Every record that has the target's address, the record that named it included."""
    refs = {(r.module.value, r.record_id): r for r in found}
    for entry in entries:
        if entry.record_id == wanted.record_id:
            refs.setdefault((entry.module.value, entry.record_id), entry.ref)
    return tuple(refs[k] for k in sorted(refs))
