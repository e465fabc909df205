"""Micro-batching of owner calls: per owner, up to ``max_in_flight`` batches in flight.

DESIGN.md section 4: a request is put in its owner's queue; when fewer than ``max_in_flight``
batches are in flight, a batch leaves at once; requests that arrive while all are in flight form
the next batch, sent the moment one returns. There is no timer (a timer doubled latency at low
load), so a lone request pays one owner round trip and a busy owner gets large batches by itself.
With one batch in flight (the default here) a request arriving during a call waits for it and
then rides the next: about two round trips. Over the direct channel (actors/channel.py) a call is
cheap, and a second batch in flight lets such a request leave at once; the owner still coalesces
what reaches it during a commit into one group commit.

Filling a batch under load (``hold_s``, ``hold_min``, ``hold_target``): when a batch could
leave and at least ``hold_min`` requests are already waiting (they queued up during the previous
round trip: the owner is under sustained load), it waits, on one timer, until ``hold_target``
requests are queued or ``hold_s`` has passed. A lone request or a light load (fewer than
``hold_min`` waiting) leaves at once, so the latency at low load is that of the plain rule; a
saturated front door sends fewer, fuller batches, and the owner's and the commit's fixed cost per
batch is spread over more requests. ``hold_s=0`` (or ``hold_target`` at most ``hold_min``) is the
plain one-batch-in-flight rule. An earlier variant waited only while the event loop had other
work ready; on cores shared with the owners and the database that was seldom true even at
saturation, and batches hardly grew (benchmarks/README.md, session 8).

Bounded (DESIGN.md invariant 6): the queue holds at most ``queue_max`` requests; past that,
:class:`QueueFull` is raised at once (the front door answers RESOURCE_EXHAUSTED) and nothing is
enqueued. A batch holds at most ``batch_max`` requests. A request whose caller gave up (its
future was cancelled, e.g. by a deadline) before its batch left is dropped, not sent.

Deadlines of the requests waiting for their owner (:class:`Deadlines`): one loop timer for all
of them instead of one per request. Each request's future is filed under the first tick of
``tick_s`` that ends after its deadline; the timer, armed at the earliest filed tick, fails what
is still pending there. A future is never failed before its deadline, and at most one tick after
it. (A loop timer per request costs a TimerHandle and pushes into asyncio's heap of timers, whose
comparisons are Python calls; here a request costs a dict lookup and a set insertion.)

The owner is reached through :class:`OwnerClient`, a seam: the Ray actor handle in production,
an in-process fake in unit tests. A failed call (actor dead or restarting, Ray error) becomes
:class:`Unavailable` for every request of the batch: nothing is known to be acknowledged, so the
front door may retry them with the same idempotency keys (invariant 3).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from actors.messages import OwnerReply, OwnerRequest, Unavailable
from cluster.telemetry import Telemetry
from cluster.telemetry import current as current_telemetry

log = logging.getLogger(__name__)
_T = TypeVar("_T")

QUEUE_MAX_DEFAULT = 4096
BATCH_MAX_DEFAULT = 2048  # the owner applies up to 4096 per group commit
MAX_IN_FLIGHT_DEFAULT = 1
MAX_IN_FLIGHT_LIMIT = 16  # batches in flight per owner: bounded
HOLD_S_LIMIT = 0.1  # the longest a batch may wait to fill up
# The front door's defaults, measured in bench_grpc (unary at 64 in flight, 2 owners, interleaved
# with the hold off): owner batches 7.7 -> 12.0 requests, CPU per request 462 -> 402 µs; at an
# open-loop 500/s no batch waited (p95 4.3 vs 4.0 ms); at 2,000/s p95 fell 37 -> 20 ms (less CPU
# per request, less queueing). hold_min 2 or a 5 ms / 32 hold measured no better.
HOLD_S_DEFAULT = 0.003
HOLD_MIN_DEFAULT = 3
HOLD_TARGET_DEFAULT = 24


def check_hold(hold_s: float, hold_min: int, hold_target: int) -> None:
    """Raise ValueError naming the first hold setting out of range (module docstring)."""
    if not 0.0 <= hold_s <= HOLD_S_LIMIT:
        raise ValueError(f"hold_s must be in 0..{HOLD_S_LIMIT} seconds, got {hold_s}")
    if hold_min < 1:
        raise ValueError(f"hold_min must be >= 1, got {hold_min}")
    if hold_target < 0:
        raise ValueError(f"hold_target must be >= 0, got {hold_target}")


DEADLINE_TICK_S = 0.01  # how late, at most, Deadlines fails a future after its deadline


class Deadlines(Generic[_T]):
    """Fails pending futures whose deadline has passed, with one loop timer for all of them.

    ``add(future, deadline)`` files ``future`` (``deadline`` in loop time) under the first tick
    that ends after the deadline and returns that tick; ``discard(future, tick)`` takes it out
    again (its caller has its answer). When a tick's time comes, every future filed there and not
    done yet is passed to ``expire`` (which fails it). Never before the deadline; at most
    ``tick_s`` after it. One asyncio event loop (the one running when ``add`` is first called).
    """

    def __init__(
        self, expire: Callable[[asyncio.Future[_T]], None], tick_s: float = DEADLINE_TICK_S
    ) -> None:
        if not tick_s > 0:
            raise ValueError(f"tick_s must be > 0, got {tick_s}")
        self._expire = expire
        self._tick_s = tick_s
        self._filed: dict[int, set[asyncio.Future[_T]]] = {}
        self._ticks: list[int] = []  # heap of the filed ticks (ints: compared in C)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._armed = 0  # the tick the timer is set for (when there is one)

    def __len__(self) -> int:
        """Futures filed and not discarded (done ones included until their tick comes)."""
        return sum(len(futures) for futures in self._filed.values())

    def add(self, future: asyncio.Future[_T], deadline: float) -> int:
        tick = int(deadline / self._tick_s) + 1  # ends strictly after the deadline
        futures = self._filed.get(tick)
        if futures is None:
            futures = self._filed[tick] = set()
            heapq.heappush(self._ticks, tick)
            if self._timer is None or tick < self._armed:
                self._arm(tick)
        futures.add(future)
        return tick

    def discard(self, future: asyncio.Future[_T], tick: int) -> None:
        futures = self._filed.get(tick)
        if futures is not None:
            futures.discard(future)  # an emptied tick is dropped when its time comes

    def _arm(self, tick: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        self._armed = tick
        self._timer = self._loop.call_at(tick * self._tick_s, self._due)

    def _due(self) -> None:
        self._timer = None
        assert self._loop is not None
        now = self._loop.time()
        ticks = self._ticks
        while ticks and ticks[0] * self._tick_s <= now:
            for future in self._filed.pop(heapq.heappop(ticks), ()):
                if not future.done():
                    self._expire(future)
        if ticks:  # the next tick (or this one again, if the clock is a hair short of it)
            self._arm(ticks[0])

    def close(self) -> None:
        """Forget every filed future and stop the timer (nothing is failed)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._filed.clear()
        self._ticks.clear()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class OwnerClient(Protocol):
    """Something that runs one micro-batch on an owner and returns one reply per request."""

    async def submit(self, requests: list[OwnerRequest]) -> list[OwnerReply]: ...


