"""Comparing a rebuilt projection with the live one, row by row (pure)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Difference:
    """One cell (or a whole row, column "*") where the live and rebuilt projections disagree."""

    table: str
    key: str
    column: str
    live: Any
    rebuilt: Any

    def describe(self) -> str:
        """One line for a person."""
        return f"{self.table} {self.key} {self.column}: live={self.live!r} rebuilt={self.rebuilt!r}"


MISSING = "<missing>"


def diff_row(
    table: str,
    key: str,
    live: Mapping[str, Any] | None,
    rebuilt: Mapping[str, Any] | None,
    columns: Sequence[str],
) -> list[Difference]:
    """Every column of `columns` that differs; a row present on one side only is one difference."""
    if live is None and rebuilt is None:
        return []
    if live is None:
        return [Difference(table, key, "*", MISSING, "present")]
    if rebuilt is None:
        return [Difference(table, key, "*", "present", MISSING)]
    return [
        Difference(table, key, column, live[column], rebuilt[column])
        for column in columns
        if live[column] != rebuilt[column]
    ]
