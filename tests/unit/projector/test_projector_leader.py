"""The leadership loop: a failed term is followed by a fresh one from the committed position."""

from __future__ import annotations

from mailfold.projector.service_layer.leader import Leadership
from mailfold.projector.service_layer.ports import DuplicateEventIds


async def test_terms_restart_after_failures_and_look_ids_up_after_a_duplicate() -> None:
    calls: list[int] = []
    leadership: Leadership

    async def term(look_up_until: int) -> None:
        calls.append(look_up_until)
        if len(calls) == 1:
            raise RuntimeError("the database went away")
        if len(calls) == 2:
            duplicate = DuplicateEventIds("event e-1 is stored under another email")
            duplicate.until_seq = 42
            raise duplicate
        leadership.stopping.set()

    leadership = Leadership(term, first_backoff=0.01)
    await leadership.run()
    assert calls == [0, 0, 42]
    assert leadership.look_up_until == 42


async def test_a_stopped_leadership_starts_no_term() -> None:
    calls: list[int] = []

    async def term(look_up_until: int) -> None:
        calls.append(look_up_until)

    leadership = Leadership(term)
    leadership.stopping.set()
    await leadership.run()
    assert calls == []
