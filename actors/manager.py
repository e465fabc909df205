"""ShardManager: the detached actor ``billing-shard-manager`` that holds the shard map and the plans.

- The map (vshard -> owner, versioned) is persisted in PostgreSQL (``Store.save_shard_map``,
  compare-and-set on the version) and cached here; front doors read it with :meth:`get_map` and
  long-poll :meth:`wait_for_version`; owners read it when they (re)start and take over their
  vshards themselves. A crashed owner restarts under the same name, so it gets the same vshards
  back (its takeover bumps their epochs); nothing in the map changes.
- :meth:`set_owners`, :meth:`take_over_from` (node loss) and :meth:`move` change the map with the fewest moves
  (:func:`sharding.shardmap.rebalance`), persist it, then tell the owners: first the ones giving
  vshards away (they drop them), then the ones receiving (they take over: epoch bump + load).
  Ownership is proven by the epochs, so a stale map anywhere costs a NotOwner and a retry only.
- Plans: :meth:`load_plan` validates a plan document, saves it (``Store.save_plan``) and tells
  every owner to reload its catalog; :meth:`list_plans` / :meth:`get_plan` read the catalog.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import ray

from actors.messages import (
    ALREADY_EXISTS,
    INVALID_ARGUMENT,
    NOT_FOUND,
    Answered,
    Rejected,
    Unavailable,
)
from actors.owner import NAMESPACE
from billing.tariff import Catalog, Plan, TariffError, builtin_catalog, load_plan
from sharding.shardmap import ShardMap, balanced_map, moved_vshards, rebalance
from sharding.store import ShardMapRecord, Store, StoreError, StoreUnavailable
from sharding.vshard import check_vshard_count

log = logging.getLogger(__name__)

_PUSH_TIMEOUT_S = 30.0  # a slow or dead owner reads the map itself when it (re)starts


def _record(m: ShardMap) -> ShardMapRecord:
    return ShardMapRecord(version=m.version, vshard_count=m.vshard_count, assignments=m.as_dict())


class ShardManager:
    """The map's one writer; :func:`manager_actor` makes it a Ray actor."""

    def __init__(
        self,
        dsn: str,
        owners: Sequence[str],
        vshard_count: int,
        *,
        namespace: str = NAMESPACE,
    ) -> None:
        check_vshard_count(vshard_count)
        if not owners:
            raise ValueError("owners must not be empty")
        self._owners = tuple(owners)
        self._vshard_count = vshard_count
        self._namespace = namespace
        self._dsn = dsn
        self._store = Store(dsn, min_size=1, max_size=2)
        self._store_open = False
        self._map: ShardMap | None = None
        self._changed = asyncio.Condition()
        self._catalog: Catalog = builtin_catalog()
        self._last_error = ""
        self._lock = asyncio.Lock()  # one map change at a time
        self._task = asyncio.get_running_loop().create_task(self._start())

    async def _start(self) -> None:
        """Open the store, migrate, load the map (or create a balanced one over the constructor's
        owners if none is stored); retry until the database answers. The stored map always wins:
        after a manager restart the map is what it was, whatever the constructor was given."""
        backoff = 0.1
        while True:
            try:
                if not self._store_open:
                    await self._store.open()
                    self._store_open = True
                await self._store.migrate()
                stored = await self._store.load_shard_map()
                if stored is None:
                    current = balanced_map(self._vshard_count, self._owners)
                    if not await self._store.save_shard_map(
                        _record(current), expected_version=None
                    ):
                        continue  # someone else created it first: load theirs
                else:
                    current = ShardMap.from_dict(
                        stored.version, stored.vshard_count, stored.assignments
                    )
                    if current.vshard_count != self._vshard_count:
                        log.warning(
                            "stored map has %d vshards, not %d: the stored count wins (it never changes)",
                            current.vshard_count,
                            self._vshard_count,
                        )
                for text in await self._store.load_plans():
                    with contextlib.suppress(ValueError):
                        self._catalog = self._catalog.with_plan(
                            load_plan(text, source="plans table")
                        )
                await self._publish(current)
                self._last_error = ""
                return
            except Exception as exc:
                self._last_error = f"{type(exc).__name__}: {exc}"
                log.warning("shard manager start: %s", self._last_error)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    async def _publish(self, current: ShardMap) -> None:
        async with self._changed:
            self._map = current
            self._changed.notify_all()

    async def _current(self) -> ShardMap:
        if self._map is None:
            async with self._changed:
                await self._changed.wait_for(lambda: self._map is not None)
        assert self._map is not None
        return self._map

    # -- the map -------------------------------------------------------------------------------

    async def ready(self, timeout_s: float = 60.0) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._current(), timeout_s)
        return self._map is not None

    async def get_map(self) -> ShardMap:
        """The current map (waits until the manager has loaded it)."""
        return await self._current()

    async def wait_for_version(self, newer_than: int, timeout_s: float) -> ShardMap:
        """Long poll: the map once its version is above ``newer_than``, or the current one at the
        timeout (bounded to 60 s)."""
        await self._current()
        with contextlib.suppress(TimeoutError):
            async with self._changed:
                await asyncio.wait_for(
                    self._changed.wait_for(
                        lambda: self._map is not None and self._map.version > newer_than
                    ),
                    min(max(timeout_s, 0.0), 60.0),
                )
        assert self._map is not None
        return self._map

    async def status(self) -> dict[str, Any]:
        current = self._map
        return {
            "map_version": current.version if current else None,
            "vshard_count": current.vshard_count if current else self._vshard_count,
            "owners": {n: len(current.vshards_of(n)) for n in current.owners} if current else {},
            "last_error": self._last_error,
        }

    async def owner_dsn(self) -> str:
        """The DSN owners use: cluster/scaleout.py starts owners on a joining node with it."""
        return self._dsn

    async def set_owners(self, owners: Sequence[str]) -> ShardMap:
        """Rebalance over ``owners`` moving the fewest vshards (scale-out, scale-in, loss)."""
        async with self._lock:
            current = await self._current()
            wanted = await self._change(current, rebalance(current, list(owners)))
            self._owners = tuple(owners)
            return wanted

    async def take_over_from(self, live: Sequence[str], dead: Sequence[str]) -> ShardMap:
        """Failover (failover/takeover.py): rebalance over ``live`` without telling ``dead``.

        A dead or frozen owner would never acknowledge the push (set_owners would wait for it);
        the takers' epoch bumps fence it out instead, and it reloads the map when it comes back.
        """
        async with self._lock:
            current = await self._current()
            wanted = rebalance(current, list(live))
            return await self._change(current, wanted, unreachable=frozenset(dead))

    async def move(self, assignments: Mapping[int, str]) -> ShardMap:
        """Move the given vshards to the given owners (a manual or planned move)."""
        async with self._lock:
            current = await self._current()
            return await self._change(current, current.with_assignments(dict(assignments)))

    async def _change(
        self, current: ShardMap, wanted: ShardMap, unreachable: frozenset[str] = frozenset()
    ) -> ShardMap:
        if wanted is current or not moved_vshards(current, wanted):
            return current
        if not await self._store.save_shard_map(_record(wanted), expected_version=current.version):
            stored = await self._store.load_shard_map()
            raise StoreError(
                f"shard map changed under the manager (stored version "
                f"{stored.version if stored else None}, expected {current.version})"
            )
        moves = moved_vshards(current, wanted)
        givers = sorted({old for old, _ in moves.values()} - unreachable)
        takers = sorted({new for _, new in moves.values()})
        # Givers drop first (their in-flight commit finishes), then takers bump epochs and load.
        await self._push(givers, wanted)
        await self._publish(wanted)
        await self._push([t for t in takers if t not in givers], wanted)
        await self._push([t for t in takers if t in givers], wanted)
        return wanted

    async def _push(self, names: Sequence[str], wanted: ShardMap) -> None:
        calls: list[Any] = []
        for name in names:
            try:
                handle = ray.get_actor(name, namespace=self._namespace)
            except ValueError:
                continue  # not running: it reads the map when it starts
            calls.append(asyncio.wait_for(handle.apply_map.remote(wanted), _PUSH_TIMEOUT_S))
        for outcome in await asyncio.gather(*calls, return_exceptions=True):
            if isinstance(outcome, BaseException):
                self._last_error = (
                    f"pushing map {wanted.version}: {type(outcome).__name__}: {outcome}"
                )
                log.warning(self._last_error)

    # -- plans -----------------------------------------------------------------------------------

    async def list_plans(self) -> list[Plan]:
        return list(self._catalog.plans())

    async def get_plan(self, plan_id: str) -> Answered | Rejected:
        if plan_id not in self._catalog:
            return Rejected(NOT_FOUND, "plan_id", f"unknown plan {plan_id!r}")
        return Answered(self._catalog.get(plan_id))

    async def load_plan(self, text: str) -> Answered | Rejected | Unavailable:
        """Validate, persist and broadcast a plan document; Answered(Plan) when every owner has it."""
        try:
            plan = load_plan(text, source="LoadPlan")
        except TariffError as exc:
            problems = exc.problems
            return Rejected(INVALID_ARGUMENT, problems[0].field if problems else "text", str(exc))
        except ValueError as exc:
            return Rejected(INVALID_ARGUMENT, "text", str(exc))
        version = max(v.version for v in plan.versions)
        try:
            await self._store.save_plan(plan.plan_id, version, text)
        except StoreUnavailable as exc:
            return Unavailable(str(exc))
        except StoreError as exc:
            return Rejected(ALREADY_EXISTS, "version", str(exc))
        self._catalog = self._catalog.with_plan(plan)
        current = await self._current()
        calls: list[Any] = []
        for name in current.owners:
            with contextlib.suppress(ValueError):
                handle = ray.get_actor(name, namespace=self._namespace)
                calls.append(asyncio.wait_for(handle.reload_plans.remote(), _PUSH_TIMEOUT_S))
        await asyncio.gather(*calls, return_exceptions=True)  # a restarting owner reads the DB
        return Answered(plan)

    async def shutdown(self) -> None:
        self._task.cancel()
        await self._store.close()


def manager_actor() -> Any:
    """The Ray actor class of :class:`ShardManager` (created with options by actors.bootstrap)."""
    return ray.remote(ShardManager)
