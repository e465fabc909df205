"""Automatic takeover: the failover monitor, a detached actor that moves a dead owner's vshards.

What happens on each kind of failure (DESIGN.md sections 5 and 7):

- **Owner process crash.** Ray restarts the actor (``max_restarts=-1``) under the same name; its
  ``__init__`` asks the manager for the map and takes its own vshards back (epoch bump, bulk
  load). A new worker process needs seconds to start on a loaded machine, so when Ray reports
  the actor RESTARTING for longer than ``restart_grace_ms`` the monitor hands its vshards to the
  running owners (tens of milliseconds) and gives it a share back once it answers again.
- **Node loss.** Ray's GCS declares the node dead after the health checks
  (:mod:`failover.config`); the monitor sees the owner's node dead and at once asks the manager
  to rebalance the owner's vshards onto the owners that are left, *without* waiting for the dead
  one (the takers' epoch bumps fence it out). When Ray has restarted that owner elsewhere and it
  answers again, the monitor rebalances over all live owners, giving it a share back.
- **Frozen owner** (SIGSTOP, a long pause, a partition). Ray sees a live process; only the
  monitor's probes time out. After ``failures_to_dead`` failures spanning ``dead_after_ms`` its
  vshards move. When it wakes, its pending commit fails the epoch check (nothing is written),
  its callers get NotOwner and retry at the new owner, and it reloads with the new map.

Safety never depends on the monitor: a wrong verdict moves vshards needlessly but cannot let two
owners write one vshard, because every commit checks the epoch in PostgreSQL (invariant 5).

The decision logic is pure (:mod:`failover.detector`, :mod:`failover.plan`); this module is the
Ray glue: probing, reading the GCS tables, and calling the manager.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import ray

from failover.config import Settings
from failover.detector import Detector, Transition

log = logging.getLogger(__name__)

MONITOR_NAME = "billing-failover-monitor"
NAMESPACE = "billing"
MANAGER_NAME = "billing-shard-manager"
OWNER_PREFIX = "billing-owner-"
_EVENTS_KEPT = 1000
_WAITING_STATES = frozenset({"RESTARTING", "PENDING_CREATION", "DEPENDENCIES_UNREADY"})


@dataclass(frozen=True, slots=True)
class MonitorConfig:
    """How often owners are probed and how patient the monitor is."""

    period_ms: int = 250
    probe_timeout_ms: int = 400
    failures_to_dead: int = 3
    dead_after_ms: int = 1500
    restart_grace_ms: int = 0
    manager_call_timeout_s: float = 60.0
    namespace: str = NAMESPACE
    manager_name: str = MANAGER_NAME

    def __post_init__(self) -> None:
        for name in ("period_ms", "probe_timeout_ms", "failures_to_dead"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.dead_after_ms < 0 or self.restart_grace_ms < 0:
            raise ValueError(
                f"dead_after_ms ({self.dead_after_ms}) and restart_grace_ms"
                f" ({self.restart_grace_ms}) must be >= 0"
            )

    @classmethod
    def from_settings(cls, settings: Settings) -> MonitorConfig:
        """Probe as fast as Ray's own node health checks, and be about as patient."""
        return cls(
            period_ms=max(100, settings.health_check_period_ms // 2),
            probe_timeout_ms=settings.health_check_timeout_ms,
            failures_to_dead=settings.health_check_failure_threshold,
            dead_after_ms=settings.node_loss_detection_ms,
            restart_grace_ms=0,
            namespace=settings.namespace,
        )


@dataclass(frozen=True, slots=True)
class TakeoverEvent:
    """One decision of the monitor, with when it was detected and when the new map was out."""

    owner: str
    transition: str  # Transition value
    detected_at: float  # time.time() of the probe round that decided
    published_at: float | None = None  # when the manager had published and pushed the new map
    map_version: int | None = None
    moved: int = 0  # vshards moved
    error: str = ""


@dataclass(frozen=True, slots=True)
class ActorInfo:
    state: str
    node_id: str
    pid: int


def actor_infos(prefix: str = OWNER_PREFIX) -> dict[str, ActorInfo]:
    """Name -> state, node and pid of every actor whose name starts with ``prefix`` (from the GCS).

    Uses Ray's GCS actor table (``ray._private.state``): one call, no dashboard needed. A dead
    actor and its restarted incarnation share the name; the live one wins.
    """
    from ray._private import state as ray_state

    infos: dict[str, ActorInfo] = {}
    table: dict[str, dict[str, Any]] = ray_state.actors()
    for entry in table.values():
        name = str(entry.get("Name") or "")
        if not name.startswith(prefix):
            continue
        info = ActorInfo(
            state=str(entry.get("State", "")),
            node_id=str(entry.get("Address", {}).get("NodeID", "")),
            pid=int(entry.get("Pid") or 0),
        )
        if name not in infos or infos[name].state == "DEAD":
            infos[name] = info
    return infos


def dead_nodes() -> frozenset[str]:
    """Node ids Ray's GCS has declared dead."""
    nodes: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]
    return frozenset(n["NodeID"] for n in nodes if not n.get("Alive", False))


