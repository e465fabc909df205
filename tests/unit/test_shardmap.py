"""Shard map: every vshard has exactly one owner; balanced maps; rebalance moves the minimum."""

from __future__ import annotations

import itertools
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sharding.shardmap import (
    ShardMap,
    balanced_map,
    minimum_moves,
    moved_vshards,
    rebalance,
)
from sharding.vshard import vshard_of

NAMES = [f"billing-owner-{i}" for i in range(8)]


def _check(m: ShardMap) -> None:
    """Every vshard has exactly one owner, who is listed; per-owner lists partition the vshards."""
    seen: list[int] = []
    for name in m.owners:
        held = m.vshards_of(name)
        assert all(m.owner_of(v) == name for v in held)
        seen.extend(held)
    assert sorted(seen) == list(range(m.vshard_count))


def _balanced(m: ShardMap, owners: list[str]) -> bool:
    counts = [len(m.vshards_of(n)) for n in owners]
    return max(counts) - min(counts) <= 1 and sum(counts) == m.vshard_count


def _brute_force_minimum(m: ShardMap, owners: list[str]) -> int:
    """Fewest moves over every choice of which owners get the extra vshard (small n only)."""
    base, extra = divmod(m.vshard_count, len(owners))
    best = m.vshard_count
    for lucky in itertools.combinations(owners, extra):
        kept = sum(min(len(m.vshards_of(n)), base + (n in lucky)) for n in owners)
        best = min(best, m.vshard_count - kept)
    return best


def test_balanced_map_round_robin() -> None:
    m = balanced_map(10, ["a", "b", "c"])
    assert m.version == 1
    assert m.vshards_of("a") == (0, 3, 6, 9)
    assert m.vshards_of("b") == (1, 4, 7)
    assert m.owner_of(5) == "c"
    assert m.vshards_of("nobody") == ()
    _check(m)


def test_owner_of_key_routes_by_vshard() -> None:
    m = balanced_map(1024, NAMES[:2])
    assert m.owner_of_key("491700000001") == m.owner_of(vshard_of("491700000001", 1024))


def test_dict_round_trip_and_pickle() -> None:
    m = balanced_map(16, NAMES[:3], version=7)
    again = ShardMap.from_dict(7, 16, m.as_dict())
    assert again.as_dict() == m.as_dict()
    assert pickle.loads(pickle.dumps(m)) == m
    assert pickle.loads(pickle.dumps(m)).vshards_of(NAMES[0]) == m.vshards_of(NAMES[0])


def test_invalid_maps_are_refused_with_the_field_named() -> None:
    with pytest.raises(ValueError, match="assignments"):
        ShardMap(version=1, vshard_count=3, owners=("a",), assignments=(0, 0))
    with pytest.raises(ValueError, match=r"assignments\[1\]"):
        ShardMap(version=1, vshard_count=2, owners=("a",), assignments=(0, 1))
    with pytest.raises(ValueError, match="owners"):
        ShardMap(version=1, vshard_count=1, owners=("a", "a"), assignments=(0,))
    with pytest.raises(ValueError, match="owners"):
        balanced_map(4, [])
    with pytest.raises(ValueError, match="without an owner"):
        ShardMap.from_dict(1, 3, {0: "a", 1: "a"})
    with pytest.raises(ValueError, match="vshard"):
        balanced_map(4, ["a"]).owner_of(4)


def test_rebalance_unchanged_keeps_version() -> None:
    m = balanced_map(64, NAMES[:4])
    assert rebalance(m, NAMES[:4]) is m


def test_scale_out_moves_only_to_the_new_owner() -> None:
    m = balanced_map(1024, NAMES[:2])
    after = rebalance(m, NAMES[:3])
    moved = moved_vshards(m, after)
    assert after.version == m.version + 1
    assert all(new == NAMES[2] for _, new in moved.values())
    assert len(moved) == 341  # 1024 // 3 = 341; the extra vshard stays with an old owner
    _check(after)


def test_owner_loss_moves_only_its_vshards() -> None:
    m = balanced_map(1024, NAMES[:4])
    after = rebalance(m, [NAMES[0], NAMES[1], NAMES[3]])
    moved = moved_vshards(m, after)
    assert set(moved) == set(m.vshards_of(NAMES[2]))
    assert _balanced(after, [NAMES[0], NAMES[1], NAMES[3]])


@settings(derandomize=True, max_examples=150, deadline=None)
@given(
    count=st.integers(min_value=1, max_value=300),
    before=st.integers(min_value=1, max_value=6),
    data=st.data(),
)
def test_rebalance_is_balanced_and_minimal(count: int, before: int, data: st.DataObject) -> None:
    owners_before = NAMES[:before]
    # Start from an arbitrary (unbalanced) map, not only from balanced ones.
    assignment = data.draw(
        st.lists(st.integers(min_value=0, max_value=before - 1), min_size=count, max_size=count),
        label="assignment",
    )
    current = ShardMap.from_dict(3, count, {v: owners_before[i] for v, i in enumerate(assignment)})
    new_owners = data.draw(
        st.lists(st.sampled_from(NAMES), min_size=1, max_size=6, unique=True), label="owners"
    )
    after = rebalance(current, new_owners)
    _check(after)
    assert set(after.owners) <= set(new_owners)
    assert _balanced(after, new_owners)
    moves = len(moved_vshards(current, after))
    assert moves == _brute_force_minimum(current, new_owners) == minimum_moves(current, new_owners)
    assert after.version in (current.version, current.version + 1)
    assert (after.version == current.version) == (after is current)
