"""ShardOwner: the Ray actor that owns a set of vshards, charges them, and commits before answering.

Life of an owner (named ``billing-owner-<i>``, detached, ``max_restarts=-1``, namespace
``billing``):

1. Start (also after a crash restart, which re-runs ``__init__``): ask the shard manager for the
   map, take over its vshards in PostgreSQL (epoch bump: any previous owner is fenced out from
   then on), load their state, load the plan catalog. Until then requests wait a bounded time
   (``ready_wait_s``) and then get :class:`~actors.messages.Unavailable`.
2. Serve: :meth:`ShardOwner.submit` puts a micro-batch on the owner's queue; ONE writer task
   takes everything queued (up to ``batch_max`` requests), applies the domain in one synchronous
   step (actors/_apply.py), commits ``state.take_changes()`` with the vshard epochs in ONE
   transaction, and only then resolves the callers' replies. While a commit is in flight the
   writer applies and commits the next batch at once if it is independent of every commit in
   flight (no shared subscriber, account, session or key: actors/_flights.py), up to
   ``commits_in_flight`` commits, each on its own connection; dependent requests wait for the
   commit they depend on, so no batch is ever built on effects that are not yet durable.
3. Failures: a stale epoch (:class:`sharding.store.NotOwner`) means a vshard moved: nothing was
   written, the requests of that vshard get NotOwner, the others Unavailable, and the owner
   reloads. A database failure: nothing acknowledged, every request of the batch gets
   Unavailable, the in-memory state (which already holds the uncommitted effects) is dropped and
   reloaded from PostgreSQL, which is the truth, before anything else is served. With several
   commits in flight the failed one's callers are answered at once; the writer takes no new
   batch, lets every other commit settle (their answers stand: they never read the failed
   batch's effects), and only then forgets the failed batch and reloads its vshards.

A timer queues an orphan sweep (``release_orphans`` at the actor's clock; the domain never reads
the clock) committed the same way, and prunes old remembered answers.

Shared accounts: a member whose account's vshard is held by another owner has its requests
forwarded there (``forwarded``), so only the account's owner ever spends the account.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import inspect
import itertools
import logging
import os
import time
import types
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import ray

from actors import tracing
from actors._apply import InternalError, JoinRemote, Step, apply_one
from actors._flights import Flight, changes_keys, item_keys, take_independent
from actors._gc import freeze_loaded, tune_gc
from actors._warm import WarmSet
from actors.channel import ChannelServer, Endpoint
from actors.compact import Directory
from actors.messages import (
    FAILED_PRECONDITION,
    INTERNAL,
    INVALID_ARGUMENT,
    Answered,
    BalanceRequest,
    ChargeRequest,
    Forwarded,
    NotOwner,
    OwnerReply,
    OwnerRequest,
    OwnerStatus,
    PickledBatch,
    ProvisionRequest,
    ProvisionSummary,
    QueryRequest,
    Rejected,
    SubscriberView,
    Unavailable,
)
from billing.protocol import BalanceResult, CreditControlAnswer, RequestType
from billing.sessions import prune_answers, release_orphans
from billing.state import Changes, ShardState, Subscriber
from billing.tariff import Catalog, builtin_catalog, load_plan
from sharding.shardmap import ShardMap
from sharding.store import DuplicateKey, Store, StoreError
from sharding.store import NotOwner as StoreNotOwner
from sharding.vshard import vshard_of

log = logging.getLogger(__name__)

NAMESPACE = "billing"
MANAGER_NAME = "billing-shard-manager"
OWNER_PREFIX = "billing-owner-"
_REQUEST_TYPES = (ChargeRequest, ProvisionRequest, BalanceRequest, QueryRequest)
_REJECTS_KEPT = 200
_GONE_KEPT = 10_000  # keys known applied whose answers are gone (refused without a DB trip)


def owner_name(index: int) -> str:
    """The actor name of owner ``index``: ``billing-owner-<index>``."""
    return f"{OWNER_PREFIX}{index}"


@dataclass(frozen=True, slots=True)
class OwnerConfig:
    """Settings of one owner; every bound here is a limit with a clear error past it."""

    dsn: str
    batch_max: int = 4096  # requests applied per group commit
    queue_max: int = 50_000  # requests waiting for the writer; past it: Unavailable (busy)
    submit_max: int = 10_000  # requests in one submit call
    ready_wait_s: float = 2.0  # how long a request waits for a (re)loading owner
    forward_timeout_s: float = 10.0  # a forwarded shared-account request's bound
    sweep_interval_s: float = 1.0  # orphan sweep period
    # Remembered answers (retransmissions answered from memory) older than this, or the oldest
    # beyond answers_max, are forgotten at the next sweep; a flagged retransmission of a forgotten
    # one is looked up in the database, any other repeat is refused by the journal's unique key.
    # The count bound keeps memory bounded at any rate: at 20,000 requests/s a 600 s window held
    # 12 million answers (~0.5 KB each) and the owners' CPU per request grew with it.
    answer_retention_s: float = 120.0
    answers_max: int = 100_000
    # Stored answers (PostgreSQL) are kept far longer than in memory, so that a late
    # retransmission still gets its original answer; past this they are deleted, keeping the
    # answers table bounded (the journal's unique key still refuses a second application).
    answer_db_retention_s: float = 7 * 24 * 3600.0
    answer_db_prune_interval_s: float = 300.0  # how often this owner prunes its vshards' answers
    provision_batch: int = 512  # subscribers per commit in provision_bulk (small: less heap churn)
    load_chunk_vshards: int = 8  # vshards loaded per read: bounds the load's memory peak
    pool_max: int = 2  # PostgreSQL connections of this owner for loads and reads
    # Group commits in flight at once, each on a connection of its own (actors/_flights.py):
    # a batch independent of the commits in flight is applied and committed without waiting.
    commits_in_flight: int = 2
    # Subscribers kept hot after their commit instead of packed at once (actors/_warm.py): at
    # most this many (~1 KB each over a packed record), packed once untouched for warm_idle_s.
    warm_max: int = 20_000
    warm_idle_s: float = 10.0
    # The owner process's scheduling niceness; None keeps what Ray started it with (nice 15,
    # RAY_worker_niceness). Measured on 2 cores (benchmarks/README.md, engineer O): 0 cuts an
    # owner's preemptions by the PostgreSQL backend its own commit wakes and its CPU per streamed
    # request (34 -> 31 µs), but unary, bound by the front door, lost 17 % (2,926 -> 2,419 req/s):
    # owners at full priority answer sooner, in smaller batches, which costs more per request
    # everywhere. So the default keeps Ray's; set it where owners have cores of their own.
    niceness: int | None = None
    manager_name: str = MANAGER_NAME
    namespace: str = NAMESPACE

    def __post_init__(self) -> None:
        for name in (
            "batch_max",
            "queue_max",
            "submit_max",
            "pool_max",
            "commits_in_flight",
            "load_chunk_vshards",
            "provision_batch",
            "answers_max",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warm_max < 0:
            raise ValueError(f"warm_max must be >= 0, got {self.warm_max}")
        if self.niceness is not None and not -20 <= self.niceness <= 19:
            raise ValueError(f"niceness must be in -20..19 or None, got {self.niceness}")
        for name in (
            "ready_wait_s",
            "forward_timeout_s",
            "sweep_interval_s",
            "answer_retention_s",
            "answer_db_retention_s",
            "answer_db_prune_interval_s",
            "warm_idle_s",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.answer_db_retention_s < self.answer_retention_s:
            raise ValueError(
                "answer_db_retention_s must be >= answer_retention_s (the database is the "
                f"longer memory), got {self.answer_db_retention_s} < {self.answer_retention_s}"
            )


Item = OwnerRequest | Forwarded | JoinRemote


@dataclass(eq=False)
class _Job:
    """Work for the writer: requests with the future their caller awaits, or a control step."""

    kind: str  # "requests" | "sweep" | "remap"
    items: list[Item] = field(default_factory=list)
    future: asyncio.Future[list[OwnerReply]] | None = None
    new_map: ShardMap | None = None
    span: Any = None  # the caller's batch span when tracing (the commit links to it)
    # The vshard of each item when the caller already knew it (submit's classification), so the
    # step does not hash the routing key again; None: computed when applied.
    vshards: list[int] | None = None


class _Signal:
    """``asyncio.Event``'s ``set``/``clear``/``wait`` for the one writer task, bound to a loop.

    Why not ``asyncio.Event``: its ``wait`` looks the running loop up on every call, and Python
    3.11's loop lookup is a ``getpid()`` system call (~1 µs here, several times per batch).
    """

    __slots__ = ("_is_set", "_loop", "_waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._is_set = False
        self._waiter: asyncio.Future[None] | None = None

    def set(self) -> None:
        self._is_set = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def clear(self) -> None:
        self._is_set = False

    def is_set(self) -> bool:
        return self._is_set

    async def wait(self) -> None:
        if self._is_set:
            return
        waiter = self._waiter = self._loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None


def _bypass_ray_wrappers(owner: object) -> None:
    """Bind the private methods of ``owner``'s class on ``owner`` itself, without Ray's wrappers.

    Ray wraps every method of an actor class for its own tracing (``_inject_tracing_into_class``),
    the owner's internal helpers included: each internal call then goes through a wrapper, and
    each internal ``await`` through one more coroutine. Those wrappers only act on a call from
    another process that carries a trace context, which an internal call never does, so binding
    the wrapped functions on the instance (instance attributes come before the class's) changes
    nothing but the cost: ~15 wrapper calls per batch plus one per request (``_classify``).
    Overrides in a subclass are what is bound (looked up on the instance's class).
    """
    cls = type(owner)
    for name in dir(cls):
        if not name.startswith("_") or name.startswith("__"):
            continue
        if not inspect.isfunction(inspect.getattr_static(cls, name)):
            continue  # static methods, properties, data: Ray leaves them alone
        setattr(owner, name, _unwrapped(owner, name))


def _unwrapped(owner: object, name: str) -> Any:
    """The method ``name`` of ``owner`` bound to it, without Ray's tracing wrapper."""
    function = inspect.unwrap(
        inspect.getattr_static(type(owner), name),
        stop=lambda f: not getattr(f, "__ray_tracing_wrapped__", False),
    )
    return types.MethodType(function, owner)


def _set_niceness(niceness: int) -> None:
    """Set every thread of this process to ``niceness`` (Linux keeps it per thread; threads
    started later inherit it from their creator). Lowering it needs CAP_SYS_NICE (or a nice
    rlimit): without, the owner logs why and keeps the niceness it has."""
    try:
        threads = [int(tid) for tid in os.listdir("/proc/self/task")]
    except (OSError, ValueError):
        threads = [0]  # 0: the calling thread (the event loop's: __init__ runs on it)
    for tid in threads:
        try:
            if os.getpriority(os.PRIO_PROCESS, tid) != niceness:
                os.setpriority(os.PRIO_PROCESS, tid, niceness)
        except ProcessLookupError:
            continue  # the thread ended meanwhile
        except OSError as exc:
            log.warning("cannot set the owner's niceness to %d: %s", niceness, exc)
            return


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _rss_bytes() -> int:
    """This process's resident set size (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _malloc_trim() -> None:
    """Give glibc's free heap memory back to the OS (a no-op elsewhere)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class ShardOwner:
    """The shard owner's logic; :func:`owner_actor` makes it a Ray actor.

    All state changes happen on one writer task (``_run``); Ray's async actor runs the public
    methods concurrently on the same event loop, and they only classify, queue and wait.
    """

    def __init__(self, name: str, config: OwnerConfig) -> None:
        if not name:
            raise ValueError("name must not be empty")
        tune_gc()  # a long-lived server with a large, stable heap (actors/_gc.py)
        if config.niceness is not None:
            _set_niceness(config.niceness)
        _bypass_ray_wrappers(self)
        loop = asyncio.get_running_loop()  # Ray async actors run __init__ on their event loop
        self._loop = loop  # cached: each asyncio loop lookup is a getpid() call in Python 3.11
        self._name = name
        self._config = config
        self._store = Store(
            config.dsn,
            min_size=1,
            max_size=config.pool_max,
            answer_horizon=timedelta(seconds=config.answer_retention_s),
            answer_load_max=config.answers_max,  # a takeover reads no more than a sweep keeps
            writers=config.commits_in_flight,
        )
        self._store_open = False
        self._directory = Directory()
        self._warm = WarmSet(config.warm_max, config.warm_idle_s)  # hot after commit (_warm.py)
        self._state = self._directory.new_state()
        self._guests: set[str] = set()
        self._catalog: Catalog = builtin_catalog()
        self._epochs: dict[int, int] = {}
        self._map: ShardMap | None = None  # the map whose vshards this owner holds
        self._route_map: ShardMap | None = None  # the newest map seen, for forwarding
        self._handles: dict[str, Any] = {}
        self._queue: deque[_Job] = deque()
        self._queued = 0
        self._flights: list[Flight] = []  # commits in flight, oldest first
        self._busy: set[str] = set()  # keys of commits in flight; read via _busy_keys()
        self._failed: list[Flight] = []  # settled with an error: handled once all have settled
        self._wakeup = _Signal(loop)
        self._ready = asyncio.Event()
        self._needs_load = True
        self._reload_vshards: set[int] = set()  # touched by a failed commit: reload before serving
        self._recheck_map = False  # lost a vshard to a stale epoch: ask the manager
        # Idempotency keys known applied whose answers are no longer retained -> the refusal.
        self._gone: OrderedDict[str, str] = OrderedDict()
        self._closing = False
        self._last_error = ""
        self._load_seconds = 0.0
        self._loads = 0
        self._commits = 0
        self._sweep_queued = False
        self._answers_pruned_at = time.monotonic()
        self._tasks = [loop.create_task(self._run()), loop.create_task(self._sweep_loop())]
        # Charging batches from front doors also arrive directly (actors/channel.py): same submit.
        host: str = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
        submit = _unwrapped(self, "submit")  # without Ray's wrapper, see _bypass_ray_wrappers
        self._channel = ChannelServer(
            submit, host=host, traced=self._submit_traced, fast=self._submit_now
        )
        self._channel.start_soon()

    # -- public methods (Ray calls) ---------------------------------------------------------

    async def ping(self) -> str:
        return self._name

    async def endpoint(self) -> Endpoint:
        """Where front doors send charging batches directly, with this incarnation's secret
        (handed out over Ray's authenticated call only; a restart makes a new one)."""
        return await self._channel.start()

    async def ready(self, timeout_s: float = 60.0) -> bool:
        """Wait until the owner holds and has loaded its vshards (for start-up and tests)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), timeout_s)
        return self._ready.is_set()

    async def status(self) -> OwnerStatus:
        return OwnerStatus(
            name=self._name,
            ready=self._ready.is_set(),
            map_version=self._map.version if self._map else 0,
            vshards=tuple(sorted(self._epochs)),
            epochs=dict(self._epochs),
            subscribers=len(self._state.subscribers) - len(self._guests),
            accounts=len(self._state.accounts),
            sessions=len(self._state.sessions),
            answers=len(self._state.answers),
            load_seconds=self._load_seconds,
            loads=self._loads,
            commits=self._commits,
            last_error=self._last_error,
            pid=os.getpid(),
        )

    async def submit(self, requests: Sequence[OwnerRequest]) -> list[OwnerReply]:
        """Charge/provision/query one micro-batch; one reply per request, in order.

        Call with ``.options(max_task_retries=0)``: on an unknown outcome the caller retries
        the same request (same idempotency key), which the domain makes harmless.
        """
        count = len(requests)
        if count == 0:
            return []
        if count > self._config.submit_max:
            message = f"a batch holds at most {self._config.submit_max} requests, got {count}"
            return [Rejected(INVALID_ARGUMENT, "requests", message)] * count
        if not await self._wait_ready():
            return [Unavailable(self._not_ready())] * count
        current = self._map
        assert current is not None
        replies: list[OwnerReply | None] = [None] * count
        local: list[int] = []
        vshards: list[int] = []  # of the local requests, computed once here
        forwards: list[tuple[int, Forwarded]] = []
        joins: list[tuple[int, Forwarded]] = []
        classify = self._classify
        for index, request in enumerate(requests):
            replies[index] = classify(request, current, index, local, vshards, forwards, joins)
        waits: list[asyncio.Future[None]] = []
        if local and not forwards and not joins:  # the usual batch: no task, no gather
            items: list[Any]
            if len(local) == count and isinstance(requests, list):
                items = requests  # all local (the usual case): no copy
            else:
                items = [requests[i] for i in local]
            await self._fill(replies, local, items, vshards)
        elif local:
            waits.append(
                asyncio.ensure_future(
                    self._fill(replies, local, [requests[i] for i in local], vshards)
                )
            )
        if forwards:
            waits.append(asyncio.ensure_future(self._fill_forwarded(replies, forwards)))
        if joins:
            waits.append(asyncio.ensure_future(self._fill_joins(replies, joins)))
        if waits:
            await asyncio.gather(*waits)
        # One C pickle of the whole reply list instead of Ray's cloudpickle walk per reply.
        return PickledBatch(r if r is not None else Unavailable("no reply; retry") for r in replies)

    def _submit_now(self, requests: list[Any]) -> asyncio.Future[list[OwnerReply]] | None:
        """The usual channel call taken without a task: the owner is ready and every request is
        local, so the call is one job whose future resolves to the reply list, in order (after
        its commit, like :meth:`submit`'s). None when anything else applies (not ready, a
        refusal, a forward, a join, a bound reached): the channel then runs :meth:`submit`,
        which classifies again (classification changes nothing) and answers all of it.
        """
        count = len(requests)
        if (
            not count
            or count > self._config.submit_max
            or self._queued + count > self._config.queue_max
            or self._closing
            or not self._ready.is_set()
        ):
            return None
        current = self._map
        assert current is not None
        local: list[int] = []
        vshards: list[int] = []
        forwards: list[tuple[int, Forwarded]] = []
        joins: list[tuple[int, Forwarded]] = []
        classify = self._classify
        for index, request in enumerate(requests):
            if classify(request, current, index, local, vshards, forwards, joins) is not None:
                return None
        if forwards or joins:
            return None
        return self._queue_requests(requests, vshards)

    async def _submit_traced(
        self, requests: Sequence[OwnerRequest], headers: Mapping[str, str]
    ) -> list[OwnerReply]:
        """:meth:`submit` inside ``billing.owner.batch``, the child of the front door's span
        whose context ``headers`` carry (a traced channel call; actors/tracing.py)."""
        with tracing.batch_span(headers, self._name, len(requests)):
            return await self.submit(requests)

    async def forwarded(self, items: Sequence[Forwarded]) -> list[OwnerReply]:
        """Owner-to-owner: apply members' requests to the accounts held here."""
        if not items:
            return []
        if not await self._wait_ready():
            return [Unavailable(self._not_ready())] * len(items)
        return await self._enqueue(list(items))

    async def provision_bulk(self, requests: Sequence[ProvisionRequest]) -> ProvisionSummary:
        """Provision many subscribers, ``provision_batch`` per commit (for the demo and load tests).

        Each request must route to this owner (else it is listed in ``not_owner``).
        """
        created = 0
        rejected: list[tuple[str, Rejected]] = []
        not_owner: list[str] = []
        step = max(1, min(self._config.provision_batch, self._config.submit_max))
        chunks = [list(requests[i : i + step]) for i in range(0, len(requests), step)]
        # One chunk at a time: concurrent chunks would merge into one big group commit, and big
        # steps leave the heap fragmented around the packed records (measured: +30 % RSS).
        results = [await self._submit_retrying(chunk) for chunk in chunks]
        freeze_loaded()  # the provisioned state is long-lived: out of the collector's reach
        _malloc_trim()
        for chunk, replies in zip(chunks, results, strict=True):
            for request, reply in zip(chunk, replies, strict=True):
                if isinstance(reply, Answered):
                    created += 1
                elif isinstance(reply, NotOwner):
                    not_owner.append(request.subscriber_id)
                elif isinstance(reply, Rejected):
                    if len(rejected) < _REJECTS_KEPT:
                        rejected.append((request.subscriber_id, reply))
                else:
                    if len(rejected) < _REJECTS_KEPT:
                        rejected.append(
                            (request.subscriber_id, Rejected("unavailable", "", reply.message))
                        )
        return ProvisionSummary(
            created=created, rejected=tuple(rejected), not_owner=tuple(not_owner)
        )

    async def _submit_retrying(self, chunk: list[ProvisionRequest]) -> list[OwnerReply]:
        """Submit, retrying what came back Unavailable (nothing acknowledged) a few times; a
        retried provisioning that had in fact committed answers ``already_exists``."""
        replies = await self.submit(chunk)
        for attempt in range(5):
            todo = [i for i, r in enumerate(replies) if isinstance(r, Unavailable)]
            if not todo:
                break
            await asyncio.sleep(0.1 * (attempt + 1))
            for i, reply in zip(todo, await self.submit([chunk[i] for i in todo]), strict=True):
                replies[i] = reply
        return replies

    async def apply_map(self, new_map: ShardMap) -> bool:
        """The manager's push of a newer map: drop vshards that moved away, take over new ones."""
        if self._route_map is None or new_map.version > self._route_map.version:
            self._route_map = new_map
        if self._map is not None and new_map.version <= self._map.version:
            return True
        future: asyncio.Future[list[OwnerReply]] = self._loop.create_future()
        self._push(_Job("remap", future=future, new_map=new_map))
        await future
        return set(self._epochs) == set(new_map.vshards_of(self._name))

    async def reload_plans(self) -> int:
        """Re-read the plan catalog (built-in templates + plans saved in the database)."""
        self._catalog = await self._load_catalog()
        return len(self._catalog.plans())

    async def trim_memory(self) -> tuple[int, int]:
        """Return freed heap pages to the OS (gc + glibc ``malloc_trim``); (RSS before, after)."""
        before = _rss_bytes()
        gc.collect()
        _malloc_trim()
        return before, _rss_bytes()

    async def shutdown(self) -> None:
        """Stop serving and close the database pool (the actor is killed afterwards)."""
        self._closing = True
        self._ready.clear()
        for task in self._tasks:
            task.cancel()
        for flight in self._flights:  # their callers get Unavailable (nothing acknowledged)
            if flight.task is not None:
                flight.task.cancel()
        self._fail_queued("owner shutting down")
        await self._channel.close()
        await self._store.close()

    # -- classification and forwarding --------------------------------------------------------

    def _classify(
        self,
        request: object,
        current: ShardMap,
        index: int,
        local: list[int],
        vshards: list[int],
        forwards: list[tuple[int, Forwarded]],
        joins: list[tuple[int, Forwarded]],
    ) -> OwnerReply | None:
        """Reply at once (refused, not owner), or add ``index`` to ``local`` (with its vshard to
        ``vshards``), ``forwards`` (the account is held elsewhere) or ``joins``.

        A known subscriber's vshard is read from its record (the record's ``vshard`` is the
        routing key's, set when it was provisioned): the key is hashed only for a subscriber
        not held here and for provisioning.
        """
        if not isinstance(request, _REQUEST_TYPES):
            return Rejected(
                INVALID_ARGUMENT, "requests", f"not an owner request: {type(request).__name__}"
            )
        key = request.routing_key
        if not isinstance(key, str) or not key:
            return Rejected(INVALID_ARGUMENT, "subscriber_id", "must be a non-empty string")
        if not isinstance(request, ProvisionRequest):
            subscriber = self._state.subscribers.get(key)
            if subscriber is None:
                vshard = vshard_of(key, current.vshard_count)
            else:
                vshard = subscriber.vshard
            if vshard not in self._epochs:
                return NotOwner(vshard, self._map_version())
            if subscriber is not None and subscriber.account_vshard not in self._epochs:
                forwards.append((index, Forwarded(request, subscriber, self._map_version())))
                return None
            local.append(index)
            vshards.append(vshard)
            return None
        vshard = vshard_of(key, current.vshard_count)
        if vshard not in self._epochs:
            return NotOwner(vshard, self._map_version())
        account = request.account_id
        if account and account != key:
            account_vshard = vshard_of(account, current.vshard_count)
            if account_vshard not in self._epochs:
                member = Subscriber(
                    subscriber_id=key,
                    vshard=vshard,
                    account_id=account,
                    account_vshard=account_vshard,
                    plan_id=request.plan_id,
                    created_at=_utcnow(),
                )
                joins.append((index, Forwarded(request, member, self._map_version())))
                return None
        local.append(index)
        vshards.append(vshard)
        return None

    async def _fill(
        self,
        replies: list[OwnerReply | None],
        where: list[int],
        items: list[Any],
        vshards: list[int] | None = None,
    ) -> None:
        for index, reply in zip(where, await self._enqueue(items, vshards), strict=True):
            replies[index] = reply

    async def _fill_forwarded(
        self, replies: list[OwnerReply | None], forwards: list[tuple[int, Forwarded]]
    ) -> None:
        results = await self._forward([f for _, f in forwards])
        for (index, _), reply in zip(forwards, results, strict=True):
            replies[index] = reply

    async def _fill_joins(
        self, replies: list[OwnerReply | None], joins: list[tuple[int, Forwarded]]
    ) -> None:
        """Joining a shared account held elsewhere: its owner validates, then we write the member."""
        validated = await self._forward([f for _, f in joins])
        writes: list[tuple[int, JoinRemote]] = []
        for (index, _), reply in zip(joins, validated, strict=True):
            if isinstance(reply, Answered) and isinstance(reply.payload, SubscriberView):
                writes.append((index, JoinRemote(reply.payload)))
            else:
                replies[index] = reply
        if writes:
            await self._fill(replies, [i for i, _ in writes], [w for _, w in writes])

    async def _forward(self, items: list[Forwarded]) -> list[OwnerReply]:
        """Send members' requests to their accounts' owners; follow map changes a few times."""
        results: list[OwnerReply] = [Unavailable("account owner not reached; retry")] * len(items)
        todo = list(range(len(items)))
        for attempt in range(3):
            route = self._route_map or self._map
            assert route is not None
            groups: dict[str, list[int]] = {}
            for i in todo:
                groups.setdefault(route.owner_of(items[i].subscriber.account_vshard), []).append(i)
            outcome = await asyncio.gather(
                *(
                    self._forward_to(target, [items[i] for i in idx])
                    for target, idx in groups.items()
                )
            )
            todo = []
            for idx, replies in zip(groups.values(), outcome, strict=True):
                for i, reply in zip(idx, replies, strict=True):
                    results[i] = reply
                    if isinstance(reply, NotOwner):
                        todo.append(i)
            if not todo or attempt == 2:
                break
            await self._refresh_route()
        for i in todo:
            results[i] = Unavailable(
                f"the owner of account vshard {items[i].subscriber.account_vshard} is moving; retry"
            )
        return results

    async def _forward_to(self, target: str, items: list[Forwarded]) -> list[OwnerReply]:
        if target == self._name:
            return await self._enqueue(list(items))
        try:
            handle = self._handle(target)
            ref = handle.forwarded.options(max_task_retries=0).remote(items)
            replies: list[OwnerReply] = await asyncio.wait_for(ref, self._config.forward_timeout_s)
            return replies
        except Exception as exc:  # actor dead/restarting, timeout: nothing known, retry is safe
            self._handles.pop(target, None)
            return [Unavailable(f"account owner {target} unreachable: {type(exc).__name__}")] * len(
                items
            )

    def _handle(self, name: str) -> Any:
        handle = self._handles.get(name)
        if handle is None:
            handle = ray.get_actor(name, namespace=self._config.namespace)
            self._handles[name] = handle
        return handle

    async def _refresh_route(self) -> None:
        with contextlib.suppress(Exception):
            fresh: ShardMap = await self._handle(self._config.manager_name).get_map.remote()
            if self._route_map is None or fresh.version > self._route_map.version:
                self._route_map = fresh

    def _vshard_count(self) -> int:
        return self._map.vshard_count if self._map is not None else 1

    def _map_version(self) -> int:
        versions = [m.version for m in (self._map, self._route_map) if m is not None]
        return max(versions, default=0)

    # -- the queue ---------------------------------------------------------------------------

    async def _wait_ready(self) -> bool:
        if self._ready.is_set():
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), self._config.ready_wait_s)
        return self._ready.is_set()

    def _not_ready(self) -> str:
        why = f": {self._last_error}" if self._last_error else ""
        return f"owner {self._name} is loading its vshards{why}"

    async def _enqueue(
        self, items: list[Item], vshards: list[int] | None = None
    ) -> list[OwnerReply]:
        if self._closing:
            return [Unavailable("owner shutting down")] * len(items)
        if self._queued + len(items) > self._config.queue_max:
            busy = f"owner {self._name} is busy ({self._queued} requests queued)"
            return [Unavailable(busy)] * len(items)
        return await self._queue_requests(items, vshards)

    def _queue_requests(
        self, items: list[Any], vshards: list[int] | None
    ) -> asyncio.Future[list[OwnerReply]]:
        """Queue ``items`` as one job for the writer; its future resolves after their commit."""
        future: asyncio.Future[list[OwnerReply]] = self._loop.create_future()
        span = tracing.current_span() if tracing.enabled() else None
        self._push(_Job("requests", items, future, None, span, vshards))
        return future

    def _push(self, job: _Job) -> None:
        self._queue.append(job)
        self._queued += len(job.items)
        self._wakeup.set()

    def _take(self) -> list[_Job]:
        """Everything queued up to ``batch_max`` requests; a control job runs alone."""
        first = self._queue.popleft()
        jobs = [first]
        total = len(first.items)
        if first.kind == "requests":
            while self._queue and self._queue[0].kind == "requests":
                size = len(self._queue[0].items)
                if total + size > self._config.batch_max:
                    break
                jobs.append(self._queue.popleft())
                total += size
        self._queued -= total
        return jobs

    def _fail_queued(self, message: str) -> None:
        while self._queue:
            job = self._queue.popleft()
            self._resolve(job, [Unavailable(message)] * len(job.items))
        self._queued = 0

    @staticmethod
    def _resolve(job: _Job, replies: list[OwnerReply]) -> None:
        if job.future is not None and not job.future.done():
            job.future.set_result(replies)

    # -- the writer ----------------------------------------------------------------------------

    async def _run(self) -> None:
        """The writer: applies batches in arrival order and commits them, up to
        ``commits_in_flight`` at once when independent (actors/_flights.py). Loads, reloads,
        control jobs and the handling of a failed commit wait until no commit is in flight."""
        backoff = 0.05
        while not self._closing:
            if self._flights and (
                self._must_recover() or (self._queue and self._queue[0].kind != "requests")
            ):
                await self._drain()
                continue
            if self._failed:
                await self._settle_failures()
                continue
            if self._needs_load:
                backoff = await self._recover("load", self._load_all, backoff)
                continue
            if self._reload_vshards or self._recheck_map:
                backoff = await self._recover("reload", self._reload_and_recheck, backoff)
                continue
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self._queue[0].kind != "requests":
                jobs = self._take()  # a control job, alone (no commit is in flight)
            elif len(self._flights) >= self._config.commits_in_flight:
                self._wakeup.clear()  # woken when a commit settles
                await self._wakeup.wait()
                continue
            elif not self._flights:  # nothing to be independent of: take, keys left for later
                jobs, keys = self._take(), None
            else:
                jobs, keys = take_independent(
                    self._queue, self._busy_keys(), self._config.batch_max, self._keys_of
                )
                if not jobs:  # everything queued waits for a commit in flight
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                self._queued -= sum(len(job.items) for job in jobs)
            try:
                if jobs[0].kind == "sweep":
                    await self._sweep()
                elif jobs[0].kind == "remap":
                    await self._remap(jobs[0])
                elif self._suspects(jobs):  # a store lookup, maybe a retry: alone
                    await self._drain()
                    if self._must_recover():
                        self._requeue(jobs)
                        continue
                    await self._process(jobs)
                else:
                    self._launch(jobs, keys)
            except Exception as exc:  # a bug: answer nothing as success, reload from the truth
                log.exception("%s: step failed", self._name)
                self._invalidate(f"step failed: {type(exc).__name__}: {exc}")
                for job in jobs:
                    self._resolve(job, [Unavailable(self._last_error)] * len(job.items))

    def _must_recover(self) -> bool:
        """A failed commit to settle, a load or reload, or a map recheck comes before serving."""
        return bool(self._failed or self._needs_load or self._reload_vshards or self._recheck_map)

    async def _recover(
        self, what: str, step: Callable[[], Awaitable[None]], backoff: float
    ) -> float:
        """Run a load or reload ``step``; the next backoff. On failure the queued requests are
        answered not-ready and the writer sleeps ``backoff`` before trying again (doubled, to 1 s)."""
        try:
            await step()
        except Exception as exc:
            self._last_error = f"{what} failed: {type(exc).__name__}: {exc}"
            log.warning("%s: %s", self._name, self._last_error)
            self._fail_queued(self._not_ready())
            await asyncio.sleep(backoff)
            return min(backoff * 2, 1.0)
        return 0.05

    async def _reload_and_recheck(self) -> None:
        if self._reload_vshards:
            await self._reload_touched()
        if self._recheck_map:
            await self._recheck()

    def _keys_of(self, items: Iterable[object], out: set[str]) -> None:
        subscribers = self._state.subscribers
        for item in items:
            item_keys(item, subscribers, out)

    def _requeue(self, jobs: list[_Job]) -> None:
        """Put taken jobs back at the head of the queue, in their order."""
        self._queue.extendleft(reversed(jobs))
        self._queued += sum(len(job.items) for job in jobs)

    def _launch(self, jobs: list[_Job], keys: set[str] | None) -> None:
        """Apply ``jobs`` (independent of every commit in flight) and start their commit; the
        callers are answered when it settles (:meth:`_fly`).

        ``keys`` are the jobs' keys (actors/_flights.py) when they were needed to take them; None
        when nothing was in flight: the flight's keys are then worked out only if another batch
        is taken, or another commit settles, while it is in flight (:meth:`_busy_keys`). Under
        one batch at a time (a front door's usual unary load) that is never: no set is built.
        """
        results, failed = self._apply(jobs)
        if failed is not None:
            self._drop_step(jobs, results, failed)
            return
        changes = self._changes_to_commit()
        if changes.is_empty():  # nothing to write (queries, refusals): nothing to wait for
            for job, replies in zip(jobs, results, strict=True):
                self._resolve(job, replies)
            return
        flight = Flight(jobs, results, changes, None)
        if keys is not None:
            changes_keys(changes, keys)
            flight.keys = keys
            self._busy |= keys
        self._flights.append(flight)
        flight.task = self._loop.create_task(self._fly(flight))

    async def _fly(self, flight: Flight) -> None:
        """Commit one batch; on success answer its callers. On a failure they get Unavailable
        (or NotOwner) at once, and the writer forgets the batch's effects once every commit in
        flight has settled (:meth:`_settle_failures`)."""
        changes = flight.changes
        try:
            flight.error = await self._store_commit(changes, flight.jobs)
            if flight.error is None:
                self._commits += 1
                self._committed(changes, self._busy_keys(but=flight))
                for job, replies in zip(flight.jobs, flight.results, strict=True):
                    self._resolve(job, replies)
        except BaseException:  # cancelled (shutdown): nothing acknowledged
            for job in flight.jobs:
                self._resolve(job, [Unavailable("owner shutting down")] * len(job.items))
            raise
        finally:
            self._flights.remove(flight)
            if flight.keys is not None:
                self._busy -= flight.keys
            error = flight.error
            if error is not None:
                self._failed.append(flight)
                if error.duplicate is None:  # answered now: nothing of it is acknowledged
                    self._resolve_after(flight.jobs, flight.results, error)
            if error is not None or self._queue:
                # The writer waits on a settle only with work queued (blocked by this commit,
                # or by the bound on commits in flight) or a failure to handle; with nothing
                # queued, the next push wakes it (one task switch fewer per batch).
                self._wakeup.set()

    def _busy_keys(self, but: Flight | None = None) -> set[str]:
        """The keys of the commits in flight (less ``but``'s), working out those not known yet
        (:meth:`_launch`). Keys are disjoint between flights (each was taken independent of
        the others), so a settled flight's are simply removed again."""
        busy = self._busy
        for flight in self._flights:
            if flight.keys is None and flight is not but:
                keys: set[str] = set()
                self._keys_of(itertools.chain.from_iterable(j.items for j in flight.jobs), keys)
                changes_keys(flight.changes, keys)
                flight.keys = keys
                busy |= keys
        if but is not None and but.keys:
            return busy - but.keys
        return busy

    async def _drain(self) -> None:
        """Wait until no commit is in flight."""
        while self._flights:
            await asyncio.wait([f.task for f in self._flights if f.task is not None])

    async def _settle_failures(self) -> None:
        """Every commit has settled and some failed: forget the failed ones' effects (their
        vshards are reloaded before anything else is served); a batch refused for a repeated
        key is resolved, applied once more, alone, and only then answered."""
        failed, self._failed = self._failed, []
        for flight in failed:
            error = flight.error
            self._discard(flight.changes, error.message, lost=error.lost_vshard)
        for flight in failed:
            error, results = flight.error, flight.results
            if error.duplicate is None:
                continue  # answered when it failed
            try:
                if await self._recover_duplicate(error.duplicate):
                    results, error = await self._apply_and_commit(flight.jobs)
            except Exception as exc:  # a bug: answer nothing as success, reload from the truth
                log.exception("%s: retrying a batch failed", self._name)
                self._invalidate(f"step failed: {type(exc).__name__}: {exc}")
                for job in flight.jobs:
                    self._resolve(job, [Unavailable(self._last_error)] * len(job.items))
                continue
            self._resolve_after(flight.jobs, results, error)

    def _resolve_after(
        self, jobs: list[_Job], results: list[list[OwnerReply]], error: _CommitError | None
    ) -> None:
        if error is not None:
            results = [
                [_after_failure(r, error, item) for r, item in zip(rs, job.items, strict=True)]
                for rs, job in zip(results, jobs, strict=True)
            ]
        for job, replies in zip(jobs, results, strict=True):
            self._resolve(job, replies)

    def _invalidate(self, why: str) -> None:
        """Drop the in-memory state (it may hold uncommitted effects): reload before serving."""
        self._last_error = why
        self._needs_load = True
        self._ready.clear()

    def _discard(self, changes: Changes, why: str, *, lost: int | None) -> None:
        """A commit failed: nothing of it is durable, so forget its effects. Every mutation the
        domain makes is recorded in ``changes`` (its contract), so reloading the vshards those
        changes touch, and forgetting the answers they remembered, restores the truth; the other
        vshards are untouched and need no reload. Serving waits until the reload is done."""
        state = self._state
        for key in changes.answers:
            state.answers.pop(key, None)
        for key in changes.balance_results:
            state.balance_results.pop(key, None)
        affected = _touched(changes)
        if lost is not None:
            self._drop({lost})  # another owner holds it now: forget it, do not reload it
            affected.discard(lost)
            self._recheck_map = True
        self._reload_vshards |= affected & set(self._epochs)
        self._last_error = why
        if self._reload_vshards:
            self._ready.clear()

    async def _reload_touched(self) -> None:
        """Reload the vshards a failed commit touched (their memory may hold its effects)."""
        started = time.perf_counter()
        vshards = set(self._reload_vshards)
        self._forget(vshards)
        await self._load_into(self._state, self._directory, sorted(vshards))
        freeze_loaded()
        self._reload_vshards -= vshards
        self._loads += 1
        self._load_seconds = time.perf_counter() - started
        if not self._reload_vshards:
            self._last_error = ""
            self._ready.set()

    def _step(self, now: datetime) -> Step:
        current = self._map
        assert current is not None
        return Step(
            state=self._state,
            catalog=self._catalog,
            epochs=self._epochs,
            vshard_count=current.vshard_count,
            map_version=self._map_version(),
            now=now,
            guests=self._guests,
        )

    async def _process(self, jobs: list[_Job]) -> None:
        """Apply and commit a group of jobs; then resolve their callers.

        A commit refused for a repeated idempotency key (:class:`DuplicateKey`: a retransmission
        whose answer this owner no longer remembers was applied again) must not poison the
        batch: the owner asks the store which keys were applied, remembers their original
        answers (or that they are gone), reloads the touched vshards and applies the batch once
        more, so the retransmission gets its original answer and moves nothing, and the innocent
        requests commit.
        """
        suspects = self._suspects(jobs)
        if suspects:
            with contextlib.suppress(Exception):  # only a shortcut: the commit still refuses
                await self._learn_applied(suspects)
        results, error = await self._apply_and_commit(jobs)
        if (
            error is not None
            and error.duplicate is not None
            and await self._recover_duplicate(error.duplicate)
        ):
            results, error = await self._apply_and_commit(jobs)
        self._resolve_after(jobs, results, error)

    def _apply(self, jobs: list[_Job]) -> tuple[list[list[OwnerReply]], str | None]:
        """Apply every request of ``jobs`` in one synchronous step; the replies, and why the
        step failed (an internal error: the whole batch is then dropped), if it did."""
        step = self._step(_utcnow())
        gone = self._gone
        results: list[list[OwnerReply]] = []
        failed: str | None = None
        for job in jobs:
            replies: list[OwnerReply] = []
            vshards: Iterable[int | None] = job.vshards or itertools.repeat(None)
            for item, vshard in zip(job.items, vshards, strict=False):
                if failed is not None:
                    replies.append(Unavailable(failed))
                    continue
                if gone:
                    key = _idempotency_key(item)
                    if key is not None and key in gone:
                        replies.append(Rejected(FAILED_PRECONDITION, "idempotency_key", gone[key]))
                        continue
                try:
                    replies.append(apply_one(step, item, vshard))
                except InternalError as exc:
                    failed = f"request failed inside the owner, batch dropped: {exc}"
                    log.error("%s: %s", self._name, failed)
                    replies.append(Rejected(INTERNAL, "", str(exc)))
            results.append(replies)
        return results, failed

    def _drop_step(self, jobs: list[_Job], results: list[list[OwnerReply]], why: str) -> None:
        """A step failed inside the domain: its effects are dropped with the whole state."""
        self._state.take_changes()
        self._invalidate(why)
        for job, replies in zip(jobs, results, strict=True):
            self._resolve(job, [_unacknowledged(r, why) for r in replies])

    async def _apply_and_commit(
        self, jobs: list[_Job]
    ) -> tuple[list[list[OwnerReply]], _CommitError | None]:
        """Apply and commit ``jobs`` alone (nothing else in flight); the replies and the error."""
        results, failed = self._apply(jobs)
        if failed is not None:
            self._state.take_changes()
            self._invalidate(failed)
            return [[_unacknowledged(r, failed) for r in rs] for rs in results], None
        return results, await self._commit()

    def _suspects(self, jobs: list[_Job]) -> list[tuple[int, str]]:
        """Charging requests that may be retransmissions this owner does not remember the answer
        of: flagged as one, or an UPDATE/TERMINATION of a session not held (ended, or its answers
        not reloaded) or numbered below what the session has seen. Their keys are looked up in
        the store before applying; a normal request costs no database round trip."""
        state = self._state
        sessions = state.sessions
        answers = state.answers
        found: list[tuple[int, str]] = []
        for job in jobs:
            for item in job.items:
                if isinstance(item, ChargeRequest):
                    request = item.request
                elif isinstance(item, Forwarded) and isinstance(item.request, ChargeRequest):
                    request = item.request.request
                else:
                    continue
                vshard: int | None = None
                if not request.retransmission:
                    kind = request.request_type
                    if kind is not RequestType.UPDATE and kind is not RequestType.TERMINATION:
                        continue  # the normal INITIAL / EVENT: no lookup
                    session = sessions.get(request.session_id)
                    if session is not None:
                        if request.request_number >= session.next_request_number:
                            continue  # the normal UPDATE / TERMINATION: no lookup
                        vshard = session.vshard
                key = request.idempotency_key
                if key in answers or key in self._gone:
                    continue
                if vshard is None:  # answers live on the account's vshard
                    if isinstance(item, Forwarded):
                        vshard = item.subscriber.account_vshard
                    else:
                        subscriber = state.subscribers.get(request.subscriber_id)
                        if subscriber is None:
                            continue
                        vshard = subscriber.account_vshard
                found.append((vshard, key))
        return found

    async def _learn_applied(self, keys: Sequence[tuple[int, str]]) -> int:
        """Ask the store which of ``keys`` were applied; remember their original answers (the
        domain then answers a repeat with them and moves nothing), or that the answer is no
        longer retained (the request is refused, never applied again). Returns how many."""
        found = await self._store.applied_answers(keys)
        state = self._state
        now = _utcnow()
        for (_, key), answer in found.items():
            if isinstance(answer, CreditControlAnswer):
                state.answers[key] = answer
            elif isinstance(answer, BalanceResult):
                state.balance_results[key] = answer
            else:
                self._gone[key] = (
                    f"request {key!r} was already applied; its answer is no longer retained"
                )
                while len(self._gone) > _GONE_KEPT:
                    self._gone.popitem(last=False)
                continue
            state.answer_log.append((now, key))  # pruned again by the retention horizon
        return len(found)

    async def _recover_duplicate(self, changes: Changes) -> bool:
        """After a commit refused a repeated key: reload the touched vshards (their memory holds
        the refused effects), then learn the applied keys' answers. True if the batch may be
        applied again; False leaves it Unavailable (the reload is then retried before serving)."""
        keys = {(e.vshard, e.idempotency_key) for e in changes.journal}
        keys.update((v, k) for k, (v, _) in changes.answers.items())
        keys.update((v, k) for k, (v, _) in changes.balance_results.items())
        try:
            if self._reload_vshards:
                await self._reload_touched()
            learned = await self._learn_applied(sorted(keys))
        except Exception as exc:
            log.warning("%s: resolving a repeated key failed: %s", self._name, exc)
            return False
        if not learned:
            log.error("%s: commit refused a repeated key the store does not report", self._name)
        return learned > 0 and not self._reload_vshards and not self._needs_load

    def _changes_to_commit(self) -> Changes:
        """What the last step changed, less guests' records (written by their own owners)."""
        changes = self._state.take_changes()
        for sid in [s for s, sub in changes.subscribers.items() if sub.vshard not in self._epochs]:
            del changes.subscribers[sid]
        return changes

    def _committed(self, changes: Changes, busy: set[str]) -> None:
        """``changes`` were just committed: pack what they provisioned (no reason to expect it
        back soon: bulk provisioning stays packed), keep the accounts they charged hot (warm,
        actors/_warm.py), packing the least recently committed past ``warm_max`` (never a key
        of another commit still in flight: ``busy``; the keys of ``changes`` themselves are
        durable now, and no other commit in flight touches them)."""
        directory, guests = self._directory, self._guests
        created = changes.subscribers
        if created:
            directory.freeze(list(created), keep=guests)
            charged: Iterable[str] = [a for a in changes.accounts if a not in created]
        else:
            charged = changes.accounts
        cold = self._warm.committed(charged, time.monotonic(), busy)
        if cold:
            directory.freeze(cold, keep=guests)

    async def _store_commit(
        self, changes: Changes, jobs: Sequence[_Job] = ()
    ) -> _CommitError | None:
        """Commit ``changes`` in ONE transaction; the error if it failed (nothing written).
        Traced as ``billing.owner.commit``, linked to the batch span of every job it serves."""
        if not tracing.enabled():
            return await self._store_commit_once(changes)
        spans = [job.span for job in jobs]
        requests = sum(len(job.items) for job in jobs)
        with tracing.commit_span(spans, self._name, requests) as span:
            error = await self._store_commit_once(changes)
            tracing.commit_outcome(span, error=None if error is None else error.message)
            return error

    async def _store_commit_once(self, changes: Changes) -> _CommitError | None:
        try:
            await self._store.commit(changes, self._epochs)
        except StoreNotOwner as exc:
            return _CommitError(str(exc), exc.vshard, self._map_version(), self._vshard_count())
        except Exception as exc:
            why = f"commit failed, nothing acknowledged: {type(exc).__name__}: {exc}"
            return _CommitError(
                why,
                None,
                self._map_version(),
                self._vshard_count(),
                changes if isinstance(exc, DuplicateKey) else None,
            )
        return None

    async def _commit(self) -> _CommitError | None:
        """Commit what the step changed (alone); on failure invalidate the touched state."""
        changes = self._changes_to_commit()
        if changes.is_empty():
            return None
        error = await self._store_commit(changes)
        if error is not None:
            self._discard(changes, error.message, lost=error.lost_vshard)
            return error
        self._commits += 1
        self._committed(changes, self._busy_keys())
        return None

    async def _sweep(self) -> None:
        self._sweep_queued = False
        now = _utcnow()
        release_orphans(self._state, now=now)
        prune_answers(
            self._state,
            now - timedelta(seconds=self._config.answer_retention_s),
            keep_at_most=self._config.answers_max,
        )
        if await self._commit() is None and not self._needs_load and not self._reload_vshards:
            # Pack what no commit touched for warm_idle_s, and what was made hot otherwise
            # (read, refused, reservation released): every hot subscriber not warm.
            self._directory.freeze(
                self._warm.idle(time.monotonic(), self._busy_keys()), keep=self._guests
            )
            self._directory.freeze_all(keep=self._guests, also_keep=self._warm.keys())
        await self._prune_stored_answers(time.monotonic())

    async def _prune_stored_answers(self, monotonic_s: float) -> None:
        """Delete this owner's stored answers past the database retention, now and then."""
        if monotonic_s - self._answers_pruned_at < self._config.answer_db_prune_interval_s:
            return
        self._answers_pruned_at = monotonic_s
        vshards = sorted(self._epochs)
        if not vshards:
            return
        try:
            deleted = await self._store.prune_answers(
                timedelta(seconds=self._config.answer_db_retention_s), vshards=vshards
            )
        except StoreError as exc:  # retried at the next interval; nothing depends on it
            log.warning("pruning stored answers failed: %s", exc)
            return
        if deleted:
            log.info(
                "pruned %d stored answers older than %.0f s",
                deleted,
                self._config.answer_db_retention_s,
            )

    async def _sweep_loop(self) -> None:
        while not self._closing:
            await asyncio.sleep(self._config.sweep_interval_s)
            if self._ready.is_set() and not self._sweep_queued:
                self._sweep_queued = True
                self._push(_Job("sweep"))

    # -- loading ---------------------------------------------------------------------------------

    async def _load_catalog(self) -> Catalog:
        catalog = builtin_catalog()
        for text in await self._store.load_plans():
            try:
                catalog = catalog.with_plan(load_plan(text, source="plans table"))
            except ValueError as exc:
                self._last_error = f"a stored plan does not load: {exc}"
        return catalog

    async def _load_all(self) -> None:
        """Take over every vshard the manager assigns this owner and load it from scratch."""
        started = time.perf_counter()
        self._ready.clear()
        if not self._store_open:
            await self._store.open()
            self._store_open = True
        current: ShardMap = await self._handle(self._config.manager_name).get_map.remote()
        mine = current.vshards_of(self._name)
        epochs = await self._store.take_over(mine, self._name) if mine else {}
        directory = Directory()
        state = directory.new_state()
        await self._load_into(state, directory, mine)
        catalog = await self._load_catalog()
        self._state, self._directory, self._epochs, self._guests = state, directory, epochs, set()
        self._warm.clear()
        self._reload_vshards = set()
        self._recheck_map = False
        self._map = current
        if self._route_map is None or current.version > self._route_map.version:
            self._route_map = current
        self._catalog = catalog
        freeze_loaded()  # collects, then the loaded state leaves the collector's reach
        _malloc_trim()  # the load's transient rows and objects are gone: give the pages back
        self._needs_load = False
        self._load_seconds = time.perf_counter() - started
        self._loads += 1
        self._last_error = ""
        self._ready.set()
        log.info("%s: holds %d vshards, loaded in %.3fs", self._name, len(mine), self._load_seconds)

    async def _remap(self, job: _Job) -> None:
        """Follow a newer map pushed by the manager."""
        new_map = job.new_map
        assert new_map is not None
        try:
            if self._map is None or new_map.version > self._map.version:
                await self._reconcile(new_map)
        except Exception as exc:
            self._invalidate(f"taking over new vshards failed: {type(exc).__name__}: {exc}")
        finally:
            self._resolve(job, [])

    async def _recheck(self) -> None:
        """After losing a vshard to a stale epoch, ask the manager what this owner should hold:
        the map may have moved it (then it stays away), or still assign it here (then this owner
        takes it back: a bumped epoch without a map change is not a legitimate move)."""
        current: ShardMap = await self._handle(self._config.manager_name).get_map.remote()
        await self._reconcile(current)
        self._recheck_map = False

    async def _reconcile(self, new_map: ShardMap) -> None:
        """Drop vshards no longer assigned here; take over (epoch bump) and load new ones."""
        mine = set(new_map.vshards_of(self._name))
        lost = set(self._epochs) - mine
        gained = sorted(mine - set(self._epochs))
        if lost:
            self._drop(lost)
        if gained:
            epochs = await self._store.take_over(gained, self._name)
            self._forget(set(gained))
            await self._load_into(self._state, self._directory, gained)
            self._epochs.update(epochs)
        self._map = new_map
        if self._route_map is None or new_map.version > self._route_map.version:
            self._route_map = new_map

    async def _load_into(
        self, state: ShardState, directory: Directory, vshards: Sequence[int]
    ) -> None:
        """Load ``vshards`` a chunk at a time, packing idle subscribers as each chunk arrives,
        so the load never holds every record as objects at once."""
        step = self._config.load_chunk_vshards
        ordered = sorted(vshards)
        for first in range(0, len(ordered), step):
            part = ShardState()
            await self._store.load(ordered[first : first + step], part)
            directory.absorb(part.subscribers, part.accounts, part.buckets, part.buckets_by_account)
            state.sessions.update(part.sessions)
            state.answers.update(part.answers)
            state.balance_results.update(part.balance_results)
            state.answer_log.extend(part.answer_log)
        state.answer_log = deque(sorted(state.answer_log))

    def _drop(self, vshards: set[int]) -> None:
        """Forget everything held for ``vshards`` (they now belong to another owner)."""
        for v in vshards:
            self._epochs.pop(v, None)
        self._reload_vshards -= vshards
        self._forget(vshards)

    def _forget(self, vshards: set[int]) -> None:
        """Drop the in-memory state of ``vshards`` (ownership unchanged)."""
        state = self._state
        self._directory.drop_vshards(vshards)
        for sid in [k for k, s in state.sessions.items() if s.vshard in vshards]:
            del state.sessions[sid]


