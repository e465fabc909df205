"""A load generator for the Charging service: realistic sessions, over unary or streaming gRPC.

Scenarios (mixed by weight): a voice call (INITIAL asking for seconds on rating group 100, zero
to two UPDATEs reporting what was used and asking again, TERMINATION reporting the rest), an SMS
(EVENT, DIRECT_DEBITING one service unit on rating group 200) and a data session (rating group
10, octets). Every request carries a unique session id + request number, so reruns never
collide with earlier runs' idempotency keys.

Two ways to drive it:
- fixed concurrency (closed loop): ``concurrency`` requests in flight, the next sent when one is
  answered; measures throughput;
- fixed rate (open loop): requests are started on a schedule at ``rate`` per second whether or
  not earlier ones were answered (latency is measured from the scheduled start, so a stalled
  server cannot hide its queueing delay), bounded by ``in_flight_max``.

Transports: ``unary`` (one CreditControl call per request), ``stream`` (CreditControlStream,
``streams`` long-lived streams) and ``batch`` (CreditControlBatchStream, up to ``batch_size``
requests per message). Results are counted by result code name (gRPC status names for calls
that failed at the gRPC level); latencies go into a :class:`LatencyRecorder`.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import grpc

from cluster.convert import datetime_to_timestamp
from cluster.pb import billing_pb2 as pb
from cluster.pb import billing_pb2_grpc as pb_grpc

RG_VOICE = 100
RG_SMS = 200
RG_DATA = 10
SUBSCRIBER_PREFIX = "4917"
TRANSPORTS = ("unary", "stream", "batch")
SCENARIOS = ("voice", "sms", "data")
DEFAULT_MIX = {"voice": 5, "sms": 3, "data": 2}
LATENCY_SAMPLES_MAX = 2_000_000

_RESULT_NAMES = {
    value.number: value.name.removeprefix("RESULT_CODE_")
    for value in pb.ResultCode.DESCRIPTOR.values
}


def subscriber_id(index: int, prefix: str = SUBSCRIBER_PREFIX) -> str:
    """The id of the ``index``-th provisioned subscriber (shared by the demo and the loadgen)."""
    return f"{prefix}{index:08d}"


def result_name(code: int) -> str:
    return _RESULT_NAMES.get(code, str(code))


def parse_mix(text: str) -> dict[str, int]:
    """``"voice=5,sms=3,data=2"`` -> weights; raises ValueError naming what is wrong."""
    mix: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, weight = part.partition("=")
        if name not in SCENARIOS:
            raise ValueError(f"mix: unknown scenario {name!r} (known: {', '.join(SCENARIOS)})")
        try:
            mix[name] = int(weight) if weight else 1
        except ValueError:
            raise ValueError(
                f"mix: weight of {name!r} must be an integer, got {weight!r}"
            ) from None
        if mix[name] < 0:
            raise ValueError(f"mix: weight of {name!r} must be >= 0")
    if not mix or sum(mix.values()) == 0:
        raise ValueError("mix: at least one scenario needs a positive weight")
    return mix


@dataclass(slots=True)
class LatencyRecorder:
    """Latencies in seconds (a bounded sample) and results by name."""

    samples: list[float] = field(default_factory=list)
    results: Counter[str] = field(default_factory=Counter)
    count: int = 0

    def record(self, seconds: float, result: str) -> None:
        self.count += 1
        self.results[result] += 1
        if len(self.samples) < LATENCY_SAMPLES_MAX:
            self.samples.append(seconds)

    def percentile(self, fraction: float) -> float:
        if not self.samples:
            return 0.0
        ordered = sorted(self.samples)
        return ordered[min(int(fraction * len(ordered)), len(ordered) - 1)]

    def percentiles(self) -> dict[str, float]:
        if not self.samples:
            return {}
        ordered = sorted(self.samples)
        n = len(ordered)
        points = {"p50": 0.50, "p90": 0.90, "p95": 0.95, "p99": 0.99, "p99.9": 0.999}
        picked = {name: ordered[min(int(f * n), n - 1)] for name, f in points.items()}
        picked["max"] = ordered[-1]
        return picked

    def histogram(
        self, buckets_ms: tuple[float, ...] = (0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
    ) -> list[tuple[str, int]]:
        """Counts per latency bucket (upper bounds in ms), plus an overflow bucket."""
        counts = [0] * (len(buckets_ms) + 1)
        for seconds in self.samples:
            ms = seconds * 1000
            for index, bound in enumerate(buckets_ms):
                if ms <= bound:
                    counts[index] += 1
                    break
            else:
                counts[-1] += 1
        labels = [f"<= {b:g} ms" for b in buckets_ms] + [f"> {buckets_ms[-1]:g} ms"]
        return list(zip(labels, counts, strict=True))


@dataclass(frozen=True, slots=True)
class LoadConfig:
    target: str
    duration_s: float = 10.0
    transport: str = "unary"
    concurrency: int = 64
    rate: float | None = None  # open loop when set
    in_flight_max: int = 10_000
    subscribers: int = 1000
    subscriber_prefix: str = SUBSCRIBER_PREFIX
    mix: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_MIX))
    streams: int = 4
    batch_size: int = 100
    timeout_s: float = 5.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.transport not in TRANSPORTS:
            raise ValueError(
                f"transport: must be one of {', '.join(TRANSPORTS)}, got {self.transport!r}"
            )
        if self.duration_s <= 0:
            raise ValueError("duration: must be > 0 seconds")
        if self.concurrency < 1:
            raise ValueError("concurrency: must be >= 1")
        if self.rate is not None and self.rate <= 0:
            raise ValueError("rate: must be > 0 requests per second")
        if self.subscribers < 1:
            raise ValueError("subscribers: must be >= 1")
        if self.streams < 1 or not 1 <= self.batch_size <= 1000:
            raise ValueError("streams must be >= 1 and batch_size in 1..1000")


@dataclass(frozen=True, slots=True)
class LoadReport:
    config: LoadConfig
    seconds: float
    latencies: LatencyRecorder
    sessions_started: int

    @property
    def requests(self) -> int:
        return self.latencies.count

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    @property
    def ok(self) -> int:
        return sum(
            n
            for name, n in self.latencies.results.items()
            if name in ("SUCCESS", "CREDIT_LIMIT_REACHED")
        )


# ---------------------------------------------------------------------------------------------
# Scenarios: sessions as sequences of requests, the next built from the previous answer
# ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Session:
    session_id: str
    subscriber: str
    scenario: str
    updates_left: int
    number: int = 0
    granted: int = 0


class Workload:
    """Builds the next request: continues a session whose answer came back, or starts one."""

    def __init__(self, config: LoadConfig) -> None:
        self._config = config
        self._random = random.Random(config.seed)
        self._run = uuid.uuid4().hex[:8]
        self._counter = itertools.count()
        names = [name for name, weight in config.mix.items() if weight > 0]
        self._scenarios = names
        self._weights = [config.mix[name] for name in names]
        self._ready: deque[_Session] = deque()
        self.sessions_started = 0

    def next_request(self) -> tuple[pb.CreditControlRequest, _Session | None]:
        if self._ready:
            session = self._ready.popleft()
            return self._continue(session), session
        return self._start()

    def _now(self) -> pb.CreditControlRequest:
        msg = pb.CreditControlRequest()
        msg.event_time.CopyFrom(datetime_to_timestamp(datetime.now(UTC)))
        return msg

    def _start(self) -> tuple[pb.CreditControlRequest, _Session | None]:
        scenario = self._random.choices(self._scenarios, self._weights)[0]
        who = subscriber_id(
            self._random.randrange(self._config.subscribers), self._config.subscriber_prefix
        )
        session_id = f"lg-{self._run};{next(self._counter)}"
        self.sessions_started += 1
        msg = self._now()
        msg.session_id = session_id
        msg.subscriber_id = who
        if scenario == "sms":
            msg.request_type = pb.REQUEST_TYPE_EVENT
            msg.requested_action = pb.REQUESTED_ACTION_DIRECT_DEBITING
            msg.destination = "4930" + str(self._random.randrange(10**6, 10**7))
            msg.services.add(rating_group=RG_SMS).requested.service_units = 1
            return msg, None
        msg.request_type = pb.REQUEST_TYPE_INITIAL
        session = _Session(session_id, who, scenario, updates_left=self._random.randrange(3))
        if scenario == "voice":
            msg.destination = "4930" + str(self._random.randrange(10**6, 10**7))
            msg.services.add(rating_group=RG_VOICE).requested.time_s = 60
        else:
            msg.services.add(rating_group=RG_DATA).requested.total_octets = 1 << 20
        return msg, session

    def _continue(self, session: _Session) -> pb.CreditControlRequest:
        session.number += 1
        msg = self._now()
        msg.session_id = session.session_id
        msg.subscriber_id = session.subscriber
        msg.request_number = session.number
        final = session.updates_left <= 0
        msg.request_type = pb.REQUEST_TYPE_TERMINATION if final else pb.REQUEST_TYPE_UPDATE
        session.updates_left -= 1
        rating_group = RG_VOICE if session.scenario == "voice" else RG_DATA
        entry = msg.services.add(rating_group=rating_group)
        used = entry.used.add()
        portion = session.granted if not final else self._random.randint(0, session.granted)
        if session.scenario == "voice":
            used.units.time_s = portion
            if not final:
                entry.requested.time_s = 60
        else:
            used.units.total_octets = portion
            if not final:
                entry.requested.total_octets = 1 << 20
        used.reporting_reason = (
            pb.REPORTING_REASON_FINAL if final else pb.REPORTING_REASON_QUOTA_EXHAUSTED
        )
        return msg

    def answered(
        self,
        session: _Session | None,
        request: pb.CreditControlRequest,
        answer: pb.CreditControlAnswer | None,
    ) -> None:
        """Feed an answer back: a session continues only after a successful non-final answer."""
        if session is None or answer is None or request.request_type == pb.REQUEST_TYPE_TERMINATION:
            return
        if answer.result_code != pb.RESULT_CODE_SUCCESS or not answer.services:
            return
        grant = answer.services[0]
        if grant.result_code != pb.RESULT_CODE_SUCCESS:
            return
        units = grant.granted
        session.granted = units.time_s if session.scenario == "voice" else units.total_octets
        if (
            grant.HasField("final_unit")
            and grant.final_unit.action == pb.FINAL_UNIT_ACTION_TERMINATE
        ):
            session.updates_left = 0
        self._ready.append(session)


# ---------------------------------------------------------------------------------------------
# Transports: send one request, get its answer (or a gRPC status name)
# ---------------------------------------------------------------------------------------------

Send = Callable[[pb.CreditControlRequest], "asyncio.Future[pb.CreditControlAnswer]"]


class _UnaryTransport:
    def __init__(self, channel: grpc.aio.Channel, timeout_s: float) -> None:
        self._stub = pb_grpc.ChargingStub(channel)
        self._timeout_s = timeout_s

    async def call(self, msg: pb.CreditControlRequest) -> pb.CreditControlAnswer:
        answer: pb.CreditControlAnswer = await self._stub.CreditControl(
            msg, timeout=self._timeout_s
        )
        return answer

    async def close(self) -> None:
        return None


class _StreamTransport:
    """Requests over long-lived streams; answers matched by (session_id, request_number)."""

    def __init__(self, channel: grpc.aio.Channel, streams: int, batch_size: int | None) -> None:
        self._stub = pb_grpc.ChargingStub(channel)
        self._batch_size = batch_size
        self._waiting: dict[tuple[str, int], asyncio.Future[pb.CreditControlAnswer]] = {}
        self._queues: list[asyncio.Queue[pb.CreditControlRequest | None]] = [
            asyncio.Queue() for _ in range(streams)
        ]
        self._next = itertools.cycle(range(streams))
        self._tasks = [asyncio.create_task(self._run(q)) for q in self._queues]

    async def _requests(self, queue: asyncio.Queue[pb.CreditControlRequest | None]):  # type: ignore[no-untyped-def]
        while (msg := await queue.get()) is not None:
            if self._batch_size is None:
                yield msg
                continue
            batch = [msg]
            while len(batch) < self._batch_size and not queue.empty():
                extra = queue.get_nowait()
                if extra is None:
                    yield pb.CreditControlRequestBatch(requests=batch)
                    return
                batch.append(extra)
            yield pb.CreditControlRequestBatch(requests=batch)

    async def _run(self, queue: asyncio.Queue[pb.CreditControlRequest | None]) -> None:
        try:
            if self._batch_size is None:
                async for answer in self._stub.CreditControlStream(self._requests(queue)):
                    self._resolve(answer)
            else:
                async for batch in self._stub.CreditControlBatchStream(self._requests(queue)):
                    for answer in batch.answers:
                        self._resolve(answer)
        except grpc.aio.AioRpcError as error:
            for future in self._waiting.values():
                if not future.done():
                    future.set_exception(error)
            self._waiting.clear()

    def _resolve(self, answer: pb.CreditControlAnswer) -> None:
        future = self._waiting.pop((answer.session_id, answer.request_number), None)
        if future is not None and not future.done():
            future.set_result(answer)

    async def call(self, msg: pb.CreditControlRequest) -> pb.CreditControlAnswer:
        future: asyncio.Future[pb.CreditControlAnswer] = asyncio.get_running_loop().create_future()
        self._waiting[(msg.session_id, msg.request_number)] = future
        self._queues[next(self._next)].put_nowait(msg)
        return await future

    async def close(self) -> None:
        for queue in self._queues:
            queue.put_nowait(None)
        await asyncio.gather(*self._tasks, return_exceptions=True)


# ---------------------------------------------------------------------------------------------
# Drivers
# ---------------------------------------------------------------------------------------------


async def run_load(
    config: LoadConfig, progress: Callable[[float, int], None] | None = None
) -> LoadReport:
    """Drive the load for ``config.duration_s`` and report. ``progress(elapsed_s, requests)``."""
    options = [("grpc.max_receive_message_length", 8 * 1024 * 1024)]
    channel = grpc.aio.insecure_channel(config.target, options=options)
    try:
        await asyncio.wait_for(channel.channel_ready(), timeout=10)
    except TimeoutError:
        await channel.close()
        raise ConnectionError(f"no gRPC server answers at {config.target}") from None
    if config.transport == "unary":
        transport: _UnaryTransport | _StreamTransport = _UnaryTransport(channel, config.timeout_s)
    else:
        batch = config.batch_size if config.transport == "batch" else None
        transport = _StreamTransport(channel, config.streams, batch)
    workload = Workload(config)
    recorder = LatencyRecorder()
    started = time.perf_counter()
    stop_at = started + config.duration_s

    async def one(scheduled: float) -> None:
        msg, session = workload.next_request()
        answer: pb.CreditControlAnswer | None = None
        try:
            answer = await asyncio.wait_for(transport.call(msg), config.timeout_s)
            name = result_name(answer.result_code)
        except grpc.aio.AioRpcError as error:
            name = error.code().name
        except TimeoutError:
            name = "CLIENT_TIMEOUT"
        recorder.record(time.perf_counter() - scheduled, name)
        workload.answered(session, msg, answer)

    async def reporter() -> None:
        while True:
            await asyncio.sleep(0.25)
            if progress is not None:
                progress(min(time.perf_counter() - started, config.duration_s), recorder.count)

    reporting = asyncio.create_task(reporter())
    try:
        if config.rate is None:

            async def worker() -> None:
                while time.perf_counter() < stop_at:
                    await one(time.perf_counter())

            await asyncio.gather(*(worker() for _ in range(config.concurrency)))
        else:
            in_flight: set[asyncio.Task[None]] = set()
            interval = 1.0 / config.rate
            for index in itertools.count():
                scheduled = started + index * interval
                if scheduled >= stop_at:
                    break
                delay = scheduled - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                if len(in_flight) >= config.in_flight_max:
                    recorder.record(0.0, "CLIENT_OVERLOADED")
                    continue
                task = asyncio.create_task(one(scheduled))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            if in_flight:
                await asyncio.gather(*in_flight, return_exceptions=True)
    finally:
        reporting.cancel()
        elapsed = time.perf_counter() - started
        await transport.close()
        await channel.close()
    if progress is not None:
        progress(config.duration_s, recorder.count)
    return LoadReport(
        config=config,
        seconds=elapsed,
        latencies=recorder,
        sessions_started=workload.sessions_started,
    )


async def create_subscribers(
    target: str,
    count: int,
    prefix: str = SUBSCRIBER_PREFIX,
    *,
    concurrency: int = 32,
    progress: Callable[[int], None] | None = None,
) -> tuple[int, int]:
    """Create the load's subscribers over gRPC (Accounts.CreateSubscriber): half ``payg`` with
    20.00 prepaid, half ``postpaid-monthly`` with a 200.00 credit limit. Existing ids are left as
    they are. Returns (created, already existing)."""
    created = existing = 0
    indexes = iter(range(count))
    async with grpc.aio.insecure_channel(target) as channel:
        try:
            await asyncio.wait_for(channel.channel_ready(), timeout=10)
        except TimeoutError:
            raise ConnectionError(f"no gRPC server answers at {target}") from None
        stub = pb_grpc.AccountsStub(channel)

        async def worker() -> None:
            nonlocal created, existing
            for index in indexes:
                prepaid = index % 2 == 0
                request = pb.CreateSubscriberRequest(
                    subscriber_id=subscriber_id(index, prefix),
                    plan_id="payg" if prepaid else "postpaid-monthly",
                    initial_balance_micros=20_000_000 if prepaid else 0,
                    credit_limit_micros=0 if prepaid else 200_000_000,
                )
                try:
                    await stub.CreateSubscriber(request, timeout=30)
                    created += 1
                except grpc.aio.AioRpcError as error:
                    if error.code() != grpc.StatusCode.ALREADY_EXISTS:
                        raise ConnectionError(
                            f"CreateSubscriber {request.subscriber_id}: {error.code().name}:"
                            f" {error.details()}"
                        ) from None
                    existing += 1
                if progress is not None:
                    progress(created + existing)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return created, existing
