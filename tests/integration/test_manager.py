"""ShardManager: the map is persisted and survives a manager restart, front doors long-poll for
new versions, scale-out moves the fewest vshards with the state following, plans are persisted
and broadcast to the owners."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from actors.messages import Answered, QueryRequest, Rejected
from actors.owner import owner_name
from billing.tariff import template_text
from sharding.shardmap import moved_vshards

from ._owner_helpers import answered, provision, running_cluster, submit

pytestmark = pytest.mark.integration


def _eventually(call: Any, timeout_s: float = 120.0) -> Any:
    """The first result of ``call`` that does not raise (a restarting actor raises meanwhile)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return call()
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_map_persists_and_long_poll_sees_changes(ray_cluster: Any, pg_dsn: str) -> None:
    with running_cluster(pg_dsn, vshard_count=32) as handles:
        first = handles.get_map()
        assert first.vshard_count == 32 and len(first.owners) == 2
        stale = ray_cluster.get(handles.manager.wait_for_version.remote(first.version, 0.2))
        assert stale == first  # nothing newer: the current map at the timeout
        got: list[Any] = []
        poll = threading.Thread(
            target=lambda: got.append(
                ray_cluster.get(handles.manager.wait_for_version.remote(first.version, 30.0))
            )
        )
        poll.start()
        moved = ray_cluster.get(handles.manager.move.remote({0: first.owner_of(1)}))
        poll.join(timeout=60)
        assert got == [moved] and moved.version == first.version + 1
        # A restarted manager (crash) serves the stored map, not a fresh one.
        ray_cluster.kill(handles.manager, no_restart=False)
        assert (
            _eventually(lambda: ray_cluster.get(handles.manager.get_map.remote(), timeout=30))
            == moved
        )


def test_scale_out_moves_the_minimum_and_state_follows(ray_cluster: Any, pg_dsn: str) -> None:
    with running_cluster(pg_dsn, vshard_count=48) as handles:
        subscribers = [f"49170005{i:04d}" for i in range(30)]
        for s in subscribers:
            answered(provision(handles, s, balance=1_000_000 + int(s[-2:])))
        before = handles.get_map()
    # The same database, three owners now: the stored map is rebalanced with the fewest moves.
    with running_cluster(pg_dsn, owners=3, vshard_count=48) as handles:
        after = handles.get_map()
        moves = moved_vshards(before, after)
        assert len(moves) == 16 and all(new == owner_name(2) for _, new in moves.values())
        statuses = {s.name: s for s in handles.statuses()}
        assert sorted(statuses[owner_name(2)].vshards) == sorted(moves)
        for s in subscribers:
            view = answered(submit(handles, [QueryRequest("balance", s)])[0])
            assert view.balance_micros == 1_000_000 + int(s[-2:])


def test_load_plan_persists_and_reaches_owners(ray_cluster: Any, pg_dsn: str) -> None:
    text = template_text("payg").replace("plan_id: payg", "plan_id: payg-promo", 1)
    with running_cluster(pg_dsn) as handles:
        bad = ray_cluster.get(handles.manager.load_plan.remote("plan_id: [not a plan"))
        assert isinstance(bad, Rejected) and bad.field
        loaded = ray_cluster.get(handles.manager.load_plan.remote(text))
        assert isinstance(loaded, Answered) and loaded.payload.plan_id == "payg-promo"
        assert "payg-promo" in [
            p.plan_id for p in ray_cluster.get(handles.manager.list_plans.remote())
        ]
        answered(provision(handles, "4917000601", balance=1_000_000, plan="payg-promo"))
    with running_cluster(pg_dsn) as handles:  # a new cluster reads the plan from the database
        answered(provision(handles, "4917000602", balance=1_000_000, plan="payg-promo"))
        got = ray_cluster.get(handles.manager.get_plan.remote("payg-promo"))
        assert isinstance(got, Answered)