class QueueFull(Exception):
    """The owner's queue is at its bound: the caller should back off (RESOURCE_EXHAUSTED)."""

    def __init__(self, owner: str, queue_max: int) -> None:
        super().__init__(f"owner {owner} is overloaded: {queue_max} requests already queued")
        self.owner = owner
        self.queue_max = queue_max


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """What one flushed batch looked like (for metrics and traces)."""

    owner: str
    size: int
    queued: int  # requests left waiting when the batch left
    seconds: float
    failed: bool
    held: float = 0.0  # seconds the batch waited for more requests before it left (hold_s)


class OwnerBatcher:
    """The queue and the batches in flight (at most ``max_in_flight``) of one owner, in one
    asyncio event loop."""

    def __init__(
        self,
        owner: str,
        client: OwnerClient,
        *,
        queue_max: int = QUEUE_MAX_DEFAULT,
        batch_max: int = BATCH_MAX_DEFAULT,
        max_in_flight: int = MAX_IN_FLIGHT_DEFAULT,
        on_batch: Callable[[BatchRecord], None] | None = None,
        telemetry: Telemetry | None = None,
        hold_s: float = 0.0,
        hold_min: int = HOLD_MIN_DEFAULT,
        hold_target: int = HOLD_TARGET_DEFAULT,
    ) -> None:
        """``hold_s``, ``hold_min``, ``hold_target``: filling a batch under load (module
        docstring); ``hold_s=0`` (the default here; the front door's is ``HOLD_S_DEFAULT``) =
        off."""
        if queue_max < 1 or batch_max < 1:
            raise ValueError(f"queue_max and batch_max must be >= 1, got {queue_max}, {batch_max}")
        if not 1 <= max_in_flight <= MAX_IN_FLIGHT_LIMIT:
            raise ValueError(
                f"max_in_flight must be in 1..{MAX_IN_FLIGHT_LIMIT}, got {max_in_flight}"
            )
        check_hold(hold_s, hold_min, hold_target)
        self.owner = owner
        self.client = client
        self.queue_max = queue_max
        self.batch_max = batch_max
        self.max_in_flight = max_in_flight
        self.hold_s = hold_s
        self.hold_min = hold_min
        self.hold_target = min(hold_target, batch_max)
        self._filled: asyncio.Future[None] | None = None  # a batch waiting to fill up
        self._on_batch = on_batch
        self._telemetry = telemetry or current_telemetry()
        self._queue: deque[tuple[OwnerRequest, asyncio.Future[OwnerReply]]] = deque()
        self._senders: set[asyncio.Task[None]] = set()
        self._starting = 0  # senders started that have not taken a batch yet
        self._closed = False

    @property
    def depth(self) -> int:
        """Requests waiting (not counting the batch in flight)."""
        return len(self._queue)

    @property
    def in_flight(self) -> bool:
        return bool(self._senders)

    def submit(self, request: OwnerRequest) -> asyncio.Future[OwnerReply]:
        """Enqueue ``request``; the future resolves to the owner's reply. Raises QueueFull."""
        if self._closed:
            raise RuntimeError(f"batcher for {self.owner} is closed")
        if len(self._queue) >= self.queue_max:
            raise QueueFull(self.owner, self.queue_max)
        future: asyncio.Future[OwnerReply] = asyncio.get_running_loop().create_future()
        self._queue.append((request, future))
        filled = self._filled
        if filled is not None and len(self._queue) >= self.hold_target and not filled.done():
            filled.set_result(None)
        if not self._starting and len(self._senders) < self.max_in_flight:
            # Every sender is in a call (or there is none): one more may leave now.
            self._starting += 1
            sender = asyncio.create_task(self._flush(), name=f"flush-{self.owner}")
            self._senders.add(sender)
        return future

    async def _flush(self) -> None:
        """Send batches until the queue is empty; one of at most ``max_in_flight`` senders."""
        starting = True
        try:
            while self._queue:
                held = await self._hold() if self.hold_s else 0.0
                requests: list[OwnerRequest] = []
                futures: list[asyncio.Future[OwnerReply]] = []
                while self._queue and len(requests) < self.batch_max:
                    request, future = self._queue.popleft()
                    if future.done():  # the caller gave up before the batch left
                        continue
                    requests.append(request)
                    futures.append(future)
                if not requests:
                    continue
                if starting:
                    starting = False
                    self._starting -= 1
                started = time.perf_counter()
                failed = False
                try:
                    if self._telemetry.enabled:
                        attributes: dict[str, str | int] = {
                            "billing.owner": self.owner,
                            "billing.batch.size": len(requests),
                        }
                        with self._telemetry.span("billing.owner.submit", attributes):
                            replies = await self.client.submit(requests)
                    else:
                        replies = await self.client.submit(requests)
                    if len(replies) != len(requests):
                        raise RuntimeError(
                            f"owner {self.owner} answered {len(replies)} replies"
                            f" to {len(requests)} requests"
                        )
                except asyncio.CancelledError:
                    for future in futures:
                        if not future.done():
                            future.set_result(Unavailable(f"owner {self.owner}: call cancelled"))
                    raise
                except Exception as error:  # every failure of the call: outcome unknown
                    failed = True
                    log.debug("owner %s batch of %d failed: %r", self.owner, len(requests), error)
                    reply = Unavailable(f"owner {self.owner} unavailable: {type(error).__name__}")
                    replies = [reply] * len(requests)
                for future, answer in zip(futures, replies, strict=True):
                    if not future.done():
                        future.set_result(answer)
                if self._on_batch is not None:
                    self._on_batch(
                        BatchRecord(
                            owner=self.owner,
                            size=len(requests),
                            queued=len(self._queue),
                            seconds=time.perf_counter() - started,
                            failed=failed,
                            held=held,
                        )
                    )
        finally:
            if starting:
                self._starting -= 1
            # Synchronously, not in a done callback: a request queued from now on starts a sender.
            self._senders.discard(asyncio.current_task())

    async def _hold(self) -> float:
        """Fill the batch under sustained load (module docstring): if ``hold_min`` or more
        requests are already waiting, wait on one timer until ``hold_target`` are queued or
        ``hold_s`` has passed. Returns the seconds waited (0 at low load: it leaves at once)."""
        if not self.hold_min <= len(self._queue) < self.hold_target:
            return 0.0
        loop = asyncio.get_running_loop()
        started = loop.time()
        filled = self._filled = loop.create_future()
        timer = loop.call_later(self.hold_s, _resolve, filled)
        try:
            await filled
        finally:
            timer.cancel()
            self._filled = None
        return loop.time() - started

    async def close(self) -> None:
        """Stop accepting; fail what is queued as Unavailable; wait for the batches in flight."""
        self._closed = True
        if self._filled is not None and not self._filled.done():
            self._filled.set_result(None)
        while self._queue:
            _, future = self._queue.popleft()
            if not future.done():
                future.set_result(Unavailable(f"front door closing (owner {self.owner})"))
        for sender in list(self._senders):
            with contextlib.suppress(asyncio.CancelledError):
                await sender
