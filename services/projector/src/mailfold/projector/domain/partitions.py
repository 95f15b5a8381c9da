"""Partitions: which projector partition folds an event, and how many partitions a process takes.

An event belongs to the partition of its email: a stable hash of `email_id` (CRC-32, the same in
every process and Python run, unlike the salted `hash()`) modulo the number of partitions. A
message whose email id cannot be read (poison for the dead-letter stream) belongs to partition 0,
so that exactly one partition files it.

The share arithmetic is pure: every process sees which processes are alive and which partitions
each holds, and decides alone what to give back and what to take. Shares are `N // live` or one
more; nobody takes beyond `ceil(N / live)`, and while some process holds fewer than `N // live` a
process holding more gives one back, so every process ends with its share.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import msgspec


class _EmailKey(msgspec.Struct):
    """Only what partitioning needs of an event: its email id (the rest is not decoded)."""

    email_id: str


_KEY_DECODER: Final = msgspec.json.Decoder(_EmailKey)


def partition_of(email_id: str, count: int) -> int:
    """The partition (0..count-1) that folds every event of this email."""
    return zlib.crc32(email_id.encode()) % count if count > 1 else 0


def message_partition(data: bytes, count: int) -> int:
    """The partition of a message from the stream: its email's, or 0 when it has none."""
    if count <= 1:
        return 0
    try:
        email_id = _KEY_DECODER.decode(data).email_id
    except (msgspec.DecodeError, msgspec.ValidationError):
        return 0
    return partition_of(email_id, count)


@dataclass(frozen=True, slots=True)
class Partition:
    """Partition `index` of `count`, and the durable consumer (and position row) it uses.

    With one partition the name is the base name itself, so an existing deployment keeps its
    durable consumer and its committed position.
    """

    base: str
    index: int
    count: int

    @property
    def consumer(self) -> str:
        """The durable consumer's name, also the key of its position row."""
        if self.count == 1:
            return self.base
        return f"{self.base}-p{self.index}-of-{self.count}"

    def owns(self, data: bytes) -> bool:
        """Whether this partition folds the message."""
        return self.count == 1 or message_partition(data, self.count) == self.index


def layout(base: str, count: int) -> list[Partition]:
    """All partitions of a layout of `count`."""
    if count < 1:
        raise ValueError("the number of partitions must be at least 1")
    return [Partition(base, i, count) for i in range(count)]


def parse_consumer(base: str, name: str) -> Partition | None:
    """The partition a position row's consumer name stands for, or None if it is not one."""
    if name == base:
        return Partition(base, 0, 1)
    match = re.fullmatch(re.escape(base) + r"-p(\d+)-of-(\d+)", name)
    if match is None:
        return None
    index, count = int(match[1]), int(match[2])
    if count < 2 or index >= count:
        return None
    return Partition(base, index, count)


def other_layouts(base: str, count: int, consumers: Iterable[str]) -> list[str]:
    """Position rows of `base` that belong to a layout other than `count` partitions: the
    projection was folded under another N, and must be repartitioned before this one runs."""
    found = []
    for name in consumers:
        partition = parse_consumer(base, name)
        if partition is not None and partition.count != count:
            found.append(name)
    return sorted(found)


def fair_share(count: int, live: int) -> tuple[int, int]:
    """(floor, ceiling) of the partitions one of `live` processes should hold."""
    live = max(live, 1)
    floor = count // live
    return floor, floor + (1 if count % live else 0)


@dataclass(frozen=True, slots=True)
class Plan:
    """What one process does this round: give back these partitions, try to take those."""

    release: tuple[int, ...] = ()
    acquire: tuple[int, ...] = ()


def plan(
    count: int,
    me: int,
    members: Sequence[int],
    holders: Mapping[int, int],
    mine: Sequence[int],
) -> Plan:
    """One process's move, from what every process can see.

    `me` and `members` identify the live processes (their lease sessions), `holders` maps each
    held partition to the process holding it, `mine` the partitions this process runs (its
    releases wait for the batch in hand, so they may still show in `holders`).
    """
    alive = sorted(set(members) | {me})
    floor, ceiling = fair_share(count, len(alive))
    held = len(mine)
    if held > ceiling:
        return Plan(release=tuple(sorted(mine)[ceiling - held :]))
    counts = dict.fromkeys(alive, 0)
    for holder in holders.values():
        if holder in counts:
            counts[holder] += 1
    counts[me] = held
    starving = any(n < floor for n in counts.values())
    if starving and held == ceiling > floor:
        # Someone is below its share: of the processes at the ceiling, the last in order gives
        # one back (one decision for all who see the same picture, so no stampede).
        at_ceiling = [p for p, n in counts.items() if n == ceiling]
        if at_ceiling and at_ceiling[-1] == me:
            return Plan(release=(max(mine),))
        return Plan()
    # While anyone is below the floor, nobody takes more than the floor.
    target = floor if starving else ceiling
    if held >= target:
        return Plan()
    free = [i for i in range(count) if i not in holders and i not in mine]
    return Plan(acquire=tuple(free[: target - held]))


@dataclass(frozen=True, slots=True)
class Bounds:
    """How far each partition of a layout has committed: what a rebuild must fold to equal it.

    Partitions commit independently, so the live projection holds each email folded up to its
    own partition's position; a rebuild that keeps exactly those messages equals it.
    """

    count: int
    limits: tuple[int, ...]

    @property
    def last(self) -> int:
        """The highest position: where a rebuild can stop reading."""
        return max(self.limits, default=0)

    def keep(self, seq: int, data: bytes) -> bool:
        """Whether the live projection has folded this message already."""
        return seq <= self.limits[message_partition(data, self.count)]


class MixedLayouts(ValueError):
    """Position rows of more than one layout: the projection is half repartitioned."""


def committed_bounds(base: str, positions: Mapping[str, int]) -> Bounds:
    """The bounds of the layout the position rows of `base` describe (one partition at 0 when
    there are none yet)."""
    parts = {p: seq for name, seq in positions.items() if (p := parse_consumer(base, name))}
    counts = {p.count for p in parts}
    if len(counts) > 1:
        names = ", ".join(sorted(p.consumer for p in parts))
        raise MixedLayouts(f"position rows of several partition layouts: {names}")
    count = counts.pop() if counts else 1
    limits = [0] * count
    for partition, seq in parts.items():
        limits[partition.index] = seq
    return Bounds(count, tuple(limits))
