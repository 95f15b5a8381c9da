"""Folding one batch of accepted events into the touched emails' states, and the rows that changed.

The fold itself is `mailfold.events.fold` (order-independent, idempotent). This module adds what
storage needs: the decision of every new event, the decisions of stored events that changed (an
event that waited for its origin becomes applied or a violation when the origin arrives), and
which emails need their record links rewritten (their origin changed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from mailfold.events import Decision, EmailState, Origin, Ruling, apply, decide, decisions
from mailfold.events.fold import empty
from mailfold.projector.domain.messages import ValidEvent
from mailfold.projector.domain.rows import (
    APPLIED,
    WAITING,
    DecisionRow,
    EventRow,
    decision_row,
    event_row,
)


@dataclass(slots=True)
class FoldedBatch:
    """What one batch changed."""

    states: dict[str, EmailState] = field(default_factory=dict)  # touched emails, new states
    event_rows: list[EventRow] = field(default_factory=list)  # new events, with their decision
    decision_rows: list[DecisionRow] = field(default_factory=list)  # stored events re-decided
    linked: set[str] = field(default_factory=set)  # emails whose origin changed: new links
    unlinked: set[str] = field(default_factory=set)  # of those, emails that had links before
    rulings: list[tuple[str, Ruling]] = field(default_factory=list)  # (event type, ruling)
    duplicates: int = 0


def _origin_id(state: EmailState | None) -> str | None:
    if state is None or state.origin is None:
        return None
    return state.origin.event_id


def _ruling_after(prior: EmailState, state: EmailState, event_id: str) -> Ruling:
    """The decision on a fact just folded onto an email whose origin did not change."""
    if state.origin is None:
        return WAITING
    if len(state.violations) > len(prior.violations):
        for violation in state.violations:
            if violation.event_id == event_id:
                return Ruling(
                    decision=Decision.VIOLATION, reason=violation.reason, detail=violation.detail
                )
    return APPLIED


def group_by_email(
    accepted: Sequence[ValidEvent], known: frozenset[str] = frozenset()
) -> tuple[dict[str, list[ValidEvent]], int]:
    """The batch's events per email, in stream order, with how many were repeats of an id
    seen earlier in the batch or in `known` (already stored, possibly under another email)."""
    by_email: dict[str, list[ValidEvent]] = {}
    seen: set[str] = set(known)
    duplicates = 0
    for item in accepted:
        event_id = item.event.event_id
        if event_id in seen:
            duplicates += 1
            continue
        seen.add(event_id)
        by_email.setdefault(item.event.email_id, []).append(item)
    return by_email, duplicates


def fold_email(
    out: FoldedBatch, email_id: str, old: EmailState | None, items: Sequence[ValidEvent]
) -> None:
    """Fold one email's events of the batch onto its stored state `old`; record what changed."""
    state = empty(email_id) if old is None else old
    # Each new event with its ruling against the origin it was folded under.
    fresh: list[tuple[ValidEvent, Origin | None, Ruling]] = []
    for item in items:
        event = item.event
        if event.event_id in state.seen:
            out.duplicates += 1
            continue
        prior = state
        state = apply(state, event)
        fresh.append((item, state.origin, _ruling_after(prior, state, event.event_id)))
    if not fresh:
        return
    out.states[email_id] = state
    origin = state.origin
    losers: dict[str, Ruling] | None = None
    for item, origin_then, tentative in fresh:
        event = item.event
        if origin is None:
            ruling = WAITING
        elif event.is_origin:
            if event.event_id == origin.event_id:
                ruling = decide(origin, event)
            else:  # a competing origin that lost: the fold says why
                losers = losers if losers is not None else decisions(state)
                ruling = losers[event.event_id]
        elif origin_then is origin:
            ruling = tentative
        else:  # folded before the origin arrived (or under one that lost since)
            ruling = decide(origin, event)
        row = event_row(item, ruling)
        out.event_rows.append(row)
        out.rulings.append((row[3], ruling))
    if _origin_id(old) == _origin_id(state):
        return
    assert origin is not None
    out.linked.add(email_id)
    if old is None:
        return
    if old.origin is None:
        # Facts stored while waiting for the origin are decided now.
        for fact in old.facts:
            out.decision_rows.append(decision_row(fact.event_id, decide(origin, fact)))
        return
    # The origin was replaced (an earlier one arrived late): re-decide what changed.
    out.unlinked.add(email_id)
    now = decisions(state)
    for event_id, ruling in decisions(old).items():
        if now[event_id] != ruling:
            out.decision_rows.append(decision_row(event_id, now[event_id]))


def fold_batch(
    before: Mapping[str, EmailState],
    accepted: Sequence[ValidEvent],
    *,
    known: frozenset[str] = frozenset(),
) -> FoldedBatch:
    """Fold `accepted` (in stream order) onto `before` (the stored states of touched emails).

    An event whose id is in `known`, seen earlier in the batch or in its email's state is a
    duplicate: it changes nothing.
    """
    by_email, duplicates = group_by_email(accepted, known)
    out = FoldedBatch(duplicates=duplicates)
    for email_id, items in by_email.items():
        fold_email(out, email_id, before.get(email_id), items)
    return out