class FailoverMonitor:
    """The monitor's loop and state; :func:`monitor_actor` makes it a Ray actor."""

    def __init__(self, config: MonitorConfig) -> None:
        self._config = config
        self._detector = Detector(
            failures_to_dead=config.failures_to_dead,
            dead_after_ms=config.dead_after_ms,
            restart_grace_ms=config.restart_grace_ms,
        )
        self._watched: set[str] = set()
        self._last_node: dict[str, str] = {}
        self._handles: dict[str, Any] = {}
        self._events: list[TakeoverEvent] = []
        self._rounds = 0
        self._last_error = ""
        self._paused = False
        self._task = asyncio.get_running_loop().create_task(self._loop())

    # -- Ray methods -------------------------------------------------------------------------

    async def events(self) -> list[dict[str, Any]]:
        return [asdict(e) for e in self._events]

    async def status(self) -> dict[str, Any]:
        return {
            "rounds": self._rounds,
            "watched": sorted(self._watched),
            "dead": sorted(self._detector.dead()),
            "last_error": self._last_error,
            "paused": self._paused,
        }

    async def pause(self, paused: bool) -> None:
        """Stop (or resume) acting, e.g. during a planned drain; probing continues."""
        self._paused = paused

    async def shutdown(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    # -- the loop ----------------------------------------------------------------------------

    def _handle(self, name: str) -> Any:
        handle = self._handles.get(name)
        if handle is None:
            handle = ray.get_actor(name, namespace=self._config.namespace)
            self._handles[name] = handle
        return handle

    async def _loop(self) -> None:
        period_s = self._config.period_ms / 1000
        while True:
            started = time.monotonic()
            try:
                await self._round()
                self._last_error = ""
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._last_error = f"{type(exc).__name__}: {exc}"
                self._handles.pop(self._config.manager_name, None)
                log.warning("failover monitor: %s", self._last_error)
            self._rounds += 1
            await asyncio.sleep(max(period_s - (time.monotonic() - started), 0.01))

    async def _ping(self, name: str) -> bool:
        try:
            handle = self._handle(name)
            await asyncio.wait_for(handle.ping.remote(), self._config.probe_timeout_ms / 1000)
            return True
        except Exception:
            self._handles.pop(name, None)
            return False

    async def _round(self) -> None:
        manager = self._handle(self._config.manager_name)
        current = await asyncio.wait_for(manager.get_map.remote(), 5.0)
        self._watched.update(current.owners)
        infos, gone_nodes = await asyncio.wait_for(
            asyncio.to_thread(lambda: (actor_infos(), dead_nodes())), 5.0
        )
        names = sorted(self._watched)

        async def probe(name: str) -> bool:
            info = infos.get(name)
            if info is not None and info.state in _WAITING_STATES:
                return False  # Ray knows it is down: a ping would only wait for the timeout
            return await self._ping(name)

        results = await asyncio.gather(*(probe(n) for n in names))
        now = time.time()
        now_ms = int(time.monotonic() * 1000)
        died: list[str] = []
        returned: list[str] = []
        for name, ok in zip(names, results, strict=True):
            info = infos.get(name)
            if info is not None and info.state == "ALIVE" and info.node_id:
                self._last_node.setdefault(name, info.node_id)
                if info.node_id not in gone_nodes:
                    self._last_node[name] = info.node_id
            gone_for_good = info is not None and info.state == "DEAD"
            if gone_for_good and name not in current.owners:
                self._watched.discard(name)  # killed for good and holds nothing: forget it
                self._detector.forget(name)
                continue
            # A DEAD actor that still holds vshards (Ray could not restart it, e.g. its node is
            # gone and it was pinned there) is as dead as an owner on a dead node.
            node_alive = self._last_node.get(name) not in gone_nodes and not gone_for_good
            restarting = info is not None and info.state in _WAITING_STATES and node_alive
            change = self._detector.observe(
                name, ok=ok, node_alive=node_alive, now_ms=now_ms, restarting=restarting
            )
            if change is Transition.DIED:
                died.append(name)
            elif change is Transition.RETURNED:
                returned.append(name)
        if self._paused or not (died or returned):
            return
        dead = self._detector.dead()
        live = [n for n in names if n in self._watched and n not in dead]  # not forgotten ones
        for name in died:
            log.warning("failover monitor: owner %s is dead; moving its vshards", name)
        await self._rebalance(manager, current, live, sorted(dead), died, returned, now)

    async def _rebalance(
        self,
        manager: Any,
        current: Any,
        live: Sequence[str],
        dead: Sequence[str],
        died: Sequence[str],
        returned: Sequence[str],
        detected_at: float,
    ) -> None:
        if not live:
            self._record(died, Transition.DIED, detected_at, error="no live owner to take over")
            return
        before = current.as_dict()
        first = len(self._events)
        self._record(died, Transition.DIED, detected_at, error="pending")
        self._record(returned, Transition.RETURNED, detected_at, error="pending")
        error = ""
        version: int | None = None
        moved = 0
        try:
            if hasattr(manager, "take_over_from"):
                call = manager.take_over_from.remote(list(live), list(dead))
            else:  # an older manager: it also waits for the dead owners to acknowledge
                call = manager.set_owners.remote(list(live))
            after = await asyncio.wait_for(call, self._config.manager_call_timeout_s)
            version = after.version
            moved = sum(1 for v, o in after.as_dict().items() if before.get(v) != o)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            self._handles.pop(self._config.manager_name, None)
        published = time.time()
        del self._events[first:]
        self._record(died, Transition.DIED, detected_at, published, version, moved, error)
        self._record(returned, Transition.RETURNED, detected_at, published, version, moved, error)

    def _record(
        self,
        owners: Sequence[str],
        transition: Transition,
        detected_at: float,
        published_at: float | None = None,
        version: int | None = None,
        moved: int = 0,
        error: str = "",
    ) -> None:
        for owner in owners:
            self._events.append(
                TakeoverEvent(
                    owner, transition.value, detected_at, published_at, version, moved, error
                )
            )
        del self._events[:-_EVENTS_KEPT]


@dataclass
class MonitorHandle:
    """The running monitor's actor handle, with typed helpers for the harness and the CLI."""

    actor: Any
    events_seen: int = field(default=0)

    def events(self) -> list[TakeoverEvent]:
        raw: list[dict[str, Any]] = ray.get(self.actor.events.remote())
        return [TakeoverEvent(**e) for e in raw]


def monitor_actor() -> Any:
    return ray.remote(FailoverMonitor)


def start_monitor(
    config: MonitorConfig | None = None, *, node_id: str | None = None, soft: bool = True
) -> MonitorHandle:
    """Start (or find) the detached monitor actor; pinned to ``node_id`` when given (the head).

    ``soft=False`` keeps it there for good (the chaos harness: its head node is never lost).
    """
    config = config or MonitorConfig()
    options: dict[str, Any] = {
        "name": MONITOR_NAME,
        "namespace": config.namespace,
        "lifetime": "detached",
        "get_if_exists": True,
        "max_restarts": -1,
        "max_task_retries": 0,
        "num_cpus": 0,
        "max_concurrency": 100,
    }
    if node_id is not None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id, soft=soft)
    actor = monitor_actor().options(**options).remote(config)
    ray.get(actor.status.remote())
    return MonitorHandle(actor)


