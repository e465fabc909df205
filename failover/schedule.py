"""A seeded fault schedule for the chaos harness: the same seed gives the same faults.

The schedule is a pure function of ``(seed, ScheduleSpec)``: a list of :class:`Fault` values with
their time offset, kind and target. Targets are abstract ``pick`` numbers that the harness maps
onto whatever exists at that moment (``pick % len(candidates)`` over a sorted list), so the
schedule itself never depends on the run; with the same cluster behaviour, a failing run replays
exactly from its seed (TigerBeetle's VOPR does the same with its fault injector).

The generator keeps the schedule executable: it tracks how many simulated nodes exist so that a
REMOVE_NODE never removes the last worker node and an ADD_NODE never exceeds ``nodes_max`` (it
draws only among the kinds possible at that point); one owner is frozen at a time and every
FREEZE_OWNER is followed by its RESUME_OWNER; every REORDER/DUPLICATE burst has a bounded size.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypeVar

T = TypeVar("T")


class FaultKind(StrEnum):
    KILL_OWNER = "kill_owner"  # kill an owner's worker process; Ray restarts it
    REMOVE_NODE = "remove_node"  # lose a whole worker node; its vshards move
    ADD_NODE = "add_node"  # a node joins; owners start on it
    FREEZE_OWNER = "freeze_owner"  # stop an owner process (SIGSTOP): a zombie in the making
    RESUME_OWNER = "resume_owner"  # let the frozen owner run again: its writes must be fenced
    RESTART_POSTGRES = "restart_postgres"  # stop PostgreSQL, then start it again
    KILL_FRONTDOOR = "kill_frontdoor"  # a front door dies; clients move to another
    DUPLICATE_REQUESTS = "duplicate_requests"  # the client resends answered requests
    REORDER_REQUESTS = "reorder_requests"  # the client sends a burst of updates out of order


# Kinds the generator draws directly (RESUME_OWNER is only ever paired with a FREEZE_OWNER).
DRAWN_KINDS: tuple[FaultKind, ...] = tuple(k for k in FaultKind if k is not FaultKind.RESUME_OWNER)


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault: when (ms after the load starts), what, on which target, for how long."""

    at_ms: int
    kind: FaultKind
    pick: int  # the harness maps it onto the live candidates: candidates[pick % len(candidates)]
    duration_ms: int = 0  # FREEZE_OWNER: until its RESUME_OWNER; RESTART_POSTGRES: down time
    burst: int = 0  # DUPLICATE/REORDER_REQUESTS: how many requests
    pair: int | None = None  # FREEZE_OWNER and its RESUME_OWNER share a pair number


@dataclass(frozen=True, slots=True)
class ScheduleSpec:
    """What to generate: how many faults, how often, of which kinds and with which weights."""

    faults: int = 10
    interval_ms: int = (
        2000  # mean gap between faults (drawn uniformly in [interval/2, 3*interval/2])
    )
    start_ms: int = 2000  # load runs fault-free this long first (the "before" throughput)
    nodes_initial: int = 2  # worker nodes at start (the head is not counted and never removed)
    nodes_min: int = 1
    nodes_max: int = 4
    freeze_ms_max: int = 3000
    postgres_down_ms_max: int = 2000
    burst_max: int = 20
    weights: dict[FaultKind, int] = field(
        default_factory=lambda: {
            FaultKind.KILL_OWNER: 4,
            FaultKind.REMOVE_NODE: 1,
            FaultKind.ADD_NODE: 1,
            FaultKind.FREEZE_OWNER: 2,
            FaultKind.RESTART_POSTGRES: 1,
            FaultKind.KILL_FRONTDOOR: 1,
            FaultKind.DUPLICATE_REQUESTS: 2,
            FaultKind.REORDER_REQUESTS: 2,
        }
    )

    def __post_init__(self) -> None:
        if self.faults < 0:
            raise ValueError(f"faults={self.faults} must be >= 0")
        if self.interval_ms < 2:
            raise ValueError(f"interval_ms={self.interval_ms} must be >= 2")
        if not 1 <= self.nodes_min <= self.nodes_initial <= self.nodes_max:
            raise ValueError(
                f"need 1 <= nodes_min ({self.nodes_min}) <= nodes_initial ({self.nodes_initial})"
                f" <= nodes_max ({self.nodes_max})"
            )
        for kind, weight in self.weights.items():
            if kind is FaultKind.RESUME_OWNER:
                raise ValueError("weights: RESUME_OWNER is not drawn; it follows FREEZE_OWNER")
            if weight < 0:
                raise ValueError(f"weights[{kind}]={weight} must be >= 0")
        if self.faults and not any(self.weights.get(k, 0) for k in DRAWN_KINDS):
            raise ValueError("weights: at least one kind needs a positive weight")


