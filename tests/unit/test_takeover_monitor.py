"""The failover monitor's probe rounds against fakes (no Ray): who is declared dead, and who
may receive vshards. Regression: an owner Ray gave up on must never get vshards back."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from failover import takeover
from failover.takeover import ActorInfo, FailoverMonitor, MonitorConfig
from sharding.shardmap import ShardMap, balanced_map, rebalance


class _Method:
    def __init__(self, fn: Callable[..., Awaitable[Any]]) -> None:
        self._fn = fn

    def remote(self, *args: Any) -> Awaitable[Any]:
        return self._fn(*args)


class _Manager:
    def __init__(self, shard_map: ShardMap) -> None:
        self.map = shard_map
        self.calls: list[tuple[list[str], list[str]]] = []

        async def get_map() -> ShardMap:
            return self.map

        async def take_over_from(live: list[str], dead: list[str]) -> ShardMap:
            self.calls.append((list(live), list(dead)))
            self.map = rebalance(self.map, live)
            return self.map

        self.get_map = _Method(get_map)
        self.take_over_from = _Method(take_over_from)


class _Owner:
    def __init__(self, monitor_world: dict[str, bool], name: str) -> None:
        async def ping() -> str:
            if not monitor_world[name]:
                await asyncio.sleep(10)  # a dead or frozen owner never answers
            return name

        self.ping = _Method(ping)


def _monitor(
    monkeypatch: pytest.MonkeyPatch,
    manager: _Manager,
    answering: dict[str, bool],
    infos: dict[str, ActorInfo],
    gone_nodes: set[str],
) -> FailoverMonitor:
    monkeypatch.setattr(takeover, "actor_infos", lambda prefix="": dict(infos))
    monkeypatch.setattr(takeover, "dead_nodes", lambda: frozenset(gone_nodes))
    monitor = FailoverMonitor(
        MonitorConfig(period_ms=100, probe_timeout_ms=50, failures_to_dead=2, dead_after_ms=100)
    )
    monitor._task.cancel()  # the test drives the rounds by hand
    handles: dict[str, Any] = {"billing-shard-manager": manager}
    handles.update({n: _Owner(answering, n) for n in answering})
    monkeypatch.setattr(monitor, "_handle", lambda name: handles[name])
    return monitor


def test_lost_nodes_move_vshards_only_to_owners_still_alive(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def scenario() -> None:
        manager = _Manager(balanced_map(30, ["a", "b", "c"]))
        answering = {"a": True, "b": True, "c": True}
        infos = {n: ActorInfo("ALIVE", f"node-{n}", 100 + i) for i, n in enumerate("abc")}
        gone: set[str] = set()
        monitor = _monitor(monkeypatch, manager, answering, infos, gone)
        await monitor._round()
        assert manager.calls == []

        # c's node is lost; Ray cannot restart c (pinned to that node): its actor is DEAD.
        answering["c"] = False
        gone.add("node-c")
        infos["c"] = ActorInfo("DEAD", "node-c", 0)
        await monitor._round()
        assert manager.calls == [(["a", "b"], ["c"])]
        assert "c" not in manager.map.owners

        # Right after, b's node goes too: in the round that forgets c (DEAD, holding nothing),
        # b's vshards must go to a only, never back to c.
        answering["b"] = False
        gone.add("node-b")
        infos["b"] = ActorInfo("DEAD", "node-b", 0)
        for _ in range(5):
            await monitor._round()
        assert manager.map.owners == ("a",)
        assert all("c" not in live for live, _ in manager.calls)
        assert len(manager.calls) == 2, manager.calls

    asyncio.run(scenario())


def test_a_frozen_owner_is_moved_after_its_probes_fail_long_enough(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def scenario() -> None:
        manager = _Manager(balanced_map(12, ["a", "b"]))
        answering = {"a": True, "b": True}
        infos = {n: ActorInfo("ALIVE", "node-1", 1) for n in "ab"}
        monitor = _monitor(monkeypatch, manager, answering, infos, set())
        answering["b"] = False  # SIGSTOP: Ray still says ALIVE
        await monitor._round()
        assert manager.calls == []  # one failure is not enough
        await asyncio.sleep(0.12)
        await monitor._round()
        assert manager.calls == [(["a"], ["b"])]
        answering["b"] = True  # it wakes up: it is RETURNED and gets a share back
        await monitor._round()
        assert manager.calls[-1] == (["a", "b"], [])
        assert set(manager.map.owners) == {"a", "b"}
        events = await monitor.events()
        assert [e["transition"] for e in events] == ["died", "returned"]

    asyncio.run(scenario())
