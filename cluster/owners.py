"""How a front door reaches the Ray side: owner actors, the shard manager, the plan catalog.

Thin adapters behind the front door's seams (:class:`cluster.frontdoor.MapSource`,
:class:`~cluster.frontdoor.OwnerDirectory`, :class:`~cluster.frontdoor.PlanService`), so the
front door's logic is tested against fakes and runs against Ray unchanged.

Charging calls use ``max_task_retries=0`` (DESIGN.md section 7: with Ray retries on, 1 in 1,000
side-effecting calls ran twice); the front door itself retries with the same idempotency key.
Handles are looked up by name (owners are named and detached) and looked up again after a
failure, so an owner that was restarted or re-created is found.
"""

from __future__ import annotations

import asyncio
from typing import Any

import ray
from grpc import StatusCode

from actors.messages import (
    INVALID_ARGUMENT,
    NOT_FOUND,
    Answered,
    OwnerReply,
    OwnerRequest,
    PickledBatch,
    Rejected,
    Unavailable,
)
from billing.tariff import Plan, describe_plan
from cluster.convert import ValidationError
from cluster.frontdoor import PlanError, PlanInfo
from sharding.shardmap import ShardMap

NAMESPACE = "billing"
MANAGER_NAME = "billing-shard-manager"


async def _actor(name: str, namespace: str) -> Any:
    return await asyncio.to_thread(ray.get_actor, name, namespace=namespace)


class RayOwnerClient:
    """Submits micro-batches to one named owner actor."""

    def __init__(self, name: str, namespace: str = NAMESPACE) -> None:
        self._name = name
        self._namespace = namespace
        self._method: Any = None

    async def submit(self, requests: list[OwnerRequest]) -> list[OwnerReply]:
        if self._method is None:
            handle = await _actor(self._name, self._namespace)
            self._method = handle.submit.options(max_task_retries=0)
        try:
            replies: list[OwnerReply] = await self._method.remote(PickledBatch(requests))
        except Exception:
            self._method = None  # look the actor up again next time (it may be re-created)
            raise
        return replies


class RayOwnerDirectory:
    def __init__(self, namespace: str = NAMESPACE) -> None:
        self._namespace = namespace
        self._clients: dict[str, RayOwnerClient] = {}

    def client(self, owner: str) -> RayOwnerClient:
        client = self._clients.get(owner)
        if client is None:
            client = self._clients[owner] = RayOwnerClient(owner, self._namespace)
        return client


class RayMapSource:
    """The shard manager actor: the current map, and a long poll for a newer one."""

    def __init__(self, name: str = MANAGER_NAME, namespace: str = NAMESPACE) -> None:
        self._name = name
        self._namespace = namespace
        self._handle: Any = None

    async def manager(self) -> Any:
        if self._handle is None:
            self._handle = await _actor(self._name, self._namespace)
        return self._handle

    async def _call(self, method: str, *args: Any) -> Any:
        handle = await self.manager()
        try:
            return await getattr(handle, method).remote(*args)
        except Exception:
            self._handle = None
            raise

    async def get_map(self) -> ShardMap:
        shard_map: ShardMap = await self._call("get_map")
        return shard_map

    async def wait_for_version(self, newer_than: int, timeout_s: float) -> ShardMap:
        shard_map: ShardMap = await self._call("wait_for_version", newer_than, timeout_s)
        return shard_map


def plan_info(plan: Plan) -> PlanInfo:
    """The Tariffs service's view of a domain plan (its latest version)."""
    latest = plan.versions[-1]
    return PlanInfo(
        plan_id=plan.plan_id,
        name=plan.name,
        description=plan.description,
        currency=latest.currency,
        payment_mode=latest.payment_mode,
        latest_version=latest.version,
        latest_effective_from=latest.effective_from,
        details=describe_plan(plan),
    )


class RayPlanService:
    """Plans through the shard manager: the built-in templates plus the plans it persisted.

    LoadPlan: the manager validates, persists and tells every owner to reload its catalog; a bad
    document comes back as INVALID_ARGUMENT naming the field.
    """

    def __init__(self, maps: RayMapSource) -> None:
        self._maps = maps

    async def list_plans(self) -> list[PlanInfo]:
        plans: list[Plan] = await self._maps._call("list_plans")
        return [plan_info(plan) for plan in sorted(plans, key=lambda p: p.plan_id)]

    async def get_plan(self, plan_id: str) -> PlanInfo:
        return plan_info(self._payload(await self._maps._call("get_plan", plan_id)))

    async def load_plan(self, text: str) -> PlanInfo:
        return plan_info(self._payload(await self._maps._call("load_plan", text)))

    @staticmethod
    def _payload(reply: Answered | Rejected | Unavailable) -> Plan:
        if isinstance(reply, Answered):
            plan: Plan = reply.payload  # type: ignore[assignment]
            return plan
        if isinstance(reply, Rejected):
            if reply.code == INVALID_ARGUMENT:
                raise ValidationError(reply.field or "text", reply.message)
            status = StatusCode.NOT_FOUND if reply.code == NOT_FOUND else StatusCode.ALREADY_EXISTS
            text = f"{reply.field}: {reply.message}" if reply.field else reply.message
            raise PlanError(status, text)
        raise PlanError(StatusCode.UNAVAILABLE, reply.message)