@dataclass(frozen=True, slots=True)
class _CommitError:
    message: str
    lost_vshard: int | None
    map_version: int
    vshard_count: int
    duplicate: Changes | None = None  # the refused changes, when a key was repeated


def _touched(changes: Changes) -> set[int]:
    """Every vshard a step's changes write to."""
    vshards = {e.vshard for e in changes.journal}
    vshards.update(a.vshard for a in changes.accounts.values())
    vshards.update(b.vshard for b in changes.buckets.values())
    vshards.update(s.vshard for s in changes.subscribers.values())
    vshards.update(s.vshard for s in changes.sessions.values())
    vshards.update(changes.ended_sessions.values())
    vshards.update(v for v, _ in changes.answers.values())
    vshards.update(v for v, _ in changes.balance_results.values())
    return vshards


def _idempotency_key(item: Item) -> str | None:
    """The idempotency key of a money-moving request (None for the others)."""
    if isinstance(item, Forwarded):
        return _idempotency_key(item.request)
    if isinstance(item, ChargeRequest):
        return item.request.idempotency_key
    if isinstance(item, BalanceRequest):
        return item.command.idempotency_key
    return None


def _unacknowledged(reply: OwnerReply, why: str) -> OwnerReply:
    """A reply of a dropped batch: only refusals that changed nothing survive."""
    return reply if isinstance(reply, (Rejected, NotOwner)) else Unavailable(why)


def _after_failure(reply: OwnerReply, error: _CommitError, item: Item) -> OwnerReply:
    if not isinstance(reply, Answered):
        return reply
    if (
        error.lost_vshard is not None
        and _vshard_hint(item, error.vshard_count) == error.lost_vshard
    ):
        return NotOwner(error.lost_vshard, error.map_version)
    return Unavailable(error.message)


def _vshard_hint(item: Item, vshard_count: int) -> int:
    """The vshard a reply is about: the account's for forwarded requests, else the request's."""
    if isinstance(item, Forwarded):
        return item.subscriber.account_vshard
    if isinstance(item, JoinRemote):
        return item.view.vshard
    return vshard_of(item.routing_key, vshard_count)


def owner_actor() -> Any:
    """The Ray actor class of :class:`ShardOwner` (created with options by actors.bootstrap)."""
    return ray.remote(ShardOwner)
