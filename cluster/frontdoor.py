"""The gRPC front door: validate, route by subscriber to the owner of its vshard, answer.

DESIGN.md section 4. Per request: :mod:`cluster.convert` validates and translates (bad input ->
INVALID_ARGUMENT naming the field); the :class:`Dispatcher` computes the vshard, finds the owner
in its cached :class:`~sharding.shardmap.ShardMap` and puts the request in that owner's
:class:`~cluster.batching.OwnerBatcher` (one batch in flight per owner). The owner answers only
after its group commit (invariant 2), so an answer the front door relays is durable.

Replies and what the front door does with them:
- ``NotOwner``: refresh the map from the manager (to at least the version named) and send the
  same request (same idempotency key) to the new owner;
- ``Unavailable`` or a failed Ray call: nothing acknowledged; retry with the same key with a
  short backoff while the deadline allows, then gRPC UNAVAILABLE (the client may retry: the key
  makes it harmless, invariant 3);
- a full owner queue: RESOURCE_EXHAUSTED at once (bounded everything, invariant 6);
- the client's deadline (or ``request_timeout_s`` when it set none) bounds the whole attempt.

The front door keeps no state but a cache of the map: several may run side by side on different
ports or machines (``billing frontdoor --port ...``). It reaches owners, the manager and the plan
catalog through small protocols (:class:`OwnerDirectory`, :class:`MapSource`,
:class:`PlanService`) so it is tested against in-process fakes as well as real Ray actors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any, NoReturn, Protocol, TypeVar, cast

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from actors.messages import (
    ALREADY_EXISTS,
    FAILED_PRECONDITION,
    INVALID_ARGUMENT,
    NOT_FOUND,
    Answered,
    BalanceRequest,
    ChargeRequest,
    NotOwner,
    OwnerReply,
    OwnerRequest,
    ProvisionRequest,
    QueryRequest,
    Rejected,
    SubscriberView,
    Unavailable,
)
from billing.accounts import BalanceView
from billing.protocol import BalanceResult, CreditControlAnswer, CreditControlRequest, ResultCode
from cluster import convert
from cluster.batching import (
    BATCH_MAX_DEFAULT,
    HOLD_MIN_DEFAULT,
    HOLD_S_DEFAULT,
    HOLD_TARGET_DEFAULT,
    MAX_IN_FLIGHT_DEFAULT,
    QUEUE_MAX_DEFAULT,
    BatchRecord,
    Deadlines,
    OwnerBatcher,
    OwnerClient,
    QueueFull,
    check_hold,
)
from cluster.convert import ValidationError
from cluster.pb import billing_pb2 as pb
from cluster.pb import billing_pb2_grpc as pb_grpc
from cluster.telemetry import Telemetry
from cluster.telemetry import current as current_telemetry
from sharding.shardmap import ShardMap
from sharding.vshard import vshard_of

log = logging.getLogger(__name__)
_T = TypeVar("_T")

REQUEST_TIMEOUT_S_DEFAULT = 10.0
STREAM_IN_FLIGHT_MAX = 1024
BATCH_REQUESTS_MAX = 1000
NOT_OWNER_RETRIES_MAX = 16
BACKOFF_S_MIN = 0.005
BACKOFF_S_MAX = 0.25
MAP_POLL_S = 30.0


# ---------------------------------------------------------------------------------------------
# Seams
# ---------------------------------------------------------------------------------------------


class MapSource(Protocol):
    """The shard manager as the front door sees it."""

    async def get_map(self) -> ShardMap: ...

    async def wait_for_version(self, newer_than: int, timeout_s: float) -> ShardMap: ...


class OwnerDirectory(Protocol):
    """Owner actor name -> a client that submits micro-batches to it."""

    def client(self, owner: str) -> OwnerClient: ...


@dataclass(frozen=True, slots=True)
class PlanInfo:
    """What the Tariffs service shows of a plan."""

    plan_id: str
    name: str
    description: str
    currency: str
    payment_mode: Any  # billing.protocol.PaymentMode
    latest_version: int
    latest_effective_from: datetime
    details: str = ""


class PlanError(Exception):
    """A plan request failed: ``code`` is a gRPC status code, the message names what."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class PlanService(Protocol):
    """The tariff catalog: list, show, and load (persisted and broadcast to the owners)."""

    async def list_plans(self) -> list[PlanInfo]: ...

    async def get_plan(self, plan_id: str) -> PlanInfo: ...

    async def load_plan(self, text: str) -> PlanInfo: ...


# ---------------------------------------------------------------------------------------------
# Errors the dispatcher raises (each maps to one gRPC status)
# ---------------------------------------------------------------------------------------------


class DispatchError(Exception):
    code = grpc.StatusCode.UNKNOWN
    result = ResultCode.UNABLE_TO_COMPLY