def generate(seed: int, spec: ScheduleSpec | None = None) -> list[Fault]:
    """The schedule for ``seed``: ``spec.faults`` drawn faults (plus their resumes), by time.

    Only ``random.Random(seed)`` is used, so the result is identical on every machine and run.
    """
    spec = spec or ScheduleSpec()
    rng = random.Random(seed)
    kinds = [k for k in DRAWN_KINDS if spec.weights.get(k, 0) > 0]
    weights = [spec.weights[k] for k in kinds]
    nodes = spec.nodes_initial
    faults: list[Fault] = []
    at = spec.start_ms
    frozen_until = 0  # one owner frozen at a time keeps the run's capacity predictable
    for number in range(spec.faults):
        at += rng.randint(spec.interval_ms // 2, spec.interval_ms * 3 // 2)
        # Keep the schedule executable: draw only among the kinds possible now.
        possible = [
            (k, w)
            for k, w in zip(kinds, weights, strict=True)
            if not (k is FaultKind.REMOVE_NODE and nodes <= spec.nodes_min)
            and not (k is FaultKind.ADD_NODE and nodes >= spec.nodes_max)
        ]
        if not possible:
            break  # e.g. only REMOVE_NODE asked for and no node left to remove
        kind = rng.choices([k for k, _ in possible], [w for _, w in possible])[0]
        if kind is FaultKind.FREEZE_OWNER and at <= frozen_until:
            at = frozen_until + 1  # one frozen owner at a time: this freeze waits its turn
        pick = rng.randrange(1 << 16)
        if kind is FaultKind.REMOVE_NODE:
            nodes -= 1
            faults.append(Fault(at, kind, pick))
        elif kind is FaultKind.ADD_NODE:
            nodes += 1
            faults.append(Fault(at, kind, pick))
        elif kind is FaultKind.FREEZE_OWNER:
            duration = rng.randint(max(1, spec.freeze_ms_max // 4), max(1, spec.freeze_ms_max))
            faults.append(Fault(at, kind, pick, duration_ms=duration, pair=number))
            faults.append(
                Fault(at + duration, FaultKind.RESUME_OWNER, pick, duration_ms=0, pair=number)
            )
            frozen_until = at + duration
        elif kind is FaultKind.RESTART_POSTGRES:
            down = rng.randint(max(1, spec.postgres_down_ms_max // 4), spec.postgres_down_ms_max)
            faults.append(Fault(at, kind, pick, duration_ms=down))
        elif kind in (FaultKind.DUPLICATE_REQUESTS, FaultKind.REORDER_REQUESTS):
            faults.append(Fault(at, kind, pick, burst=rng.randint(2, max(2, spec.burst_max))))
        else:
            faults.append(Fault(at, kind, pick))
    faults.sort(key=lambda f: (f.at_ms, f.kind is not FaultKind.RESUME_OWNER))
    return faults


def choose(candidates: Sequence[T], pick: int) -> T:
    """The target of a fault among the live candidates (sorted by the caller for determinism)."""
    if not candidates:
        raise ValueError("no candidate to apply the fault to")
    return candidates[pick % len(candidates)]


def count_by_kind(faults: Sequence[Fault]) -> dict[FaultKind, int]:
    """How many faults of each kind, in the enum's order, zeros included."""
    counts = Counter(f.kind for f in faults)
    return {kind: counts.get(kind, 0) for kind in FaultKind}


def describe(faults: Sequence[Fault]) -> list[str]:
    """One line per fault, for logs and the replay message."""
    lines = []
    for f in faults:
        extra = f" for {f.duration_ms} ms" if f.duration_ms else ""
        extra += f" x{f.burst}" if f.burst else ""
        lines.append(f"{f.at_ms:>8} ms  {f.kind.value:<20} pick={f.pick}{extra}")
    return lines
