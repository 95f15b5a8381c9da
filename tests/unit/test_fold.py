"""The fold is a merge: any order, any repeats, same state; the policy decides what applies."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from mailfold.events import (
    SOURCES,
    AnyEvent,
    BounceKind,
    Channel,
    Decision,
    EmailBounced,
    EmailCaptured,
    EmailClicked,
    EmailComplained,
    EmailComposed,
    EmailDeferred,
    EmailDeleted,
    EmailDelivered,
    EmailOpened,
    EmailReceived,
    EmailRejected,
    EmailSent,
    Source,
    Status,
    Transport,
    Verdict,
    ViolationReason,
    apply,
    decisions,
    fold,
)
from mailfold.events.fold import decode_state, empty, encode_state

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
EMAIL = "0190f000-0000-7000-8000-000000000001"
ORG = "acme"


def _env(n: int, minutes: float = 0, org: str = ORG) -> dict[str, Any]:
    return {
        "event_id": f"ev-{n:04d}",
        "org_id": org,
        "email_id": EMAIL,
        "occurred_at": T0 + timedelta(minutes=minutes),
        "producer": "test",
    }


def composed(
    n: int = 0,
    source: Source = Source.INDIVIDUAL,
    transport: Transport = Transport.CRM_SERVERS,
    to: tuple[str, ...] = ("ann@example.org",),
) -> EmailComposed:
    return EmailComposed(
        **_env(n), source=source, transport=transport, from_addr="rep@crm.example", to=to
    )


def sent(n: int, minutes: float = 1) -> EmailSent:
    return EmailSent(**_env(n, minutes), recipients=("ann@example.org",))


def delivered(n: int, minutes: float = 2) -> EmailDelivered:
    return EmailDelivered(**_env(n, minutes), recipient="ann@example.org", reply_code=250)


def bounced(n: int, minutes: float = 3) -> EmailBounced:
    return EmailBounced(
        **_env(n, minutes),
        recipient="ann@example.org",
        kind=BounceKind.HARD,
        status="5.1.1",
        reply_code=550,
        reason="userunknown",
    )


def opened(n: int, minutes: float = 4, verdict: Verdict = Verdict.HUMAN) -> EmailOpened:
    return EmailOpened(**_env(n, minutes), recipient="ann@example.org", verdict=verdict)


def clicked(n: int, minutes: float = 5, verdict: Verdict = Verdict.HUMAN) -> EmailClicked:
    return EmailClicked(
        **_env(n, minutes), recipient="ann@example.org", url="https://example.org/", verdict=verdict
    )


def test_late_bounce_overrides_delivered() -> None:
    state = fold([composed(0), sent(1), delivered(2, 2), bounced(3, 60)], EMAIL)
    assert state.status is Status.BOUNCED
    assert state.delivered_at == T0 + timedelta(minutes=2)
    assert state.bounce is not None
    assert state.bounce.reason == "userunknown"


def test_open_before_delivery_report_still_shows_opened_and_keeps_both_times() -> None:
    state = fold([composed(0), opened(3, 4), sent(1, 1), delivered(2, 9)], EMAIL)
    assert state.status is Status.OPENED
    assert state.opened_at == T0 + timedelta(minutes=4)
    assert state.delivered_at == T0 + timedelta(minutes=9)


def test_a_click_implies_an_open() -> None:
    state = fold([composed(0), sent(1), clicked(2, 5)], EMAIL)
    assert state.status is Status.CLICKED
    assert state.opened_at == state.clicked_at == T0 + timedelta(minutes=5)
    assert state.clicks_human == 1


def test_milestones_keep_their_first_time_and_counts_count_distinct_events() -> None:
    state = fold([composed(0), sent(1), opened(3, 30), opened(2, 10), opened(3, 30)], EMAIL)
    assert state.opened_at == T0 + timedelta(minutes=10)
    assert state.opens_human == 2


def test_machine_opens_are_counted_apart_and_do_not_make_it_opened() -> None:
    state = fold([composed(0), sent(1), opened(2, verdict=Verdict.MACHINE)], EMAIL)
    assert state.status is Status.SENT
    assert (state.opens_human, state.opens_machine) == (0, 1)
    assert state.first_machine_open_at is not None
    assert state.opened_at is None


def test_events_before_their_origin_wait_then_apply() -> None:
    state = fold([sent(1), delivered(2)], EMAIL)
    assert state.origin is None
    assert state.status is None
    assert state.waiting == 2
    assert {r.decision for r in decisions(state).values()} == {Decision.WAITING}
    state = apply(state, composed(0))
    assert state.status is Status.DELIVERED
    assert {r.decision for r in decisions(state).values()} == {Decision.APPLIED}


def test_an_open_for_bcc_dropbox_mail_is_a_violation_and_the_status_stays_sent() -> None:
    origin = EmailCaptured(
        **_env(0), source=Source.BCC_DROPBOX, from_addr="rep@crm.example", to=("ann@example.org",)
    )
    state = fold([opened(2), origin, sent(1)], EMAIL)
    assert state.status is Status.SENT
    assert [(v.event_id, v.reason) for v in state.violations] == [
        ("ev-0002", ViolationReason.UNREACHABLE_STATUS)
    ]
    assert "BCC Dropbox" in state.violations[0].detail
    assert decisions(state)["ev-0002"].decision is Decision.VIOLATION


def test_multi_recipient_mail_never_reaches_opened() -> None:
    state = fold([composed(0, to=("a@x.org", "b@x.org")), sent(1), opened(2)], EMAIL)
    assert state.status is Status.SENT
    assert state.opens_human == 0
    assert len(state.violations) == 1


def test_integrated_mailbox_mail_cannot_be_delivered_deferred_or_complained_about() -> None:
    state = fold(
        [
            composed(0, transport=Transport.INTEGRATED_MAILBOX),
            sent(1),
            delivered(2),
            EmailDeferred(**_env(3), recipient="ann@example.org"),
            EmailComplained(**_env(4), recipient="ann@example.org"),
        ],
        EMAIL,
    )
    assert state.status is Status.SENT
    assert [v.reason for v in state.violations] == [
        ViolationReason.UNREACHABLE_STATUS,
        ViolationReason.NOT_DELIVERED_BY_CRM,
        ViolationReason.NOT_DELIVERED_BY_CRM,
    ]


def test_received_mail_cannot_be_rejected() -> None:
    origin = EmailReceived(**_env(0), source=Source.IMAP, from_addr="ann@example.org")
    state = fold([origin, EmailRejected(**_env(1), reason="daily_limit_reached")], EMAIL)
    assert state.status is Status.RECEIVED
    assert [v.reason for v in state.violations] == [ViolationReason.NOT_REJECTABLE]


def test_an_event_from_another_org_is_a_violation() -> None:
    other = EmailOpened(**_env(2, org="evil"), recipient="ann@example.org")
    state = fold([composed(0), sent(1), other], EMAIL)
    assert state.status is Status.SENT
    assert [v.reason for v in state.violations] == [ViolationReason.ORG_MISMATCH]


def test_a_second_origin_is_a_violation_whichever_arrives_first() -> None:
    first, second = composed(0), composed(9, source=Source.BCC_DROPBOX)
    a = fold([second, opened(2), first], EMAIL)
    b = fold([first, opened(2), second], EMAIL)
    assert a == b
    assert a.origin == first
    assert [v.reason for v in a.violations] == [ViolationReason.DUPLICATE_ORIGIN]


def test_deletion_keeps_the_status_and_marks_the_time() -> None:
    state = fold([composed(0), sent(1), EmailDeleted(**_env(5, 50))], EMAIL)
    assert state.status is Status.SENT
    assert state.deleted_at == T0 + timedelta(minutes=50)


def test_state_round_trips_through_its_storage_encoding() -> None:
    state = fold([composed(0), sent(1), delivered(2), opened(3), bounced(4)], EMAIL)
    assert decode_state(encode_state(state)) == state


# --- properties over generated histories ----------------------------------------------------------

ADDRS = ("ann@example.org", "bob@example.org", "cy@example.net")


@st.composite
def origins(draw: st.DrawFn, n: int) -> AnyEvent:
    source = draw(st.sampled_from(list(Source)))
    transport = draw(st.sampled_from(list(Transport)))
    to = tuple(draw(st.lists(st.sampled_from(ADDRS), min_size=1, max_size=3, unique=True)))
    kind = draw(st.sampled_from(["composed", "captured", "received"]))
    env = _env(n, draw(st.integers(0, 5)))
    if kind == "composed":
        return EmailComposed(
            **env, source=source, transport=transport, from_addr="rep@crm.example", to=to
        )
    if kind == "captured":
        return EmailCaptured(
            **env, source=source, transport=transport, from_addr="rep@crm.example", to=to
        )
    return EmailReceived(**env, source=source, from_addr="ann@example.org", to=to)


@st.composite
def facts(draw: st.DrawFn, n: int) -> AnyEvent:
    minutes = draw(st.integers(0, 600))
    org = draw(st.sampled_from([ORG] * 9 + ["other"]))
    env = _env(n, minutes, org)
    verdict = draw(st.sampled_from(list(Verdict)))
    rcpt = draw(st.sampled_from(ADDRS))
    kind = draw(st.integers(0, 8))
    events: list[AnyEvent] = [
        EmailSent(**env, recipients=(rcpt,)),
        EmailDelivered(**env, recipient=rcpt),
        EmailBounced(
            **env,
            recipient=rcpt,
            kind=draw(st.sampled_from(list(BounceKind))),
            reason="userunknown",
        ),
        EmailOpened(**env, recipient=rcpt, verdict=verdict),
        EmailClicked(**env, recipient=rcpt, url="https://x.example/", verdict=verdict),
        EmailRejected(**env, reason="daily_limit_reached"),
        EmailDeferred(**env, recipient=rcpt, reply_code=451),
        EmailComplained(**env, recipient=rcpt),
        EmailDeleted(**env),
    ]
    return events[kind]


@st.composite
def histories(draw: st.DrawFn) -> list[AnyEvent]:
    """Histories with duplicates, late events, orphans (no origin) and competing origins."""
    count = draw(st.integers(0, 14))
    events = [draw(facts(i + 10)) for i in range(count)]
    n_origins = draw(st.sampled_from([0, 1, 1, 1, 1, 2]))
    events += [draw(origins(i)) for i in range(n_origins)]
    dupes = draw(st.lists(st.sampled_from(events), max_size=4)) if events else []
    return events + dupes


def _design_reachable(origin: AnyEvent) -> set[Status]:
    """DESIGN.md's table, restated independently of the library's table."""
    assert isinstance(origin, EmailComposed | EmailCaptured | EmailReceived)
    channel = SOURCES[origin.source].channel
    if channel is Channel.CRM:
        if origin.transport is Transport.INTEGRATED_MAILBOX:
            return {Status.SENT, Status.BOUNCED}
        if len(origin.recipients) > 1:
            return {Status.SENT, Status.DELIVERED, Status.BOUNCED}
        return {Status.SENT, Status.DELIVERED, Status.BOUNCED, Status.OPENED, Status.CLICKED}
    return {
        Channel.MAILBOX: {Status.SENT, Status.BOUNCED, Status.RECEIVED},
        Channel.DROPBOX: {Status.SENT},
        Channel.ASSOCIATED: {Status.SENT, Status.RECEIVED},
    }[channel]


def _forbidden(origin: AnyEvent, event: AnyEvent) -> bool:
    assert isinstance(origin, EmailComposed | EmailCaptured | EmailReceived)
    ok = _design_reachable(origin)
    if event.org_id != origin.org_id:
        return True
    match event:
        case EmailRejected():
            return SOURCES[origin.source].channel is not Channel.CRM
        case EmailDeferred() | EmailComplained():
            return Status.DELIVERED not in ok
        case EmailSent():
            return Status.SENT not in ok
        case EmailDelivered():
            return Status.DELIVERED not in ok
        case EmailBounced():
            return Status.BOUNCED not in ok
        case EmailOpened():
            return Status.OPENED not in ok
        case EmailClicked():
            return Status.CLICKED not in ok
        case EmailReceived():
            return Status.RECEIVED not in ok
    return False


@settings(max_examples=300, deadline=None)
@given(history=histories(), data=st.data())
def test_every_permutation_folds_to_the_same_state(
    history: list[AnyEvent], data: st.DataObject
) -> None:
    shuffled = data.draw(st.permutations(history))
    assert fold(shuffled, EMAIL) == fold(history, EMAIL)


@settings(max_examples=300, deadline=None)
@given(history=histories())
def test_a_repeated_event_changes_nothing(history: list[AnyEvent]) -> None:
    state = fold(history, EMAIL)
    for event in history:
        assert apply(state, event) == state
    assert fold(history + history, EMAIL) == state


@settings(max_examples=300, deadline=None)
@given(history=histories())
def test_the_status_is_always_reachable_for_the_source(history: list[AnyEvent]) -> None:
    state = fold(history, EMAIL)
    if state.origin is None:
        assert state.status is None
        return
    allowed = _design_reachable(state.origin)
    if SOURCES[state.origin.source].channel is Channel.CRM:
        allowed.add(Status.REJECTED)
    assert state.status is None or state.status in allowed


@settings(max_examples=300, deadline=None)
@given(history=histories())
def test_violations_are_exactly_the_forbidden_events(history: list[AnyEvent]) -> None:
    state = fold(history, EMAIL)
    distinct = {e.event_id: e for e in history}
    origins_ = sorted(
        (
            e
            for e in distinct.values()
            if isinstance(e, EmailComposed | EmailCaptured | EmailReceived)
        ),
        key=lambda e: e.event_id,
    )
    if not origins_:
        assert state.violations == ()
        assert state.waiting == len(distinct)
        return
    winner = origins_[0]
    expected = {e.event_id for e in origins_[1:]}
    expected |= {e.event_id for e in distinct.values() if _forbidden(winner, e)}
    assert {v.event_id for v in state.violations} == expected
    ruled = decisions(state)
    assert {k for k, r in ruled.items() if r.decision is Decision.VIOLATION} == expected
    assert set(ruled) == set(distinct)


def test_an_empty_state_has_no_status() -> None:
    assert empty(EMAIL).status is None