def stop_monitor(namespace: str = NAMESPACE) -> None:
    with contextlib.suppress(Exception):
        actor = ray.get_actor(MONITOR_NAME, namespace=namespace)
        with contextlib.suppress(Exception):
            ray.get(actor.shutdown.remote(), timeout=10)
        ray.kill(actor, no_restart=True)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m failover.takeover [start|status|events|stop] [--address ADDR]``.

    Starts the detached monitor on a running cluster (it outlives this process), or shows what
    it has decided. Settings (health-check timings) come from the environment (failover.config).
    """
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m failover.takeover")
    parser.add_argument("action", choices=("start", "status", "events", "stop"))
    parser.add_argument(
        "--address", default=None, help="Ray address (default $BILLING_RAY_ADDRESS)"
    )
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    ray.init(
        address=args.address or settings.ray_address or "auto",
        namespace=settings.namespace,
        log_to_driver=False,
    )
    try:
        if args.action == "start":
            node = ray.get_runtime_context().get_node_id()
            handle = start_monitor(MonitorConfig.from_settings(settings), node_id=node)
            print(json.dumps(ray.get(handle.actor.status.remote()), indent=2))
        elif args.action == "stop":
            stop_monitor(settings.namespace)
        else:
            actor = ray.get_actor(MONITOR_NAME, namespace=settings.namespace)
            method: Any = actor.status if args.action == "status" else actor.events
            print(json.dumps(ray.get(method.remote()), indent=2, default=str))
        return 0
    finally:
        ray.shutdown()


if __name__ == "__main__":
    raise SystemExit(main())
