"""Pure helpers of cluster/scaleout.py: which nodes get owners, new owner names, NODE matching."""

from __future__ import annotations

import pytest

from cluster.bootstrap import StartupError
from cluster.scaleout import NodeInfo, match_node, new_owner_indices, owners_to_start


def test_owners_start_only_where_a_live_node_has_too_few() -> None:
    assert owners_to_start(["a", "b", "c"], {"a": 2, "b": 1}, 2) == {"b": 1, "c": 2}
    assert owners_to_start(["a"], {"a": 3}, 2) == {}
    assert owners_to_start([], {"gone": 0}, 2) == {}
    with pytest.raises(ValueError, match="owners_per_node"):
        owners_to_start(["a"], {}, 0)


def test_new_owner_names_never_reuse_an_index() -> None:
    taken = {"billing-owner-0", "billing-owner-3", "billing-shard-manager", "other-7"}
    assert new_owner_indices(taken, 2) == [4, 5]
    assert new_owner_indices(set(), 1) == [0]
    assert new_owner_indices(taken, 0) == []


NODES = [
    NodeInfo("abc123", "10.0.0.1", True),
    NodeInfo("abd456", "10.0.0.2", True),
    NodeInfo("ffe789", "10.0.0.10", False),
]


def test_match_node_by_id_or_address_prefix() -> None:
    assert match_node(NODES, "abc").node_id == "abc123"
    assert match_node(NODES, "10.0.0.2").node_id == "abd456"
    assert match_node(NODES, "ffe").node_id == "ffe789"  # a dead node can still be named
    assert match_node(NODES, "10.0.0.1").node_id == "abc123"  # exact address beats prefix


def test_match_node_refuses_ambiguous_or_unknown() -> None:
    with pytest.raises(StartupError, match="several nodes"):
        match_node(NODES, "ab")
    with pytest.raises(StartupError, match="no Ray node"):
        match_node(NODES, "zz")
    with pytest.raises(StartupError, match="empty"):
        match_node(NODES, "")


def test_cli_refuses_bad_arguments_before_joining_ray() -> None:
    from cluster.cli import main

    assert main(["cluster", "drain"]) == 2  # which node?
    assert main(["cluster", "rebalance", "--per-round", "0"]) == 2


def test_watch_rebalances_only_when_a_node_needs_owners() -> None:
    from cluster.scaleout import watch

    pending = iter([False, True, False, True, False])
    acted: list[int] = []
    ticks: list[float] = []

    def stop(timeout: float) -> bool:
        ticks.append(timeout)
        return len(ticks) == 5

    ran = watch(lambda: next(pending), lambda: acted.append(len(ticks)), 0.5, stop)
    assert ran == 2 and acted == [1, 3] and ticks == [0.5] * 5
    with pytest.raises(ValueError, match="interval_s"):
        watch(lambda: True, lambda: None, 0, stop)
