"""WarmSet: which committed subscribers an owner keeps hot; bounded, oldest packed first, never a
key of a commit in flight, everything idle packed by the sweep."""

from __future__ import annotations

import pytest

from actors._warm import WarmSet


def test_within_the_limit_nothing_is_packed() -> None:
    warm = WarmSet(limit=3, idle_s=10.0)
    assert warm.committed(["a", "b", "c"], now=0.0, busy=()) == []
    assert sorted(warm.keys()) == ["a", "b", "c"]


def test_past_the_limit_the_least_recently_committed_are_packed() -> None:
    warm = WarmSet(limit=3, idle_s=10.0)
    warm.committed(["a", "b", "c"], now=0.0, busy=())
    assert warm.committed(["a"], now=1.0, busy=()) == []  # a again: now the most recent
    assert warm.committed(["d", "e"], now=2.0, busy=()) == ["b", "c"]
    assert list(warm.keys()) == ["a", "d", "e"]
    assert len(warm) == 3


def test_a_key_of_a_commit_in_flight_is_never_packed_and_keeps_its_place() -> None:
    warm = WarmSet(limit=2, idle_s=10.0)
    warm.committed(["a", "b"], now=0.0, busy=())
    assert warm.committed(["c"], now=1.0, busy={"a", "b"}) == ["c"]  # a, b busy: kept
    assert list(warm.keys()) == ["a", "b"]
    assert warm.committed(["c", "d"], now=2.0, busy={"b"}) == ["a", "c"]
    assert list(warm.keys()) == ["b", "d"]


def test_idle_keys_are_handed_out_oldest_first_and_busy_ones_stay() -> None:
    warm = WarmSet(limit=10, idle_s=5.0)
    warm.committed(["a", "b"], now=0.0, busy=())
    warm.committed(["c"], now=3.0, busy=())
    warm.committed(["d"], now=6.0, busy=())
    assert warm.idle(now=8.0, busy={"b"}) == ["a", "c"]  # committed at or before 3.0
    assert list(warm.keys()) == ["b", "d"]
    assert warm.idle(now=8.0, busy=()) == ["b"]
    assert warm.idle(now=20.0, busy=()) == ["d"]
    assert len(warm) == 0


def test_take_all_leaves_only_busy_keys_and_clear_forgets_everything() -> None:
    warm = WarmSet(limit=10, idle_s=5.0)
    warm.committed(["a", "b", "c"], now=0.0, busy=())
    assert warm.take_all(busy={"b"}) == ["a", "c"]
    assert list(warm.keys()) == ["b"]
    warm.clear()
    assert len(warm) == 0


def test_a_zero_limit_packs_every_commit_at_once() -> None:
    warm = WarmSet(limit=0, idle_s=5.0)
    assert warm.committed(["a", "b"], now=0.0, busy=()) == ["a", "b"]
    assert len(warm) == 0


@pytest.mark.parametrize(("limit", "idle_s", "field"), [(-1, 1.0, "limit"), (1, 0.0, "idle_s")])
def test_bad_bounds_name_the_field(limit: int, idle_s: float, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        WarmSet(limit, idle_s)
