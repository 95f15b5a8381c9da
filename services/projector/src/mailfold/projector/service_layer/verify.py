"""Verify: a rebuilt projection compared with the live one, row by row, table by table."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Final

from mailfold.events.fold import EmailState, decode_state
from mailfold.projector.domain.rows import EMAIL_COLUMNS
from mailfold.projector.domain.verify import Difference, diff_row

# Columns that legitimately differ between a live projection and a rebuild: the stream position
# that last touched a row (batch boundaries differ), and the encoded state, whose bytes depend on
# set iteration order (it is compared decoded instead).
IGNORED_EMAIL_COLUMNS: Final = frozenset({"updated_seq", "state"})
EMAIL_COMPARED: Final = tuple(c for c in EMAIL_COLUMNS if c not in IGNORED_EMAIL_COLUMNS)
RECORD_COMPARED: Final = ("org_id",)
EVENT_COMPARED: Final = ("email_id", "org_id", "type", "decision", "reason", "detail")


class TableSpec:
    """What to compare in one table."""

    def __init__(self, name: str, key: Sequence[str], columns: Sequence[str]) -> None:
        self.name = name
        self.key = tuple(key)
        self.columns = tuple(columns)


TABLES: Final = (
    TableSpec("emails", ("email_id",), (*EMAIL_COMPARED, "state")),
    TableSpec("email_records", ("email_id", "module", "record_id"), RECORD_COMPARED),
    TableSpec("events", ("event_id",), EVENT_COMPARED),
)

RowSource = Callable[[TableSpec], AsyncIterator[Any]]


def _state_difference(key: str, live: bytes, rebuilt: bytes) -> Difference | None:
    a: EmailState = decode_state(live)
    b: EmailState = decode_state(rebuilt)
    if a == b:
        return None
    fields = [f for f in EmailState.__struct_fields__ if getattr(a, f) != getattr(b, f)]
    return Difference("emails", key, "state", f"differs in {', '.join(fields)}", "(rebuilt fold)")


async def _merged(
    live: AsyncIterator[Any], rebuilt: AsyncIterator[Any], key: Sequence[str]
) -> AsyncIterator[tuple[tuple[str, ...], Any, Any]]:
    """Both sides in key order, paired; None where a side lacks the key."""

    async def next_or_none(rows: AsyncIterator[Any]) -> Any:
        return await anext(rows, None)

    a, b = await next_or_none(live), await next_or_none(rebuilt)
    while a is not None or b is not None:
        ka = None if a is None else tuple(a[c] for c in key)
        kb = None if b is None else tuple(b[c] for c in key)
        if kb is None or (ka is not None and ka < kb):
            yield ka, a, None  # type: ignore[misc]
            a = await next_or_none(live)
        elif ka is None or kb < ka:
            yield kb, None, b
            b = await next_or_none(rebuilt)
        else:
            yield ka, a, b
            a, b = await next_or_none(live), await next_or_none(rebuilt)


async def compare(live: RowSource, rebuilt: RowSource) -> list[Difference]:
    """Every difference between the two projections, table by table, in key order."""
    found: list[Difference] = []
    for spec in TABLES:
        plain = tuple(c for c in spec.columns if c != "state")
        async for key, a, b in _merged(live(spec), rebuilt(spec), spec.key):
            label = "/".join(key)
            found.extend(diff_row(spec.name, label, a, b, plain))
            if "state" in spec.columns and a is not None and b is not None:
                difference = _state_difference(label, a["state"], b["state"])
                if difference is not None:
                    found.append(difference)
    return found
