"""How a front door reaches the Ray side: owner actors, the shard manager, the plan catalog.

Thin adapters behind the front door's seams (:class:`cluster.frontdoor.MapSource`,
:class:`~cluster.frontdoor.OwnerDirectory`, :class:`~cluster.frontdoor.PlanService`), so the
front door's logic is tested against fakes and runs against Ray unchanged.

Charging batches reach an owner one of two ways (``transport``):

- ``"direct"`` (the default): :class:`DirectOwnerClient`, one authenticated TCP connection per
  owner (actors/channel.py), calls multiplexed by id. The owner's ``endpoint()`` Ray method
  hands out its address and per-incarnation secret; after a broken connection the client asks
  again (a restarted owner listens on a new port with a new secret; a dead one fails the call).
- ``"ray"``: :class:`RayOwnerClient`, one Ray actor call per batch (the baseline).

Both keep the semantics of a Ray call with ``max_task_retries=0`` (DESIGN.md section 7: with Ray
retries on, 1 in 1,000 side-effecting calls ran twice): a batch is sent once; a failure raises
(the batcher answers Unavailable) and the front door retries with the same idempotency key.
Handles are looked up by name (owners are named and detached) and looked up again after a
failure, so an owner that was restarted or re-created is found.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import ray
from grpc import StatusCode

from actors import tracing
from actors.channel import FRAME_MAX_DEFAULT, ChannelConnection, Endpoint
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
from cluster.telemetry import current as current_telemetry
from sharding.shardmap import ShardMap

NAMESPACE = "billing"
MANAGER_NAME = "billing-shard-manager"
TRANSPORTS = ("direct", "ray")
TRANSPORT_DEFAULT = "direct"
CALL_TIMEOUT_S_DEFAULT = 30.0  # a batch unanswered this long: the connection is declared dead
CONNECT_TIMEOUT_S_DEFAULT = 5.0  # endpoint() over Ray + TCP connect + handshake


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

    async def close(self) -> None:
        """Nothing to close: Ray owns the connections."""


EndpointSource = Callable[[], Awaitable[Endpoint]]


class DirectOwnerClient:
    """Submits micro-batches to one owner over its direct channel (actors/channel.py).

    One connection, opened on first use and shared by every batch in flight. A connection that
    breaks, or a batch unanswered within ``call_timeout_s``, fails every batch in flight on it
    (raised: the batcher answers Unavailable, the front door retries with the same key). The next
    batch asks the owner for its endpoint again through Ray and connects anew, within
    ``connect_timeout_s`` (a frozen owner makes that time out; a dead one makes the Ray call
    fail). A batch is never sent twice by this client. Only this owner's batches wait on its
    connection: a stuck owner does not hold up the others.
    """

    def __init__(
        self,
        name: str,
        namespace: str = NAMESPACE,
        *,
        endpoint: EndpointSource | None = None,
        call_timeout_s: float = CALL_TIMEOUT_S_DEFAULT,
        connect_timeout_s: float = CONNECT_TIMEOUT_S_DEFAULT,
        frame_max: int = FRAME_MAX_DEFAULT,
    ) -> None:
        if not call_timeout_s > 0 or not connect_timeout_s > 0:
            raise ValueError(
                f"call_timeout_s and connect_timeout_s must be > 0,"
                f" got {call_timeout_s}, {connect_timeout_s}"
            )
        self._name = name
        self._namespace = namespace
        self._endpoint = endpoint or self._ray_endpoint
        self._call_timeout_s = call_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._frame_max = frame_max
        self._handle: Any = None
        self._connection: ChannelConnection | None = None
        self._connecting: asyncio.Future[ChannelConnection] | None = None
        self.connects = 0  # connections opened (a reconnect after every break)

    async def submit(self, requests: list[OwnerRequest]) -> list[OwnerReply]:
        connection = self._connection
        if connection is None or connection.closed:
            connection = await self._connect()  # nothing sent yet: connecting is safe
        # A tracing front door sends its batch span's context along (actors/tracing.py).
        trace = tracing.inject() if current_telemetry().enabled else None
        replies: list[OwnerReply] = await connection.call(requests, self._call_timeout_s, trace)
        return replies

    async def _connect(self) -> ChannelConnection:
        """The live connection, opening one if needed (one attempt shared by every caller)."""
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._open())
            self._connecting.add_done_callback(self._connect_done)
        return await asyncio.shield(self._connecting)

    def _connect_done(self, future: asyncio.Future[ChannelConnection]) -> None:
        self._connecting = None
        if not future.cancelled():
            future.exception()  # retrieved here: every waiter may have left

    async def _open(self) -> ChannelConnection:
        async with asyncio.timeout(self._connect_timeout_s):
            endpoint = await self._endpoint()
            connection = await ChannelConnection.open(
                endpoint, timeout_s=self._connect_timeout_s, frame_max=self._frame_max
            )
        old, self._connection = self._connection, connection
        self.connects += 1
        if old is not None:
            await old.close()
        return connection

    async def _ray_endpoint(self) -> Endpoint:
        """The owner's endpoint and this incarnation's secret, over its Ray handle."""
        if self._handle is None:
            self._handle = await _actor(self._name, self._namespace)
        try:
            endpoint: Endpoint = await self._handle.endpoint.remote()
        except BaseException:
            self._handle = None  # look the actor up again next time (it may be re-created)
            raise
        return endpoint

    async def close(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
        if self._connection is not None:
            await self._connection.close()
            self._connection = None


class DirectOwnerDirectory:
    """One :class:`DirectOwnerClient` (one connection) per owner."""

    def __init__(self, namespace: str = NAMESPACE, **options: Any) -> None:
        self._namespace = namespace
        self._options = options
        self._clients: dict[str, DirectOwnerClient] = {}

    def client(self, owner: str) -> DirectOwnerClient:
        client = self._clients.get(owner)
        if client is None:
            client = DirectOwnerClient(owner, self._namespace, **self._options)
            self._clients[owner] = client
        return client

    def connects(self) -> dict[str, int]:
        """Connections opened per owner so far (1 + reconnects after breaks)."""
        return {name: client.connects for name, client in self._clients.items()}

    async def close(self) -> None:
        for client in list(self._clients.values()):
            with contextlib.suppress(Exception):
                await client.close()


def owner_directory(
    transport: str, namespace: str = NAMESPACE
) -> RayOwnerDirectory | DirectOwnerDirectory:
    """The owner directory of ``transport`` ("direct" or "ray")."""
    if transport == "direct":
        return DirectOwnerDirectory(namespace)
    if transport == "ray":
        return RayOwnerDirectory(namespace)
    raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}, got {transport!r}")


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
