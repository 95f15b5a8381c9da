"""The dev supervisor's restart backoff: doubling per quick death, starting over once stable."""

from __future__ import annotations

from mailfold.cli.dev import Restarts


def test_quick_deaths_double_the_delay_up_to_the_cap_and_a_stable_run_resets_it() -> None:
    restarts = Restarts(first_delay=1, max_delay=8, stable_after=60, started={"ingest": 0.0})
    delays = []
    now = 0.0
    for _ in range(6):
        now += 2  # dies two seconds after each start
        delays.append(restarts.died("ingest", now))
        restarts.started["ingest"] = now
    assert delays == [1, 2, 4, 8, 8, 8]
    assert restarts.died("ingest", now + 120) == 1  # it ran for two minutes first
    assert restarts.due["ingest"] == now + 121
