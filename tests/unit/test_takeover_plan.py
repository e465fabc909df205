"""failover.detector and failover.plan: when an owner is declared dead, and where vshards go."""

from __future__ import annotations

import pytest

from failover.detector import Detector, Transition, Verdict
from failover.plan import plan_join, plan_takeover, rounds
from sharding.shardmap import balanced_map, moved_vshards


def test_a_crash_shorter_than_the_threshold_moves_nothing() -> None:
    d = Detector(failures_to_dead=3, dead_after_ms=1500)
    assert d.observe("o1", ok=False, node_alive=True, now_ms=0) is Transition.NONE
    assert d.verdict("o1") is Verdict.SUSPECT
    assert d.observe("o1", ok=False, node_alive=True, now_ms=500) is Transition.NONE
    assert d.observe("o1", ok=True, node_alive=True, now_ms=1000) is Transition.NONE
    assert d.verdict("o1") is Verdict.ALIVE and not d.dead()


def test_a_frozen_owner_dies_after_enough_failures_over_enough_time() -> None:
    d = Detector(failures_to_dead=3, dead_after_ms=1500)
    for t in (0, 100, 200, 300):  # many failures, but not for long enough
        assert d.observe("o1", ok=False, node_alive=True, now_ms=t) is Transition.NONE
    assert d.observe("o1", ok=False, node_alive=True, now_ms=1500) is Transition.DIED
    assert d.dead() == {"o1"}
    assert d.observe("o1", ok=False, node_alive=True, now_ms=2000) is Transition.NONE


def test_a_restarting_owner_dies_after_the_restart_grace() -> None:
    d = Detector(failures_to_dead=2, dead_after_ms=1500, restart_grace_ms=500)
    assert d.observe("o1", ok=False, node_alive=True, now_ms=0, restarting=True) is (
        Transition.NONE
    )
    assert d.observe("o1", ok=False, node_alive=True, now_ms=250, restarting=True) is (
        Transition.NONE
    )
    assert d.observe("o1", ok=False, node_alive=True, now_ms=500, restarting=True) is (
        Transition.DIED
    )


def test_a_quick_restart_moves_nothing() -> None:
    d = Detector(failures_to_dead=2, dead_after_ms=1500, restart_grace_ms=500)
    d.observe("o1", ok=False, node_alive=True, now_ms=0, restarting=True)
    assert d.observe("o1", ok=True, node_alive=True, now_ms=250) is Transition.NONE
    assert not d.dead()


def test_a_lost_node_kills_its_owners_at_once() -> None:
    d = Detector()
    assert d.observe("o2", ok=False, node_alive=False, now_ms=0) is Transition.DIED
    assert d.verdict("o2") is Verdict.DEAD


def test_a_dead_owner_that_answers_again_returns() -> None:
    d = Detector(failures_to_dead=1, dead_after_ms=0)
    assert d.observe("o1", ok=False, node_alive=True, now_ms=0) is Transition.DIED
    assert d.observe("o1", ok=True, node_alive=True, now_ms=10) is Transition.RETURNED
    assert d.verdict("o1") is Verdict.ALIVE
    d.forget("o1")
    assert d.verdict("o1") is Verdict.ALIVE and not d.dead()


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"failures_to_dead": 0}, "failures_to_dead"),
        ({"dead_after_ms": -1}, "dead_after_ms"),
        ({"restart_grace_ms": -1}, "restart_grace_ms"),
    ],
)
def test_bad_detector_settings(kwargs: dict[str, int], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        Detector(**kwargs)


def test_takeover_moves_only_the_dead_owners_vshards() -> None:
    before = balanced_map(64, ["a", "b", "c", "d"])
    after = plan_takeover(before, {"b"})
    assert after is not None and after.version == before.version + 1
    moved = moved_vshards(before, after)
    assert set(moved) == set(before.vshards_of("b"))
    assert {old for old, _new in moved.values()} == {"b"}
    assert "b" not in after.owners
    counts = sorted(len(after.vshards_of(o)) for o in after.owners)
    assert counts[-1] - counts[0] <= 1


def test_takeover_of_nobody_or_everybody() -> None:
    before = balanced_map(8, ["a", "b"])
    assert plan_takeover(before, {"zz"}) is None
    with pytest.raises(ValueError, match="no surviving owner"):
        plan_takeover(before, {"a", "b"})


def test_join_moves_a_fair_share_to_the_new_owners() -> None:
    before = balanced_map(60, ["a", "b"])
    after = plan_join(before, ["a", "b", "c"])
    assert after is not None
    moved = moved_vshards(before, after)
    assert len(moved) == 20 and {new for _old, new in moved.values()} == {"c"}
    assert plan_join(after, ["a", "b", "c"]) is None


def test_rounds_reach_the_target_in_small_steps() -> None:
    before = balanced_map(60, ["a", "b"])
    target = plan_join(before, ["a", "b", "c", "d"])
    assert target is not None
    steps = rounds(before, target, per_round=7)
    assert [s.version for s in steps] == list(
        range(before.version + 1, before.version + 1 + len(steps))
    )
    assert steps[-1].as_dict() == target.as_dict()
    previous = before
    for step in steps:
        assert len(moved_vshards(previous, step)) <= 7
        previous = step
    with pytest.raises(ValueError, match="per_round"):
        rounds(before, target, per_round=0)
