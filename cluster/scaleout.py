"""Elastic scale-out and scale-in: ``billing cluster status | rebalance | drain NODE``.

- **status**: the Ray nodes (id, address, alive, resources), the owner actors (node, pid, ready,
  vshards held, last error) and the shard map version.
- **rebalance**: start owners on every live node that has fewer than ``BILLING_OWNERS_PER_NODE``
  (each pinned to its node with a hard ``NodeAffinitySchedulingStrategy``: an owner lives and dies
  with its node), then move their share of vshards to them in small rounds.
- **drain NODE**: move every vshard away from the owners on NODE in small rounds, then stop those
  owners, so the node can be removed without a failed request. The node is marked drained (GCS
  key-value store): rebalances leave it empty until it is removed.

A round is one :meth:`actors.manager.ShardManager.move`: the giving owners drop the round's
vshards (their in-flight commit finishes first), the map is persisted and published, the taking
owners bump the vshards' epochs and load them. A request for a moving vshard gets NotOwner and is
retried by the front door at the new owner, which holds it for a bounded time while it loads: it
waits, it does not fail. Epoch fencing (DESIGN.md invariant 5) keeps two owners from ever writing
one vshard, whatever the map says. The command and its output are in :mod:`cluster.scaleout_cli`.
Which vshards move and in which rounds is pure planning in
:mod:`failover.plan`; the pure helpers here only pick nodes and owner names.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from cluster.bootstrap import StartupError

OWNER_NAME = re.compile(r"^billing-owner-(\d+)$")
PER_ROUND_DEFAULT = 8


# ---------------------------------------------------------------------------------------------
# Values and pure helpers
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """One Ray node as the GCS reports it."""

    node_id: str
    address: str
    alive: bool
    resources: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class OwnerInfo:
    """One owner actor: where it runs (GCS) and what it holds (its own status, when it answers)."""

    name: str
    node_id: str
    pid: int
    state: str  # Ray actor state: ALIVE, RESTARTING, DEAD, ...
    ready: bool
    vshards: int  # vshards the map gives it
    last_error: str


@dataclass(frozen=True, slots=True)
class ClusterStatus:
    map_version: int
    vshard_count: int
    nodes: tuple[NodeInfo, ...]
    owners: tuple[OwnerInfo, ...]

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Round:
    """One finished move round: how many vshards, how long it took, the map version after it."""

    index: int  # 1-based
    rounds: int
    vshards: int
    seconds: float
    map_version: int


@dataclass(frozen=True, slots=True)
class MoveReport:
    started_owners: tuple[str, ...]
    stopped_owners: tuple[str, ...]
    rounds: tuple[Round, ...]
    map_version: int
    warnings: tuple[str, ...] = ()

    @property
    def moved(self) -> int:
        return sum(r.vshards for r in self.rounds)


def owners_to_start(
    alive_nodes: Sequence[str], owners_on: Mapping[str, int], owners_per_node: int
) -> dict[str, int]:
    """Node id -> how many owners to start there so every live node has ``owners_per_node``."""
    if owners_per_node < 1:
        raise ValueError(f"owners_per_node={owners_per_node} must be >= 1")
    wanted = {n: owners_per_node - owners_on.get(n, 0) for n in alive_nodes}
    return {n: k for n, k in wanted.items() if k > 0}


def new_owner_indices(taken: Collection[str], count: int) -> list[int]:
    """``count`` owner indices above every index already used (live, dead or in the map).

    Never reusing a name keeps a new owner from being confused with a dead one's history.
    """
    used = [int(m.group(1)) for name in taken if (m := OWNER_NAME.match(name))]
    first = max(used, default=-1) + 1
    return list(range(first, first + count))


def match_node(nodes: Sequence[NodeInfo], spec: str) -> NodeInfo:
    """The one node whose id or address starts with ``spec``; a clear error otherwise."""
    if not spec:
        raise StartupError("NODE is empty: give a node id or address (see billing cluster status)")
    hits = [n for n in nodes if n.node_id.startswith(spec) or n.address.startswith(spec)]
    exact = [n for n in hits if spec in (n.node_id, n.address)]
    alive = [n for n in (exact or hits) if n.alive]
    chosen = alive or exact or hits
    if not chosen:
        raise StartupError(f"no Ray node has an id or address starting with {spec!r}")
    if len(chosen) > 1:
        ids = ", ".join(f"{n.node_id[:12]} ({n.address})" for n in chosen)
        raise StartupError(f"NODE {spec!r} matches several nodes: {ids}; give more of the id")
    return chosen[0]


# ---------------------------------------------------------------------------------------------
# Reading the cluster
# ---------------------------------------------------------------------------------------------


def list_nodes() -> list[NodeInfo]:
    import ray

    raw: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]
    nodes = [
        NodeInfo(
            node_id=str(n["NodeID"]),
            address=str(n.get("NodeManagerAddress", "")),
            alive=bool(n.get("Alive", False)),
            resources={k: float(v) for k, v in (n.get("Resources") or {}).items()},
        )
        for n in raw
    ]
    # A node id can be reported twice (dead, then alive again): the live entry wins.
    unique: dict[str, NodeInfo] = {}
    for node in nodes:
        if node.node_id not in unique or node.alive:
            unique[node.node_id] = node
    return sorted(unique.values(), key=lambda n: (not n.alive, n.address, n.node_id))


def _manager(namespace: str) -> Any:
    import ray

    from actors.owner import MANAGER_NAME

    try:
        return ray.get_actor(MANAGER_NAME, namespace=namespace)
    except ValueError:
        raise StartupError(
            f"no shard manager in Ray namespace {namespace!r}: is `billing serve` running on"
            " this cluster (check --address)?"
        ) from None


def collect_status(namespace: str, *, timeout_s: float = 10.0) -> ClusterStatus:
    """Nodes, owners and the map, read from the GCS, the manager and each live owner."""
    import ray
    from ray.exceptions import GetTimeoutError, RayError

    from failover.takeover import actor_infos

    shard_map = ray.get(_manager(namespace).get_map.remote(), timeout=timeout_s)
    infos = actor_infos()
    names = sorted(
        {n for n, i in infos.items() if i.state != "DEAD"} | set(shard_map.owners),
        key=_owner_key,
    )
    owners = []
    for name in names:
        info = infos.get(name)
        ready, error = False, ""
        if info is not None and info.state == "ALIVE":
            try:
                handle = ray.get_actor(name, namespace=namespace)
                status: Any = ray.get(handle.status.remote(), timeout=timeout_s)
                ready, error = status.ready, status.last_error
            except (GetTimeoutError, RayError, ValueError) as exc:
                error = f"status: {type(exc).__name__}"
        owners.append(
            OwnerInfo(
                name=name,
                node_id=info.node_id if info else "",
                pid=info.pid if info else 0,
                state=info.state if info else "UNKNOWN",
                ready=ready,
                vshards=len(shard_map.vshards_of(name)),
                last_error=error,
            )
        )
    return ClusterStatus(
        map_version=shard_map.version,
        vshard_count=shard_map.vshard_count,
        nodes=tuple(list_nodes()),
        owners=tuple(owners),
    )


def _owner_key(name: str) -> tuple[int, str]:
    m = OWNER_NAME.match(name)
    return (int(m.group(1)) if m else 1 << 30, name)


# ---------------------------------------------------------------------------------------------
# Acting on it
# ---------------------------------------------------------------------------------------------


def start_owners(
    node_id: str, names: Sequence[str], namespace: str, *, ready_timeout_s: float = 120.0
) -> list[Any]:
    """Start owners pinned to ``node_id`` (hard affinity) with the manager's DSN; wait until up.

    They hold no vshard yet (the map does not name them), so they are ready at once.
    """
    import ray

    from actors.bootstrap import actor_options
    from actors.owner import OwnerConfig, owner_actor

    dsn: str = ray.get(_manager(namespace).owner_dsn.remote(), timeout=30)
    config = OwnerConfig(dsn=dsn, namespace=namespace)
    handles = [
        owner_actor()
        .options(**actor_options(name, namespace, node_id=node_id))
        .remote(name, config)
        for name in names
    ]
    for name, handle in zip(names, handles, strict=True):
        if not ray.get(handle.ready.remote(ready_timeout_s), timeout=ready_timeout_s + 10):
            raise StartupError(f"owner {name} on node {node_id[:12]} did not start")
    return handles


def move_in_rounds(
    namespace: str,
    target_of: Callable[[Any], Any],
    per_round: int,
    on_round: Callable[[Round], None] | None = None,
) -> list[Round]:
    """Move from the manager's current map to ``target_of(current)`` in rounds of ``per_round``.

    The rounds come from :func:`failover.plan.rounds`; each is one manager ``move`` (drain,
    epoch bump + load, publish), which returns once the takers have loaded.
    """
    import ray

    from failover.plan import rounds
    from sharding.shardmap import moved_vshards

    manager = _manager(namespace)
    current = ray.get(manager.get_map.remote(), timeout=30)
    target = target_of(current)
    steps = rounds(current, target, per_round) if target is not None else []
    done: list[Round] = []
    before = current
    for index, step in enumerate(steps, start=1):
        chunk = {v: new for v, (_old, new) in moved_vshards(before, step).items()}
        started = time.perf_counter()
        after = ray.get(manager.move.remote(chunk), timeout=300)
        result = Round(index, len(steps), len(chunk), time.perf_counter() - started, after.version)
        done.append(result)
        if on_round is not None:
            on_round(result)
        before = step
    return done


def _drained_key(namespace: str, node_id: str) -> bytes:
    return f"{namespace}:drained:{node_id}".encode()


def mark_drained(namespace: str, node_id: str) -> None:
    """Remember (in the GCS key-value store) that ``node_id`` was drained: rebalance leaves it
    empty until it is removed. A machine that rejoins gets a new node id, so it is used again."""
    from ray.experimental import internal_kv

    internal_kv._internal_kv_put(_drained_key(namespace, node_id), b"1", overwrite=True)


def is_drained(namespace: str, node_id: str) -> bool:
    from ray.experimental import internal_kv

    return bool(internal_kv._internal_kv_exists(_drained_key(namespace, node_id)))


def pending_nodes(
    namespace: str, owners_per_node: int, infos: Mapping[str, Any] | None = None
) -> dict[str, int]:
    """Live, not drained node id -> owners to start there to reach ``owners_per_node``."""
    from failover.takeover import actor_infos

    if infos is None:
        infos = actor_infos()
    alive = [n.node_id for n in list_nodes() if n.alive and not is_drained(namespace, n.node_id)]
    counts: dict[str, int] = {}
    for info in infos.values():
        if info.state == "ALIVE" and info.node_id:
            counts[info.node_id] = counts.get(info.node_id, 0) + 1
    return owners_to_start(alive, counts, owners_per_node)


def watch(
    check: Callable[[], bool],
    act: Callable[[], None],
    interval_s: float,
    stop: Callable[[float], bool],
) -> int:
    """Automatic scale-out: every ``interval_s``, when ``check()`` (a node joined and lacks
    owners) run ``act()`` (a rebalance). ``stop(timeout)`` waits and says when to end (e.g.
    ``threading.Event.wait``). A failed round is reported by ``act`` and retried next time.
    Returns how many rebalances ran."""
    if not interval_s > 0:
        raise ValueError(f"interval_s={interval_s} must be > 0")
    ran = 0
    while True:
        if check():
            act()
            ran += 1
        if stop(interval_s):
            return ran


def rebalance(
    namespace: str,
    owners_per_node: int,
    per_round: int = PER_ROUND_DEFAULT,
    *,
    on_started: Callable[[str, list[str]], None] | None = None,
    on_plan: Callable[[int], None] | None = None,
    on_round: Callable[[Round], None] | None = None,
) -> MoveReport:
    """Start owners on under-filled live nodes, then balance the vshards over every live owner."""
    import ray

    from actors.owner import owner_name
    from failover.plan import plan_join
    from failover.takeover import actor_infos
    from sharding.shardmap import moved_vshards

    infos = actor_infos()
    plan = pending_nodes(namespace, owners_per_node, infos)
    current = ray.get(_manager(namespace).get_map.remote(), timeout=30)
    taken: set[str] = set(infos) | set(current.owners)
    started: list[str] = []
    for node_id, count in sorted(plan.items()):
        names = [owner_name(i) for i in new_owner_indices(taken, count)]
        taken.update(names)
        start_owners(node_id, names, namespace)
        started.extend(names)
        if on_started is not None:
            on_started(node_id, names)
    live = {
        n
        for n, i in actor_infos().items()
        if i.state == "ALIVE" and not is_drained(namespace, i.node_id)
    }
    owners = sorted(set(current.owners) | live, key=_owner_key)

    def target_of(now: Any) -> Any:
        target = plan_join(now, owners)
        if on_plan is not None:
            on_plan(len(moved_vshards(now, target)) if target is not None else 0)
        return target

    done = move_in_rounds(namespace, target_of, per_round, on_round)
    final = ray.get(_manager(namespace).get_map.remote(), timeout=30)
    return MoveReport(tuple(started), (), tuple(done), final.version)


def drain(
    namespace: str,
    node_spec: str,
    per_round: int = PER_ROUND_DEFAULT,
    *,
    on_plan: Callable[[int], None] | None = None,
    on_round: Callable[[Round], None] | None = None,
) -> MoveReport:
    """Move every vshard off the owners on the node ``node_spec`` names, then stop them."""
    import ray

    from failover.plan import plan_takeover
    from failover.takeover import actor_infos
    from sharding.shardmap import moved_vshards

    node = match_node(list_nodes(), node_spec)
    infos = actor_infos()
    leaving = sorted(
        (n for n, i in infos.items() if i.state != "DEAD" and i.node_id == node.node_id),
        key=_owner_key,
    )

    def target_of(now: Any) -> Any:
        try:
            target = plan_takeover(now, leaving)
        except ValueError as exc:
            raise StartupError(
                f"cannot drain node {node.node_id[:12]} ({node.address}): {exc};"
                " add a node and run billing cluster rebalance first"
            ) from None
        if on_plan is not None:
            on_plan(len(moved_vshards(now, target)) if target is not None else 0)
        return target

    target_of(ray.get(_manager(namespace).get_map.remote(), timeout=30))  # fails before marking
    # Marked first: a rebalance running meanwhile (--watch) neither refills the node nor hands
    # vshards back to its owners.
    mark_drained(namespace, node.node_id)
    done = move_in_rounds(namespace, target_of, per_round, on_round)
    final = ray.get(_manager(namespace).get_map.remote(), timeout=30)
    still = [n for n in leaving if final.vshards_of(n)]
    if still:  # the map changed under us (a takeover): stopping them now would fail requests
        raise StartupError(f"owners {still} still hold vshards after the drain; run it again")
    for name in leaving:
        stop_owner(name, namespace)
    others = sorted(
        n
        for n, i in actor_infos("billing-").items()
        if i.state != "DEAD" and i.node_id == node.node_id and n not in leaving
    )
    warnings = tuple(
        f"{n} also runs on this node: Ray restarts it elsewhere when the node goes (a short"
        " pause, nothing lost)"
        for n in others
    )
    return MoveReport((), tuple(leaving), tuple(done), final.version, warnings)


def stop_owner(name: str, namespace: str) -> None:
    """Close an owner holding no vshard (its pool), then kill it for good (no restart)."""
    import ray

    try:
        handle = ray.get_actor(name, namespace=namespace)
    except ValueError:
        return
    with contextlib.suppress(Exception):
        ray.get(handle.shutdown.remote(), timeout=30)
    with contextlib.suppress(Exception):
        ray.kill(handle, no_restart=True)
