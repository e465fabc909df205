"""The shard map: which owner actor holds each vshard, at which map version.

A :class:`ShardMap` is an immutable value. Front doors cache it and route by
``map.owner_of(vshard_of(subscriber_id, map.vshard_count))``; the shard manager actor
(actors/manager.py) is the one writer and persists it through the Store. Ownership itself is
proven by the per-vshard epoch in PostgreSQL (DESIGN.md invariant 5): a stale map only costs a
NotOwner answer and a retry, never a wrong write.

Invariant kept by every constructor and function here: every vshard has exactly one owner, and
that owner is one of ``owners``.

- :func:`balanced_map` spreads vshards evenly (owner counts differ by at most one).
- :func:`rebalance` moves from a current map to a new owner set with the fewest vshard moves
  (for scale-out, scale-in and node loss), so only the vshards that must move pay a takeover.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from sharding.vshard import check_vshard_count, vshard_of


@dataclass(frozen=True, slots=True)
class ShardMap:
    """vshard -> owner name, versioned. ``assignments[v]`` indexes ``owners``.

    ``version`` grows by one with every change; front doors long-poll for a newer one.
    """

    version: int
    vshard_count: int
    owners: tuple[str, ...]
    assignments: tuple[int, ...]
    _by_owner: dict[str, tuple[int, ...]] = field(
        init=False, repr=False, compare=False, hash=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        if isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 0:
            raise ValueError(f"version must be an int >= 0, got {self.version!r}")
        check_vshard_count(self.vshard_count)
        if not self.owners:
            raise ValueError("owners must not be empty")
        if len(set(self.owners)) != len(self.owners):
            raise ValueError(f"owners must be distinct, got {self.owners!r}")
        for name in self.owners:
            if not isinstance(name, str) or not name:
                raise ValueError(f"owners: every owner name must be a non-empty str, got {name!r}")
        if len(self.assignments) != self.vshard_count:
            raise ValueError(
                f"assignments must have one entry per vshard ({self.vshard_count}),"
                f" got {len(self.assignments)}"
            )
        count = len(self.owners)
        for vshard, index in enumerate(self.assignments):
            if not 0 <= index < count:
                raise ValueError(f"assignments[{vshard}] = {index} is not an owner index")
        by_owner: dict[str, list[int]] = {name: [] for name in self.owners}
        for vshard, index in enumerate(self.assignments):
            by_owner[self.owners[index]].append(vshard)
        self._by_owner.update({name: tuple(vs) for name, vs in by_owner.items()})

    def owner_of(self, vshard: int) -> str:
        """The owner actor name of ``vshard``."""
        if not 0 <= vshard < self.vshard_count:
            raise ValueError(f"vshard must be in 0..{self.vshard_count - 1}, got {vshard}")
        return self.owners[self.assignments[vshard]]

    def owner_of_key(self, subscriber_id: str) -> str:
        """The owner actor name for a subscriber or account id."""
        return self.owner_of(vshard_of(subscriber_id, self.vshard_count))

    def vshards_of(self, owner: str) -> tuple[int, ...]:
        """The vshards ``owner`` holds, ascending (empty if it holds none or is unknown)."""
        return self._by_owner.get(owner, ())

    def as_dict(self) -> dict[int, str]:
        """vshard -> owner name (the persisted form, ShardMapRecord.assignments)."""
        return {v: self.owners[i] for v, i in enumerate(self.assignments)}

    @classmethod
    def from_dict(cls, version: int, vshard_count: int, assignments: Mapping[int, str]) -> ShardMap:
        """Build from the persisted vshard -> owner form; every vshard must be present."""
        missing = [v for v in range(vshard_count) if v not in assignments]
        if missing:
            raise ValueError(f"assignments: vshards without an owner: {missing[:10]}")
        extra = [v for v in assignments if not 0 <= v < vshard_count]
        if extra:
            raise ValueError(f"assignments: vshards out of range: {extra[:10]}")
        owners = tuple(sorted(set(assignments.values())))
        index = {name: i for i, name in enumerate(owners)}
        return cls(
            version=version,
            vshard_count=vshard_count,
            owners=owners,
            assignments=tuple(index[assignments[v]] for v in range(vshard_count)),
        )

    def with_assignments(self, assignments: Mapping[int, str]) -> ShardMap:
        """A map of version + 1 where the given vshards move to the given owners."""
        current = self.as_dict()
        current.update(assignments)
        return ShardMap.from_dict(self.version + 1, self.vshard_count, current)


def _check_owner_names(owners: Sequence[str]) -> tuple[str, ...]:
    names = tuple(owners)
    if not names:
        raise ValueError("owners must not be empty")
    if len(set(names)) != len(names):
        raise ValueError(f"owners must be distinct, got {names!r}")
    return names


def balanced_map(vshard_count: int, owners: Sequence[str], *, version: int = 1) -> ShardMap:
    """Assign vshards round robin: owner counts differ by at most one.

    Round robin rather than ranges so that each owner's vshards spread over the id space.
    """
    names = _check_owner_names(owners)
    check_vshard_count(vshard_count)
    return ShardMap(
        version=version,
        vshard_count=vshard_count,
        owners=names,
        assignments=tuple(v % len(names) for v in range(vshard_count)),
    )


def target_counts(
    vshard_count: int, current: Mapping[str, int], owners: Sequence[str]
) -> dict[str, int]:
    """How many vshards each of ``owners`` should hold after a minimal-move rebalance.

    Everyone gets ``vshard_count // n``; the ``vshard_count % n`` extra vshards go to the owners
    that hold the most already (ties by name), because that keeps the most vshards in place.
    """
    names = _check_owner_names(owners)
    base, extra = divmod(vshard_count, len(names))
    ranked = sorted(names, key=lambda name: (-current.get(name, 0), name))
    return {name: base + (1 if rank < extra else 0) for rank, name in enumerate(ranked)}


def rebalance(current: ShardMap, owners: Sequence[str]) -> ShardMap:
    """Move from ``current`` to a balanced map over ``owners`` moving the fewest vshards.

    Vshards of owners no longer listed must move; each remaining owner keeps up to its target
    count (its lowest vshards, so the result is deterministic) and gives away the rest; the freed
    vshards fill the owners below target. Returns ``current`` unchanged (same version) when it is
    already balanced over exactly these owners.
    """
    names = _check_owner_names(owners)
    counts = {name: len(current.vshards_of(name)) for name in names}
    targets = target_counts(current.vshard_count, counts, names)
    if set(names) == set(current.owners) and all(counts[n] == targets[n] for n in names):
        return current
    keep: dict[int, str] = {}
    free: list[int] = []
    for name in current.owners:
        held = current.vshards_of(name)
        quota = targets.get(name, 0)
        keep.update((v, name) for v in held[:quota])
        free.extend(held[quota:])
    free.sort()
    moves: dict[int, str] = {}
    position = 0
    for name in names:
        room = max(targets[name] - counts[name], 0)
        for vshard in free[position : position + room]:
            moves[vshard] = name
        position += room
    if position != len(free):  # pragma: no cover - arithmetic guarantee of the targets
        raise AssertionError(f"rebalance left {len(free) - position} vshards without an owner")
    keep.update(moves)
    return ShardMap.from_dict(current.version + 1, current.vshard_count, keep)


def moved_vshards(before: ShardMap, after: ShardMap) -> dict[int, tuple[str, str]]:
    """vshard -> (old owner, new owner) for every vshard whose owner differs."""
    if before.vshard_count != after.vshard_count:
        raise ValueError(f"vshard_count differs: {before.vshard_count} != {after.vshard_count}")
    return {
        v: (before.owner_of(v), after.owner_of(v))
        for v in range(before.vshard_count)
        if before.owner_of(v) != after.owner_of(v)
    }


def minimum_moves(current: ShardMap, owners: Iterable[str]) -> int:
    """The fewest vshard moves any balanced map over ``owners`` needs from ``current``.

    A lower bound used by the tests: each owner can keep at most its target count.
    """
    names = _check_owner_names(list(owners))
    counts = {name: len(current.vshards_of(name)) for name in names}
    targets = target_counts(current.vshard_count, counts, names)
    kept = sum(min(counts[n], targets[n]) for n in names)
    return current.vshard_count - kept
