"""Start, find and stop the shard manager and the shard owners on a running Ray cluster.

``start_cluster`` is what ``billing serve`` / ``billing demo`` call after ``ray.init``: it starts
(or finds, if already running) the detached manager and owners in the ``billing`` namespace,
reconciles the map to the requested owner set (fewest moves), and waits until every owner has
taken over and loaded its vshards. ``stop_cluster`` closes them cleanly. Ray settings follow
DESIGN.md section 7: detached, named, ``max_restarts=-1``, ``max_task_retries=0`` (the
application retries with the same idempotency key, never Ray).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import ray

from actors.manager import manager_actor
from actors.messages import OwnerStatus, ProvisionRequest, ProvisionSummary, Rejected
from actors.owner import MANAGER_NAME, NAMESPACE, OwnerConfig, owner_actor, owner_name
from sharding.shardmap import ShardMap
from sharding.vshard import VSHARD_COUNT_DEFAULT

__all__ = [
    "ClusterHandles",
    "connect_cluster",
    "provision_bulk",
    "start_cluster",
    "stop_cluster",
]


@dataclass
class ClusterHandles:
    """Handles of the running manager and owners (Ray actor handles)."""

    manager: Any
    owners: dict[str, Any] = field(default_factory=dict)  # owner name -> handle
    namespace: str = NAMESPACE

    def owner(self, name: str) -> Any:
        handle = self.owners.get(name)
        if handle is None:
            handle = ray.get_actor(name, namespace=self.namespace)
            self.owners[name] = handle
        return handle

    def get_map(self) -> ShardMap:
        shard_map: ShardMap = ray.get(self.manager.get_map.remote())
        return shard_map

    def statuses(self, timeout_s: float = 30.0) -> list[OwnerStatus]:
        refs = [h.status.remote() for h in self.owners.values()]
        statuses: list[OwnerStatus] = ray.get(refs, timeout=timeout_s)
        return statuses


def actor_options(
    name: str,
    namespace: str,
    *,
    num_cpus: float = 0.0,
    max_concurrency: int = 1000,
    node_id: str | None = None,
) -> dict[str, Any]:
    """The Ray options of every billing actor, owner or manager (DESIGN.md section 7).

    Named and detached (they outlive the process that started them), restarted by Ray forever
    (``max_restarts=-1``), and never retried by Ray (``max_task_retries=0``): a side-effecting
    call that Ray re-ran could charge twice, so the application retries against the current
    owner with the same idempotency key instead. ``node_id`` pins the actor to that node (hard
    affinity: it lives and dies with its node, as on real machines).
    """
    options: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "lifetime": "detached",
        "get_if_exists": True,
        "max_restarts": -1,
        "max_task_retries": 0,
        "num_cpus": num_cpus,
        "max_concurrency": max_concurrency,
    }
    if node_id is not None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id, soft=False)
    return options


def start_cluster(
    dsn: str,
    *,
    owners: int = 2,
    vshard_count: int = VSHARD_COUNT_DEFAULT,
    owner_num_cpus: float = 0.0,
    max_concurrency: int = 1000,
    namespace: str = NAMESPACE,
    config: OwnerConfig | None = None,
    ready_timeout_s: float = 300.0,
) -> ClusterHandles:
    """Start (or join) the manager and ``owners`` owners; return once all serve.

    ``ray.init`` must have been called. Owners named ``billing-owner-0..N-1``. When a map is
    already stored (a restart, or a different ``owners`` count than last time) the stored map is
    rebalanced to these owners with the fewest moves; the stored vshard count always wins.
    """
    if not ray.is_initialized():
        raise RuntimeError("ray.init(...) must be called before start_cluster")
    if owners < 1:
        raise ValueError(f"owners must be >= 1, got {owners}")
    if max_concurrency < 1:
        raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
    owner_config = replace(config or OwnerConfig(dsn=dsn), dsn=dsn, namespace=namespace)
    names = [owner_name(i) for i in range(owners)]
    manager = (
        manager_actor()
        .options(**actor_options(MANAGER_NAME, namespace, max_concurrency=max_concurrency))
        .remote(dsn, names, vshard_count, namespace=namespace)
    )
    if not ray.get(manager.ready.remote(ready_timeout_s)):
        status = ray.get(manager.status.remote())
        raise RuntimeError(f"shard manager did not load the map: {status['last_error']}")
    ray.get(manager.set_owners.remote(names))
    handles = ClusterHandles(manager=manager, namespace=namespace)
    cls = owner_actor()
    for name in names:
        handles.owners[name] = cls.options(
            **actor_options(
                name, namespace, num_cpus=owner_num_cpus, max_concurrency=max_concurrency
            )
        ).remote(name, owner_config)
    deadline = time.monotonic() + ready_timeout_s
    for name, handle in handles.owners.items():
        left = max(deadline - time.monotonic(), 1.0)
        if not ray.get(handle.ready.remote(left)):
            status = ray.get(handle.status.remote())
            raise RuntimeError(f"owner {name} did not take over its vshards: {status.last_error}")
    return handles


def connect_cluster(namespace: str = NAMESPACE) -> ClusterHandles:
    """Handles of an already running manager and its owners (from another process)."""
    manager = ray.get_actor(MANAGER_NAME, namespace=namespace)
    handles = ClusterHandles(manager=manager, namespace=namespace)
    shard_map = handles.get_map()
    for name in shard_map.owners:
        handles.owner(name)
    return handles


def stop_cluster(handles: ClusterHandles | None = None, *, namespace: str = NAMESPACE) -> None:
    """Close the owners' and manager's database pools, then kill the actors (no restart)."""
    if handles is None:
        try:
            handles = connect_cluster(namespace)
        except ValueError:
            return  # nothing running
    actors = [*handles.owners.values(), handles.manager]
    with contextlib.suppress(Exception):
        ray.get([a.shutdown.remote() for a in actors], timeout=30)
    for actor in actors:
        with contextlib.suppress(Exception):
            ray.kill(actor, no_restart=True)


async def provision_bulk_async(
    handles: ClusterHandles, requests: Sequence[ProvisionRequest], *, retries: int = 5
) -> ProvisionSummary:
    """Provision many subscribers through their owners (one commit per ``batch_max``).

    Requests are grouped by owner with the current map; those an owner answers NotOwner for are
    retried with a fresh map.
    """
    created = 0
    rejected: list[tuple[str, Rejected]] = []
    todo = list(requests)
    for _ in range(retries):
        shard_map: ShardMap = await handles.manager.get_map.remote()
        groups: dict[str, list[ProvisionRequest]] = {}
        for request in todo:
            groups.setdefault(shard_map.owner_of_key(request.subscriber_id), []).append(request)
        summaries: list[ProvisionSummary] = await asyncio.gather(
            *(handles.owner(name).provision_bulk.remote(group) for name, group in groups.items())
        )
        by_id = {r.subscriber_id: r for r in todo}
        todo = []
        for summary in summaries:
            created += summary.created
            rejected.extend(summary.rejected)
            todo.extend(by_id[sid] for sid in summary.not_owner)
        if not todo:
            break
    return ProvisionSummary(
        created=created,
        rejected=tuple(rejected),
        not_owner=tuple(r.subscriber_id for r in todo),
    )


def provision_bulk(
    handles: ClusterHandles, requests: Sequence[ProvisionRequest], *, retries: int = 5
) -> ProvisionSummary:
    """Synchronous :func:`provision_bulk_async` (for the CLI and tests)."""
    return asyncio.run(provision_bulk_async(handles, requests, retries=retries))