class Overloaded(DispatchError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    result = ResultCode.TOO_BUSY


class NoDurableAnswer(DispatchError):
    code = grpc.StatusCode.UNAVAILABLE
    result = ResultCode.UNABLE_TO_COMPLY


class DeadlineExceeded(DispatchError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    result = ResultCode.UNABLE_TO_COMPLY


# ---------------------------------------------------------------------------------------------
# Dispatcher: routing, batching and retries, independent of gRPC
# ---------------------------------------------------------------------------------------------


class _DeadlinePassed(Exception):
    """Set on a request's future when its deadline passes before the owner answered."""


def _expire(future: asyncio.Future[OwnerReply]) -> None:
    if not future.done():
        future.set_exception(_DeadlinePassed())


@dataclass(slots=True)
class DispatchStats:
    requests: int = 0
    not_owner_retries: int = 0
    unavailable_retries: int = 0
    overloaded: int = 0
    map_refreshes: int = 0
    batches: int = 0
    batched_requests: int = 0
    by_owner_batches: dict[str, int] = field(default_factory=dict)


class Dispatcher:
    """Routes owner requests through per-owner batchers; retries as the module docstring says."""

    def __init__(
        self,
        maps: MapSource,
        owners: OwnerDirectory,
        *,
        queue_max: int = QUEUE_MAX_DEFAULT,
        batch_max: int = BATCH_MAX_DEFAULT,
        max_in_flight: int = MAX_IN_FLIGHT_DEFAULT,
        request_timeout_s: float = REQUEST_TIMEOUT_S_DEFAULT,
        telemetry: Telemetry | None = None,
        hold_s: float = HOLD_S_DEFAULT,
        hold_min: int = HOLD_MIN_DEFAULT,
        hold_target: int = HOLD_TARGET_DEFAULT,
    ) -> None:
        check_hold(hold_s, hold_min, hold_target)  # fail now, not at the first request
        self._maps = maps
        self._owners = owners
        self._queue_max = queue_max
        self._batch_max = batch_max
        self._max_in_flight = max_in_flight
        self._hold_s = hold_s
        self._hold_min = hold_min
        self._hold_target = hold_target
        self.request_timeout_s = request_timeout_s
        self._telemetry = telemetry or current_telemetry()
        self._map: ShardMap | None = None
        self._batchers: dict[str, OwnerBatcher] = {}
        self._refreshing: asyncio.Future[ShardMap] | None = None
        self._poller: asyncio.Task[None] | None = None
        # Every attempt's deadline, on one loop timer (cluster/batching.py).
        self._deadlines: Deadlines[OwnerReply] = Deadlines(_expire)
        self.stats = DispatchStats()
        self._telemetry.observe_queues(self.queue_depths)

    @property
    def owners(self) -> OwnerDirectory:
        return self._owners

    @property
    def shard_map(self) -> ShardMap:
        if self._map is None:
            raise RuntimeError("dispatcher not started: no shard map yet")
        return self._map

    async def start(self) -> None:
        """Fetch the map and keep it fresh by long-polling the manager."""
        self._map = await self._maps.get_map()
        self._poller = asyncio.create_task(self._poll_map(), name="shard-map-poll")

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        for batcher in list(self._batchers.values()):
            await batcher.close()
        self._deadlines.close()
        close_owners = getattr(self._owners, "close", None)  # connections of the direct channel
        if close_owners is not None:
            await close_owners()

    def queue_depths(self) -> dict[str, int]:
        return {name: batcher.depth for name, batcher in self._batchers.items()}

    async def _poll_map(self) -> None:
        while True:
            try:
                newer = await self._maps.wait_for_version(self.shard_map.version, MAP_POLL_S)
                self._adopt(newer)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # manager restarting: try again shortly
                log.debug("shard map poll failed: %r", error)
                await asyncio.sleep(1.0)

    def _adopt(self, candidate: ShardMap) -> None:
        if self._map is None or candidate.version > self._map.version:
            self._map = candidate

    async def refresh_map(self, at_least: int) -> ShardMap:
        """Get a map of version >= ``at_least`` (one fetch shared by all waiting callers)."""
        if self.shard_map.version >= at_least:
            return self.shard_map
        if self._refreshing is None:
            self._refreshing = asyncio.ensure_future(self._fetch_map(at_least))
            self._refreshing.add_done_callback(self._refresh_done)
        return await asyncio.shield(self._refreshing)

    def _refresh_done(self, _future: asyncio.Future[ShardMap]) -> None:
        self._refreshing = None

    async def _fetch_map(self, at_least: int) -> ShardMap:
        self.stats.map_refreshes += 1
        fresh = await self._maps.get_map()
        if fresh.version < at_least:
            fresh = await self._maps.wait_for_version(fresh.version, 1.0)
        self._adopt(fresh)
        return self.shard_map

    def _batcher(self, owner: str) -> OwnerBatcher:
        batcher = self._batchers.get(owner)
        if batcher is None:
            batcher = OwnerBatcher(
                owner,
                self._owners.client(owner),
                queue_max=self._queue_max,
                batch_max=self._batch_max,
                max_in_flight=self._max_in_flight,
                hold_s=self._hold_s,
                hold_min=self._hold_min,
                hold_target=self._hold_target,
                on_batch=self._on_batch,
                telemetry=self._telemetry,
            )
            self._batchers[owner] = batcher
        return batcher

    def _on_batch(self, record: BatchRecord) -> None:
        self.stats.batches += 1
        self.stats.batched_requests += record.size
        if self._telemetry.enabled:
            self._telemetry.batch_done(record.owner, record.size, record.seconds, record.failed)

    def owner_for(self, routing_key: str) -> str:
        shard_map = self.shard_map
        return shard_map.owner_of(vshard_of(routing_key, shard_map.vshard_count))

    def expire_at(self, future: asyncio.Future[OwnerReply], deadline: float) -> int:
        """Fail ``future`` (with an exception) once ``deadline`` (loop time) has passed, unless
        it is done by then; returns the tick to hand to :meth:`forget_deadline` (callers that
        batch: a request still queued is then dropped from its batch)."""
        return self._deadlines.add(future, deadline)

    def forget_deadline(self, future: asyncio.Future[OwnerReply], tick: int) -> None:
        self._deadlines.discard(future, tick)

    def submit_once(self, request: OwnerRequest) -> asyncio.Future[OwnerReply]:
        """One attempt without retries: the future of the owner's reply (callers that batch).

        Raises Overloaded when the owner's queue is full.
        """
        owner = self.owner_for(request.routing_key)
        try:
            return self._batcher(owner).submit(request)
        except QueueFull as full:
            self.stats.overloaded += 1
            raise Overloaded(str(full)) from None

    async def call(
        self, request: OwnerRequest, timeout_s: float | None = None
    ) -> Answered | Rejected:
        """Send ``request`` to its owner until a durable answer or a rejection comes back.

        Raises Overloaded (owner queue full), NoDurableAnswer (owner unavailable until the
        deadline) or DeadlineExceeded. The same request object (same idempotency key) is sent
        on every attempt.
        """
        self.stats.requests += 1
        loop = asyncio.get_running_loop()
        budget = self.request_timeout_s if timeout_s is None else min(timeout_s, 3600.0)
        deadline = loop.time() + budget
        key = request.routing_key
        not_owner = 0
        backoff = BACKOFF_S_MIN
        last_unavailable = ""
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                if last_unavailable:
                    raise NoDurableAnswer(last_unavailable)
                raise DeadlineExceeded("deadline exceeded before the owner answered")
            sent_version = self.shard_map.version
            owner = self.owner_for(key)
            try:
                future = self._batcher(owner).submit(request)
            except QueueFull as full:
                self.stats.overloaded += 1
                raise Overloaded(str(full)) from None
            # The deadline fails the future (filed with every other attempt's under one loop
            # timer: cheaper than a timer, or asyncio.timeout's context, per request; no extra
            # task, unlike wait_for): a request still queued is then dropped from its batch, as
            # one whose caller gave up.
            tick = self._deadlines.add(future, deadline)
            try:
                reply: OwnerReply = await future
            except _DeadlinePassed:
                if last_unavailable:
                    raise NoDurableAnswer(last_unavailable) from None
                raise DeadlineExceeded(
                    f"deadline exceeded waiting for owner {owner}; the outcome is unknown:"
                    " retry with the same idempotency key"
                ) from None
            finally:
                self._deadlines.discard(future, tick)
            if isinstance(reply, (Answered, Rejected)):
                return reply
            if isinstance(reply, NotOwner):
                not_owner += 1
                self.stats.not_owner_retries += 1
                if not_owner > NOT_OWNER_RETRIES_MAX:
                    raise NoDurableAnswer(
                        f"vshard {reply.vshard} has no settled owner after {not_owner} tries"
                    )
                if self.shard_map.version > sent_version:
                    continue  # someone already fetched a newer map while this was in flight
                try:
                    await asyncio.wait_for(
                        self.refresh_map(max(reply.map_version, sent_version + 1)),
                        max(deadline - loop.time(), 0.001),
                    )
                except TimeoutError:
                    continue
                except Exception as error:  # manager unreachable: back off, try again
                    last_unavailable = f"shard manager unavailable: {type(error).__name__}"
                    await asyncio.sleep(min(backoff, max(deadline - loop.time(), 0)))
                    backoff = min(backoff * 2, BACKOFF_S_MAX)
                continue
            if isinstance(reply, Unavailable):
                self.stats.unavailable_retries += 1
                last_unavailable = reply.message
                await asyncio.sleep(min(backoff, max(deadline - loop.time(), 0)))
                backoff = min(backoff * 2, BACKOFF_S_MAX)
                continue
            raise TypeError(f"owner {owner} sent an unknown reply {reply!r}")


# ---------------------------------------------------------------------------------------------
# gRPC services
# ---------------------------------------------------------------------------------------------

_REJECT_STATUS = {
    INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ALREADY_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
}


_Answer = TypeVar("_Answer")


async def _answers_until_done(
    outbox: asyncio.Queue[_Answer | None],
    reader: Awaitable[None],
    pending: set[asyncio.Task[None]],
) -> AsyncGenerator[_Answer, None]:
    """Yield a stream's answers until its reader puts ``None`` (input ended, all answered).

    The reader runs as a task beside the yielding; when the client goes away first, the reader
    and every request still being charged for it are cancelled (their outcome stays safe: a
    retried request carries the same idempotency key).
    """
    feeding = asyncio.ensure_future(reader)
    try:
        while (answer := await outbox.get()) is not None:
            yield answer
        await feeding
    finally:
        feeding.cancel()
        for task in list(pending):
            task.cancel()


async def _abort(
    context: grpc.aio.ServicerContext[Any, Any], code: grpc.StatusCode, message: str
) -> NoReturn:
    """End the RPC with a status (context.abort raises; this says so to the type checker)."""
    await context.abort(code, message)
    raise AssertionError("unreachable: context.abort raises")


def _rejection_text(rejected: Rejected) -> str:
    return f"{rejected.field}: {rejected.message}" if rejected.field else rejected.message


# How long after the client's deadline the front door's own timer for a call fires. gRPC cancels
# the call (and its handler's task) when the client's deadline passes; a handler that answered or
# aborted at the same instant raced that cancellation, and gRPC logged the lost race as an
# ExecuteBatchError at ERROR level (seen in chaos runs and in test_client_deadline_ends_the_call_
# quietly, about one run in four). With the margin, gRPC's cancellation comes first; the timer
# stays as the bound for a call whose cancellation did not reach the handler. (The dispatcher's
# deadlines fire up to one tick, batching.DEADLINE_TICK_S, later still: never sooner.)
_AFTER_CLIENT_DEADLINE_S = 0.05


def _timeout(context: grpc.aio.ServicerContext[Any, Any]) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else max(remaining, 0.0) + _AFTER_CLIENT_DEADLINE_S


def charge_rejection_answer(
    request: CreditControlRequest, rejected: Rejected
) -> CreditControlAnswer:
    """A charging Rejected as the protocol's answer: unknown subscriber -> 5030, else 5004/5012."""
    if rejected.code == NOT_FOUND and rejected.field in ("subscriber_id", ""):
        code = ResultCode.USER_UNKNOWN
    elif rejected.code == INVALID_ARGUMENT:
        code = ResultCode.INVALID_AVP_VALUE
    else:
        code = ResultCode.UNABLE_TO_COMPLY
    return CreditControlAnswer(
        session_id=request.session_id,
        request_number=request.request_number,
        result_code=code,
        error_message=_rejection_text(rejected),
    )


class ChargingService(pb_grpc.ChargingServicer):
    """CreditControl (unary), CreditControlStream and CreditControlBatchStream."""

    def __init__(self, dispatcher: Dispatcher, telemetry: Telemetry | None = None) -> None:
        self._dispatcher = dispatcher
        self._telemetry = telemetry or current_telemetry()

    async def _charge_many(
        self, msgs: list[pb.CreditControlRequest], timeout_s: float | None
    ) -> list[pb.CreditControlAnswer]:
        """Many requests to answers in order, without a task per request.

        First attempt: every valid request goes straight into its owner's batcher and the
        futures are awaited together. Only requests that come back NotOwner/Unavailable (or could
        not be queued) take the full retrying path of :meth:`Dispatcher.call`.
        """
        started = time.perf_counter()
        answers: list[pb.CreditControlAnswer | None] = [None] * len(msgs)
        first: list[tuple[int, CreditControlRequest, asyncio.Future[OwnerReply]]] = []
        retry: list[tuple[int, CreditControlRequest]] = []
        for index, msg in enumerate(msgs):
            try:
                request = convert.request_from_proto(msg)
            except ValidationError as error:
                answers[index] = convert.error_answer(
                    msg.session_id, msg.request_number, error.result_code, str(error)
                )
                continue
            try:
                future = self._dispatcher.submit_once(ChargeRequest(request))
            except DispatchError:
                retry.append((index, request))
                continue
            first.append((index, request, future))
        budget = self._dispatcher.request_timeout_s if timeout_s is None else timeout_s
        newest = 0
        sent_version = self._dispatcher.shard_map.version
        if first:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(budget):
                    await asyncio.wait([future for _, _, future in first])
        for index, request, future in first:
            if not future.done():
                future.cancel()  # dropped from its batch if it has not left yet
                answers[index] = convert.error_answer(
                    request.session_id,
                    request.request_number,
                    ResultCode.UNABLE_TO_COMPLY,
                    "deadline exceeded waiting for the owner; retry with the same request",
                )
                continue
            reply = future.result()
            if isinstance(reply, (Answered, Rejected)):
                answers[index] = convert.answer_to_proto(self._answer_of(request, reply))
                continue
            if isinstance(reply, NotOwner):
                self._dispatcher.stats.not_owner_retries += 1
                newest = max(newest, reply.map_version)
            else:
                self._dispatcher.stats.unavailable_retries += 1
            retry.append((index, request))
        if newest and self._dispatcher.shard_map.version <= sent_version:
            with contextlib.suppress(Exception):  # a vshard moved: one fetch for all of them
                await self._dispatcher.refresh_map(max(newest, sent_version + 1))
        if retry:
            remaining = max(budget - (time.perf_counter() - started), 0.001)
            retried = await asyncio.gather(
                *(self._charge_domain(request, remaining) for _, request in retry)
            )
            for (index, _), answer in zip(retry, retried, strict=True):
                answers[index] = answer
        if self._telemetry.enabled:
            seconds = time.perf_counter() - started
            for done in answers:
                if done is not None:
                    self._telemetry.request_done(
                        "CreditControlBatchStream", str(done.result_code), seconds
                    )
        return [answer for answer in answers if answer is not None]

    async def _charge_domain(
        self, request: CreditControlRequest, timeout_s: float
    ) -> pb.CreditControlAnswer:
        try:
            reply = await self._dispatcher.call(ChargeRequest(request), timeout_s)
        except DispatchError as error:
            return convert.error_answer(
                request.session_id, request.request_number, error.result, str(error)
            )
        return convert.answer_to_proto(self._answer_of(request, reply))

    def _request_budget(self, context: grpc.aio.ServicerContext[Any, Any]) -> float:
        """One streamed request's time: the server's bound, or less if the stream ends sooner."""
        remaining = _timeout(context)
        bound = self._dispatcher.request_timeout_s
        return bound if remaining is None else min(remaining, bound)

    @staticmethod
    def _answer_of(
        request: CreditControlRequest, reply: Answered | Rejected
    ) -> CreditControlAnswer:
        if isinstance(reply, Rejected):
            return charge_rejection_answer(request, reply)
        payload = reply.payload
        if not isinstance(payload, CreditControlAnswer):
            raise TypeError(f"owner answered a charge with {type(payload).__name__}")
        return payload

    async def CreditControl(
        self, request: pb.CreditControlRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.CreditControlAnswer:
        started = time.perf_counter()
        telemetry = self._telemetry
        try:
            domain = convert.request_from_proto(request)
        except ValidationError as error:
            if telemetry.enabled:
                telemetry.request_done("CreditControl", "INVALID_ARGUMENT", 0.0)
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(error))
        try:
            if telemetry.enabled:
                attributes: dict[str, str | int] = {
                    "billing.session_id": domain.session_id,
                    "billing.request_number": domain.request_number,
                    "billing.owner": self._dispatcher.owner_for(domain.subscriber_id),
                }
                with telemetry.span("billing.frontdoor/CreditControl", attributes):
                    reply = await self._dispatcher.call(ChargeRequest(domain), _timeout(context))
            else:
                reply = await self._dispatcher.call(ChargeRequest(domain), _timeout(context))
        except DispatchError as error:
            if telemetry.enabled:
                telemetry.request_done("CreditControl", error.code.name, 0.0)
            await _abort(context, error.code, str(error))
        if isinstance(reply, Rejected) and reply.code == INVALID_ARGUMENT:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, _rejection_text(reply))
        answer = self._answer_of(domain, reply)
        if telemetry.enabled:
            telemetry.request_done(
                "CreditControl", answer.result_code.name, time.perf_counter() - started
            )
        return convert.answer_to_proto(answer)

    async def CreditControlStream(
        self,
        request_iterator: AsyncIterator[pb.CreditControlRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[pb.CreditControlAnswer]:
        """Answers in completion order; at most STREAM_IN_FLIGHT_MAX requests in flight.

        The first attempt costs no task: the request goes straight into its owner's batcher and
        a callback delivers the answer (the dispatcher's deadlines bound it). Only NotOwner or
        Unavailable replies take the retrying path of :meth:`Dispatcher.call`.
        """
        loop = asyncio.get_running_loop()
        outbox: asyncio.Queue[pb.CreditControlAnswer | None] = asyncio.Queue()
        slots = asyncio.Semaphore(STREAM_IN_FLIGHT_MAX)
        pending: set[asyncio.Task[None]] = set()
        telemetry = self._telemetry

        def deliver(answer: pb.CreditControlAnswer, started: float) -> None:
            outbox.put_nowait(answer)
            slots.release()
            if telemetry.enabled:
                telemetry.request_done(
                    "CreditControlStream", str(answer.result_code), time.perf_counter() - started
                )

        async def retry(request: CreditControlRequest, started: float, budget: float) -> None:
            remaining = max(budget - (time.perf_counter() - started), 0.001)
            deliver(await self._charge_domain(request, remaining), started)

        def spawn_retry(request: CreditControlRequest, started: float, budget: float) -> None:
            task = asyncio.create_task(retry(request, started, budget))
            pending.add(task)
            task.add_done_callback(pending.discard)

        def on_reply(
            request: CreditControlRequest,
            started: float,
            budget: float,
            tick: int,
            future: asyncio.Future[OwnerReply],
        ) -> None:
            self._dispatcher.forget_deadline(future, tick)
            # Failed (or cancelled): the deadline passed before the owner answered.
            if future.cancelled() or future.exception() is not None:
                deliver(
                    convert.error_answer(
                        request.session_id,
                        request.request_number,
                        ResultCode.UNABLE_TO_COMPLY,
                        "deadline exceeded waiting for the owner; retry with the same request",
                    ),
                    started,
                )
                return
            reply = future.result()
            if isinstance(reply, (Answered, Rejected)):
                try:
                    answer = convert.answer_to_proto(self._answer_of(request, reply))
                except Exception as error:  # a bug must not leave the stream waiting forever
                    log.exception("answer for %s could not be built", request.idempotency_key)
                    answer = convert.error_answer(
                        request.session_id,
                        request.request_number,
                        ResultCode.UNABLE_TO_COMPLY,
                        f"internal error: {type(error).__name__}",
                    )
                deliver(answer, started)
                return
            if isinstance(reply, NotOwner):
                self._dispatcher.stats.not_owner_retries += 1
            else:
                self._dispatcher.stats.unavailable_retries += 1
            spawn_retry(request, started, budget)

        def start(msg: pb.CreditControlRequest, budget: float) -> None:
            started = time.perf_counter()
            try:
                request = convert.request_from_proto(msg)
            except ValidationError as error:
                answer = convert.error_answer(
                    msg.session_id, msg.request_number, error.result_code, str(error)
                )
                deliver(answer, started)
                return
            try:
                future = self._dispatcher.submit_once(ChargeRequest(request))
            except DispatchError:
                spawn_retry(request, started, budget)
                return
            tick = self._dispatcher.expire_at(future, loop.time() + budget)
            future.add_done_callback(partial(on_reply, request, started, budget, tick))

        async def reader() -> None:
            try:
                async for msg in request_iterator:
                    await slots.acquire()
                    start(msg, self._request_budget(context))
                for _ in range(STREAM_IN_FLIGHT_MAX):  # every answer delivered
                    await slots.acquire()
            finally:
                outbox.put_nowait(None)

        # aclosing: a client that goes away closes this generator, and with it the inner one
        # at once (not whenever it is collected), cancelling what is still being charged.
        async with contextlib.aclosing(_answers_until_done(outbox, reader(), pending)) as answers:
            async for answer in answers:
                yield answer

    async def CreditControlBatchStream(
        self,
        request_iterator: AsyncIterator[pb.CreditControlRequestBatch],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[pb.CreditControlAnswerBatch]:
        """One answer batch per request batch, answers in request order inside it."""
        outbox: asyncio.Queue[pb.CreditControlAnswerBatch | None] = asyncio.Queue()
        slots = asyncio.Semaphore(STREAM_IN_FLIGHT_MAX)
        pending: set[asyncio.Task[None]] = set()

        async def one(batch: pb.CreditControlRequestBatch, size: int) -> None:
            try:
                budget = self._request_budget(context)
                answers = await self._charge_many(list(batch.requests), budget)
                outbox.put_nowait(pb.CreditControlAnswerBatch(answers=answers))
            finally:
                for _ in range(size):
                    slots.release()

        async def reader() -> None:
            try:
                async for batch in request_iterator:
                    if len(batch.requests) > BATCH_REQUESTS_MAX:
                        await _abort(
                            context,
                            grpc.StatusCode.INVALID_ARGUMENT,
                            f"requests: at most {BATCH_REQUESTS_MAX} per batch,"
                            f" got {len(batch.requests)}",
                        )
                    size = max(len(batch.requests), 1)
                    for _ in range(size):
                        await slots.acquire()
                    task = asyncio.create_task(one(batch, size))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                while pending:
                    await asyncio.gather(*list(pending), return_exceptions=True)
            finally:
                outbox.put_nowait(None)

        # aclosing: a client that goes away closes this generator, and with it the inner one
        # at once (not whenever it is collected), cancelling what is still being charged.
        async with contextlib.aclosing(_answers_until_done(outbox, reader(), pending)) as answers:
            async for answer in answers:
                yield answer


def subscriber_to_proto(view: SubscriberView) -> pb.Subscriber:
    return pb.Subscriber(
        subscriber_id=view.subscriber_id,
        account_id=view.account_id,
        plan_id=view.plan_id,
        payment_mode=convert.payment_mode_to_proto(view.payment_mode),  # type: ignore[arg-type]
        currency=view.currency,
        created_at=convert.datetime_to_timestamp(view.created_at),
        vshard=view.vshard,
    )


def balance_to_proto(view: BalanceView) -> pb.GetBalanceResponse:
    """The domain's balance view (billing.accounts.BalanceView) as the wire response."""
    msg = pb.GetBalanceResponse(
        subscriber_id=view.subscriber_id,
        account_id=view.account_id,
        currency=view.currency,
        balance_micros=view.balance_micros,
        reserved_micros=view.reserved_micros,
        available_micros=view.available_micros,
        credit_limit_micros=view.credit_limit_micros,
    )
    for bucket in view.buckets:
        entry = msg.buckets.add(
            bucket_id=bucket.bucket_id,
            bundle_id=bucket.bundle_id,
            service=convert.service_kind_to_proto(bucket.service),
            units=bucket.units,
            reserved_units=bucket.reserved_units,
            available_units=bucket.available_units,
            priority=getattr(bucket, "priority", 0),
        )
        valid_from = getattr(bucket, "valid_from", None)
        if valid_from is not None:
            entry.valid_from.CopyFrom(convert.datetime_to_timestamp(valid_from))
        if bucket.expires_at is not None:
            entry.expires_at.CopyFrom(convert.datetime_to_timestamp(bucket.expires_at))
    return msg


class AccountsService(pb_grpc.AccountsServicer):
    """Provisioning, balance queries and back-office balance movements."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self._dispatcher = dispatcher

    async def _call(
        self, request: OwnerRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> object:
        try:
            reply = await self._dispatcher.call(request, _timeout(context))
        except DispatchError as error:
            await _abort(context, error.code, str(error))
        if isinstance(reply, Rejected):
            status = _REJECT_STATUS.get(reply.code, grpc.StatusCode.FAILED_PRECONDITION)
            await _abort(context, status, _rejection_text(reply))
        return reply.payload

    async def _validated(
        self, parse: Callable[[], _T], context: grpc.aio.ServicerContext[Any, Any]
    ) -> _T:
        try:
            return parse()
        except ValidationError as error:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(error))

    async def CreateSubscriber(
        self, request: pb.CreateSubscriberRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.CreateSubscriberResponse:
        spec = await self._validated(lambda: convert.provisioning_from_proto(request), context)
        payload = await self._call(
            ProvisionRequest(
                subscriber_id=spec.subscriber_id,
                plan_id=spec.plan_id,
                payment_mode=spec.payment_mode,
                initial_balance_micros=spec.initial_balance_micros,
                credit_limit_micros=spec.credit_limit_micros,
                currency=spec.currency,
                account_id=spec.account_id,
            ),
            context,
        )
        if not isinstance(payload, SubscriberView):
            payload = await self._call(QueryRequest("subscriber", spec.subscriber_id), context)
        assert isinstance(payload, SubscriberView), payload
        return pb.CreateSubscriberResponse(subscriber=subscriber_to_proto(payload))

    async def GetSubscriber(
        self, request: pb.GetSubscriberRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetSubscriberResponse:
        subscriber_id = await self._validated(
            lambda: convert.subscriber_id_from_proto(request.subscriber_id), context
        )
        payload = await self._call(QueryRequest("subscriber", subscriber_id), context)
        assert isinstance(payload, SubscriberView), payload
        return pb.GetSubscriberResponse(subscriber=subscriber_to_proto(payload))

    async def GetBalance(
        self, request: pb.GetBalanceRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetBalanceResponse:
        subscriber_id = await self._validated(
            lambda: convert.subscriber_id_from_proto(request.subscriber_id), context
        )
        payload = await self._call(QueryRequest("balance", subscriber_id), context)
        assert isinstance(payload, BalanceView), payload
        return balance_to_proto(payload)

    async def TopUp(
        self, request: pb.TopUpRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.BalanceMovementResponse:
        command = await self._validated(lambda: convert.topup_from_proto(request), context)
        payload = await self._call(BalanceRequest(command), context)
        assert isinstance(payload, BalanceResult), payload
        return convert.balance_result_to_proto(payload)

    async def Adjust(
        self, request: pb.AdjustRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.BalanceMovementResponse:
        command = await self._validated(lambda: convert.adjustment_from_proto(request), context)
        payload = await self._call(BalanceRequest(command), context)
        assert isinstance(payload, BalanceResult), payload
        return convert.balance_result_to_proto(payload)


def plan_to_proto(info: PlanInfo) -> pb.PlanSummary:
    return pb.PlanSummary(
        plan_id=info.plan_id,
        name=info.name,
        description=info.description,
        currency=info.currency,
        payment_mode=convert.payment_mode_to_proto(info.payment_mode),  # type: ignore[arg-type]
        latest_version=info.latest_version,
        latest_effective_from=convert.datetime_to_timestamp(info.latest_effective_from),
    )


class TariffsService(pb_grpc.TariffsServicer):
    """The plan catalog: list, show, load (through the PlanService seam)."""

    def __init__(self, plans: PlanService) -> None:
        self._plans = plans

    async def _run(
        self, call: Callable[[], Awaitable[_T]], context: grpc.aio.ServicerContext[Any, Any]
    ) -> _T:
        try:
            return await call()
        except ValidationError as error:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(error))
        except PlanError as error:
            await _abort(context, error.code, str(error))

    async def ListPlans(
        self, request: pb.ListPlansRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListPlansResponse:
        plans = await self._run(self._plans.list_plans, context)
        return pb.ListPlansResponse(plans=[plan_to_proto(info) for info in plans])

    async def GetPlan(
        self, request: pb.GetPlanRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetPlanResponse:
        async def get() -> PlanInfo:
            return await self._plans.get_plan(convert.plan_id_from_proto(request.plan_id))

        info = await self._run(get, context)
        return pb.GetPlanResponse(plan=plan_to_proto(info), details=info.details)

    async def LoadPlan(
        self, request: pb.LoadPlanRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.LoadPlanResponse:
        async def load() -> PlanInfo:
            return await self._plans.load_plan(convert.plan_text_from_proto(request))

        info = await self._run(load, context)
        return pb.LoadPlanResponse(plan=plan_to_proto(info))


# ---------------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------------

SERVICE_NAMES = tuple(
    pb.DESCRIPTOR.services_by_name[name].full_name for name in ("Charging", "Accounts", "Tariffs")
)


class _GenericOnly:
    """A grpc.aio server as the generated ``add_*Servicer_to_server`` functions see it, keeping
    only their generic handlers: every method is then found through them, none is registered.

    Why: grpc.aio (1.85) keeps one pending request per *registered* method, plus one for generic
    calls, and for every incoming call waits on all of them (an ``asyncio.wait`` of one task per
    method). The generated functions register every method; with Charging, Accounts, Tariffs,
    health and reflection that is 15 tasks: the echo server registered that way makes 400 Python
    calls per call, against 291 as generated (3 methods) and 267 with generic handlers only; the
    front door went from 571 to 399 (benchmarks/bench_grpc_calls.py; about 5-10 µs per request,
    benchmarks/README.md, session 9). Behaviour is unchanged: the same handlers answer the same
    methods; a method is looked up in the generic handlers in the order they were added
    (Charging first).
    """

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(
        self, service_name: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        """Dropped: the same handlers were given to add_generic_rpc_handlers."""


class FrontDoor:
    """A running grpc.aio server with the three services, reflection and health."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        plans: PlanService,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        concurrent_rpcs_max: int = 20_000,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.dispatcher = dispatcher
        self._plans = plans
        self._host = host
        self._requested_port = port
        self._concurrent_rpcs_max = concurrent_rpcs_max
        self._telemetry = telemetry or current_telemetry()
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self.port = 0

    @property
    def address(self) -> str:
        return f"{self._host}:{self.port}"

    async def start(self) -> None:
        await self.dispatcher.start()
        server = grpc.aio.server(
            maximum_concurrent_rpcs=self._concurrent_rpcs_max,
            options=[
                ("grpc.max_receive_message_length", 8 * 1024 * 1024),
                ("grpc.so_reuseport", 0),
            ],
        )
        # Every service through generic handlers only, Charging's first (_GenericOnly). The
        # generated functions are typed for a server; the adapter has the two methods they call.
        generic = cast(grpc.aio.Server, _GenericOnly(server))
        pb_grpc.add_ChargingServicer_to_server(
            ChargingService(self.dispatcher, self._telemetry), generic
        )
        pb_grpc.add_AccountsServicer_to_server(AccountsService(self.dispatcher), generic)
        pb_grpc.add_TariffsServicer_to_server(TariffsService(self._plans), generic)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, generic)
        names = (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME)
        # What reflection.enable_server_reflection does for a grpc.aio server, through the adapter.
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
            reflection.aio.ReflectionServicer(names), generic
        )
        self.port = server.add_insecure_port(f"{self._host}:{self._requested_port}")
        if self.port == 0:
            raise OSError(f"cannot listen on {self._host}:{self._requested_port}")
        await server.start()
        for name in ("", *SERVICE_NAMES):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._server = server

    async def stop(self, grace_s: float = 2.0) -> None:
        """Stop taking requests, let those in flight finish (up to ``grace_s``), close."""
        if self._server is None:
            return
        await self._health.enter_graceful_shutdown()
        await self._server.stop(grace_s)
        await self.dispatcher.close()
        self._server = None

    async def wait(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()


def describe_status(stats: DispatchStats) -> Mapping[str, int]:
    """The dispatcher counters as a flat mapping (for logs and the CLI)."""
    return {
        "requests": stats.requests,
        "batches": stats.batches,
        "batched_requests": stats.batched_requests,
        "not_owner_retries": stats.not_owner_retries,
        "unavailable_retries": stats.unavailable_retries,
        "overloaded": stats.overloaded,
        "map_refreshes": stats.map_refreshes,
    }
