"""Which vshards move where when owners die, return or join: pure functions over ShardMap.

Every plan is a minimal-move rebalance (:func:`sharding.shardmap.rebalance`): only the vshards
that must move do, so a failure costs a takeover of the lost owner's vshards and nothing else.
:func:`rounds` splits a large move into small rounds (elastic scale-out: each round is drain,
epoch bump, load, publish), so requests for a moving vshard wait briefly instead of failing.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from sharding.shardmap import ShardMap, moved_vshards, rebalance


def plan_takeover(current: ShardMap, dead: Collection[str]) -> ShardMap | None:
    """The map after the vshards of the ``dead`` owners go to the surviving ones.

    None when nothing changes (no dead owner holds a vshard). Raises ValueError when no owner
    survives: there is nobody to hand the vshards to, and inventing one would be a silent default.
    """
    gone = set(dead) & set(current.owners)
    if not gone:
        return None
    survivors = [o for o in current.owners if o not in gone]
    if not survivors:
        raise ValueError(f"no surviving owner to take over from {sorted(gone)}")
    return rebalance(current, survivors)


def plan_join(current: ShardMap, owners: Sequence[str]) -> ShardMap | None:
    """The map after (re)balancing over ``owners`` (joined or returned owners included).

    None when ``current`` is already balanced over exactly these owners.
    """
    after = rebalance(current, list(owners))
    return None if after is current else after


def rounds(current: ShardMap, target: ShardMap, per_round: int) -> list[ShardMap]:
    """Intermediate maps from ``current`` to ``target`` moving at most ``per_round`` vshards each.

    Each map's version is one more than the previous one's; the last equals ``target``'s
    assignments. Moves are taken in vshard order, so the rounds are deterministic.
    """
    if per_round < 1:
        raise ValueError(f"per_round={per_round} must be >= 1")
    moves = sorted(moved_vshards(current, target).items())
    maps: list[ShardMap] = []
    step = current
    for start in range(0, len(moves), per_round):
        chunk = {v: new for v, (_old, new) in moves[start : start + per_round]}
        step = step.with_assignments(chunk)
        maps.append(step)
    return maps
