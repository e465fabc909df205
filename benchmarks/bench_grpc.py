"""Online charging over gRPC: throughput, latency and memory, each against a baseline in the same run.

Measured side by side on this machine (results in benchmarks/README.md, "Online charging over
gRPC"):

1. unary CreditControl at 64 in flight through the real front door (owners, PostgreSQL) vs a
   bare grpc.aio echo server (benchmarks/echo_server.py) driven by the same load generator the
   same way: the ratio is what the front door keeps of Python gRPC's limit;
2. streaming, durable: pre-built SMS debit events over CreditControlBatchStream (every answer
   sent after its journal entry is committed) vs the same client against the echo server;
3. latency at an open-loop 500 requests/s unary (latency from the scheduled send time);
4. a baseline a typical team would write: gRPC straight to PostgreSQL, one transaction per
   request (SELECT ... FOR UPDATE, UPDATE, INSERT journal, COMMIT), unary and streaming;
5. memory: N provisioned subscribers, resident memory of all owner processes per subscriber.

Clients run in their own processes (spawned), so a client never shares an event loop with the
server it measures. Each figure is the median of ``--rounds`` runs.

``--transport direct,ray`` (and ``--max-in-flight 1,2``) start one front door per combination in
the same process, against the same owners, and measure them one after the other in every round,
so the owner transports (the direct channel of actors/channel.py; Ray calls, the baseline) are
compared under the same conditions. CPU per request is every process of the system and the
client together (the parts are printed per run).

Usage:
    python benchmarks/bench_grpc.py                      # everything, defaults below
    python benchmarks/bench_grpc.py --only unary,stream  # a subset
    python benchmarks/bench_grpc.py --only unary,latency --transport ray,direct
    python benchmarks/bench_grpc.py --memory-subscribers 1000000 --only memory
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402

from cluster.loadgen import LoadConfig, LoadReport, run_load, subscriber_id  # noqa: E402
from cluster.pb import billing_pb2 as pb  # noqa: E402
from cluster.pb import billing_pb2_grpc as pb_grpc  # noqa: E402

PHASES = ("unary", "stream", "latency", "baseline", "memory")


# ---------------------------------------------------------------------------------------------
# Clients (each in a spawned process)
# ---------------------------------------------------------------------------------------------


def _load_child(config: LoadConfig, out: Any) -> None:
    try:
        out.put(asyncio.run(run_load(config)))
    except BaseException as error:
        out.put(f"{type(error).__name__}: {error}")


@dataclass(frozen=True)
class StreamResult:
    requests: int
    seconds: float
    results: dict[str, int]

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


async def _stream_events(
    target: str, subscribers: int, duration_s: float, streams: int, batch: int, window: int
) -> StreamResult:
    """Pre-built SMS debit events in batches over CreditControlBatchStream, ``window`` batches in
    flight per stream; client cost is serialisation only."""
    run = uuid.uuid4().hex[:8]
    now = datetime.now(UTC)
    results: dict[str, int] = {}
    counter = 0

    def make_batch(stream: int, index: int) -> pb.CreditControlRequestBatch:
        msgs = []
        for k in range(batch):
            n = (index * batch + k) * streams + stream
            msg = pb.CreditControlRequest(
                session_id=f"bs-{run};{n}",
                request_type=pb.REQUEST_TYPE_EVENT,
                request_number=0,
                subscriber_id=subscriber_id(n % subscribers),
                requested_action=pb.REQUESTED_ACTION_DIRECT_DEBITING,
                destination="4930123456",
            )
            msg.event_time.FromDatetime(now)
            msg.services.add(rating_group=200).requested.service_units = 1
            msgs.append(msg)
        return pb.CreditControlRequestBatch(requests=msgs)

    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.ChargingStub(channel)
        await asyncio.wait_for(channel.channel_ready(), 10)
        started = time.perf_counter()
        stop_at = started + duration_s

        async def one_stream(stream: int) -> None:
            nonlocal counter
            credits = asyncio.Semaphore(window)
            index = 0

            async def requests() -> AsyncIterator[pb.CreditControlRequestBatch]:
                nonlocal index
                while time.perf_counter() < stop_at:
                    await credits.acquire()
                    yield make_batch(stream, index)
                    index += 1

            async for answers in stub.CreditControlBatchStream(requests()):
                for answer in answers.answers:
                    name = pb.ResultCode.Name(answer.result_code).removeprefix("RESULT_CODE_")
                    results[name] = results.get(name, 0) + 1
                counter += len(answers.answers)
                credits.release()

        await asyncio.gather(*(one_stream(s) for s in range(streams)))
        return StreamResult(counter, time.perf_counter() - started, results)


def _stream_child(args: tuple[Any, ...], out: Any) -> None:
    try:
        out.put(asyncio.run(_stream_events(*args)))
    except BaseException as error:
        out.put(f"{type(error).__name__}: {error}")


async def in_child(target: Callable[..., None], *args: Any) -> Any:
    """Run ``target(*args, queue)`` in a spawned process; await its one result off the loop."""
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    child = context.Process(target=target, args=(*args, out), daemon=True)
    child.start()
    loop = asyncio.get_running_loop()
    result = await loop.run_in_executor(None, out.get)
    await loop.run_in_executor(None, child.join, 30)
    if isinstance(result, str):
        raise RuntimeError(f"client failed: {result}")
    return result


# ---------------------------------------------------------------------------------------------
# Baseline: gRPC straight to PostgreSQL, one transaction per request
# ---------------------------------------------------------------------------------------------

BASELINE_SCHEMA = """
CREATE TABLE IF NOT EXISTS bl_accounts (subscriber_id text PRIMARY KEY, balance bigint NOT NULL,
    reserved bigint NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS bl_sessions (session_id text PRIMARY KEY, subscriber_id text NOT NULL,
    reserved bigint NOT NULL, next_number int NOT NULL);
CREATE TABLE IF NOT EXISTS bl_journal (id bigserial PRIMARY KEY, subscriber_id text NOT NULL,
    idempotency_key text NOT NULL UNIQUE, amount bigint NOT NULL, at timestamptz NOT NULL);
"""
PRICE_PER_SECOND = 5_000  # 0.30 per minute
PRICE_PER_SMS = 50_000
PRICE_PER_MB = 10_000


class BaselineCharging(pb_grpc.ChargingServicer):
    """What a typical team writes: each request is one PostgreSQL transaction, row locks."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    async def _handle(self, r: pb.CreditControlRequest) -> pb.CreditControlAnswer:
        answer = pb.CreditControlAnswer(session_id=r.session_id, request_number=r.request_number)
        key = f"{r.session_id}#{r.request_number}"
        entry = r.services[0] if r.services else pb.ServiceUsage()
        unit_price = PRICE_PER_SECOND if entry.rating_group == 100 else PRICE_PER_MB
        async with self._pool.connection() as conn, conn.transaction():
            done = await (
                await conn.execute(
                    "SELECT amount FROM bl_journal WHERE idempotency_key = %s", (key,)
                )
            ).fetchone()
            if done is not None:
                answer.result_code = pb.RESULT_CODE_SUCCESS
                return answer
            row = await (
                await conn.execute(
                    "SELECT balance, reserved FROM bl_accounts WHERE subscriber_id = %s FOR UPDATE",
                    (r.subscriber_id,),
                )
            ).fetchone()
            if row is None:
                answer.result_code = pb.RESULT_CODE_USER_UNKNOWN
                return answer
            balance, reserved = row
            cost = 0
            release = 0
            if r.request_type == pb.REQUEST_TYPE_EVENT:
                cost = PRICE_PER_SMS
                if balance - reserved < cost:
                    answer.result_code = pb.RESULT_CODE_CREDIT_LIMIT_REACHED
                    return answer
            elif r.request_type in (pb.REQUEST_TYPE_UPDATE, pb.REQUEST_TYPE_TERMINATION):
                session = await (
                    await conn.execute(
                        "SELECT reserved FROM bl_sessions WHERE session_id = %s FOR UPDATE",
                        (r.session_id,),
                    )
                ).fetchone()
                if session is None:
                    answer.result_code = pb.RESULT_CODE_UNKNOWN_SESSION_ID
                    return answer
                release = session[0]
                for used in entry.used:
                    units = used.units.time_s or used.units.total_octets // (1 << 20)
                    cost += units * unit_price
                cost = min(cost, balance)
            grant = 0
            hold = 0
            if r.request_type != pb.REQUEST_TYPE_TERMINATION and entry.HasField("requested"):
                want = entry.requested.time_s or entry.requested.total_octets // (1 << 20) or 1
                if r.request_type != pb.REQUEST_TYPE_EVENT:
                    free = balance - cost - (reserved - release)
                    grant = max(min(want, free // unit_price), 0)
                    hold = grant * unit_price
            await conn.execute(
                "UPDATE bl_accounts SET balance = balance - %s, reserved = reserved - %s + %s"
                " WHERE subscriber_id = %s",
                (cost, release, hold, r.subscriber_id),
            )
            await conn.execute(
                "INSERT INTO bl_journal (subscriber_id, idempotency_key, amount, at)"
                " VALUES (%s, %s, %s, now())",
                (r.subscriber_id, key, -cost),
            )
            if r.request_type == pb.REQUEST_TYPE_INITIAL:
                await conn.execute(
                    "INSERT INTO bl_sessions VALUES (%s, %s, %s, 1)",
                    (r.session_id, r.subscriber_id, hold),
                )
            elif r.request_type == pb.REQUEST_TYPE_UPDATE:
                await conn.execute(
                    "UPDATE bl_sessions SET reserved = %s WHERE session_id = %s",
                    (hold, r.session_id),
                )
            elif r.request_type == pb.REQUEST_TYPE_TERMINATION:
                await conn.execute("DELETE FROM bl_sessions WHERE session_id = %s", (r.session_id,))
        answer.result_code = (
            pb.RESULT_CODE_SUCCESS
            if grant
            or cost
            or not entry.HasField("requested")
            or r.request_type == pb.REQUEST_TYPE_EVENT
            else pb.RESULT_CODE_CREDIT_LIMIT_REACHED
        )
        answer.cost_micros = cost
        grant_msg = answer.services.add(
            rating_group=entry.rating_group, result_code=answer.result_code
        )
        if entry.rating_group == 100:
            grant_msg.granted.time_s = grant
        else:
            grant_msg.granted.total_octets = grant << 20
        return answer

    async def CreditControl(self, request: Any, context: Any) -> pb.CreditControlAnswer:
        return await self._handle(request)

    async def CreditControlBatchStream(self, request_iterator: Any, context: Any) -> Any:
        async for batch in request_iterator:
            answers = await asyncio.gather(*(self._handle(r) for r in batch.requests))
            yield pb.CreditControlAnswerBatch(answers=answers)


async def serve_baseline(port: int, dsn: str, subscribers: int) -> None:
    import signal

    from psycopg_pool import AsyncConnectionPool

    pool = AsyncConnectionPool(dsn, min_size=8, max_size=8, open=False)
    await pool.open()
    async with pool.connection() as conn:
        await conn.execute(BASELINE_SCHEMA)
        await conn.execute("TRUNCATE bl_accounts, bl_sessions, bl_journal")
        async with conn.cursor().copy(
            "COPY bl_accounts (subscriber_id, balance) FROM STDIN"
        ) as copy:
            for i in range(subscribers):
                await copy.write_row((subscriber_id(i), 1_000_000_000))
    server = grpc.aio.server()
    pb_grpc.add_ChargingServicer_to_server(BaselineCharging(pool), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(0)
    await pool.close()


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def subprocess_server(args: list[str], ready: str) -> Any:
    process = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    if ready not in line:
        process.kill()
        raise RuntimeError(f"server did not start: {line!r}")
    try:
        yield process
    finally:
        process.terminate()
        process.wait(10)


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _cpu_ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])  # utime + stime


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


class CpuMeter:
    """CPU seconds spent by each part of the system between start() and stop().

    Parts: the front door (this process: gRPC server + Ray driver), the owners, PostgreSQL (the
    embedded server's processes), the load generator (spawned client) and the rest of Ray.
    """

    def __init__(self, postmaster: int | None) -> None:
        self._postmaster = postmaster
        self._start: dict[int, int] = {}

    def _groups(self) -> dict[int, str]:
        me = os.getpid()
        groups = {me: "frontdoor"}
        for pid in descendants(me):
            cmd = _cmdline(pid)
            if cmd.startswith(b"ray::ShardOwner"):
                groups[pid] = "owners"
            elif b"spawn_main" in cmd:
                groups[pid] = "client"
            elif b"echo_server" in cmd or b"--serve-baseline" in cmd:
                groups[pid] = "other server"
            else:
                groups[pid] = "ray (other)"
        if self._postmaster:
            groups[self._postmaster] = "postgresql"
            for pid in descendants(self._postmaster):
                groups[pid] = "postgresql"
        return groups

    def start(self) -> None:
        self._start = {pid: _cpu_ticks(pid) for pid in self._groups()}

    def stop(self) -> dict[str, float]:
        ticks = os.sysconf("SC_CLK_TCK")
        used: dict[str, float] = {}
        for pid, group in self._groups().items():
            delta = _cpu_ticks(pid) - self._start.get(pid, 0)
            used[group] = used.get(group, 0.0) + delta / ticks
        return used


def owner_rss_bytes() -> dict[int, int]:
    """RSS of this process's ShardOwner worker processes (descendants named ray::ShardOwner)."""
    sizes = {}
    for pid in descendants(os.getpid()):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if not cmdline.startswith(b"ray::ShardOwner"):
                continue
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    sizes[pid] = int(line.split()[1]) * 1024
        except OSError:
            continue
    return sizes


def per_request(used: dict[str, float], requests: int) -> str:
    parts = sorted(used.items(), key=lambda item: -item[1])
    total = sum(used.values())
    shown = ", ".join(f"{name} {seconds / max(requests, 1) * 1e6:.0f}" for name, seconds in parts)
    return f"{total / max(requests, 1) * 1e6:.0f} µs total ({shown})"


def _at(ordered: list[float], quantile: float) -> float:
    """The ``quantile`` of sorted seconds, in milliseconds."""
    return ordered[min(len(ordered) - 1, int(len(ordered) * quantile))] * 1e3


def cpu_us(used: dict[str, float], requests: int) -> float:
    """CPU microseconds per request, every process of the system and the client together."""
    return sum(used.values()) / max(requests, 1) * 1e6


def mean_size(batches: list[Any]) -> float:
    return sum(b.size for b in batches) / max(len(batches), 1)


def batch_summary(batches: list[Any]) -> str:
    """Batch sizes (mean, p50, p95, max) and the time batches waited for more (flush on idle)."""
    sizes = sorted(b.size for b in batches)
    held = sorted(getattr(b, "held", 0.0) for b in batches)
    waited = sum(1 for h in held if h > 0)
    return (
        f"{len(sizes):,} batches, size mean {mean_size(batches):.2f} p50 {sizes[len(sizes) // 2]}"
        f" p95 {sizes[min(len(sizes) - 1, int(len(sizes) * 0.95))]} max {sizes[-1]};"
        f" {waited / len(sizes):.0%} waited for more (held p50 {_at(held, 0.5):.2f}"
        f" p95 {_at(held, 0.95):.2f} ms)"
    )


def fmt(report: LoadReport) -> str:
    p = report.latencies.percentiles()
    ok = sum(report.latencies.results.values())
    return (
        f"{report.throughput:8,.0f} req/s  p50 {p.get('p50', 0) * 1e3:6.2f} ms"
        f"  p95 {p.get('p95', 0) * 1e3:6.2f} ms  p99 {p.get('p99', 0) * 1e3:6.2f} ms"
        f"  ({ok:,} requests: {dict(report.latencies.results.most_common(4))})"
    )


# ---------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------


async def provision(handles: Any, count: int, chunk: int = 20_000) -> float:
    from actors.bootstrap import provision_bulk_async
    from actors.messages import ProvisionRequest

    started = time.perf_counter()
    for start in range(0, count, chunk):
        part = [
            ProvisionRequest(subscriber_id(i), "payg", initial_balance_micros=1_000_000_000)
            for i in range(start, min(start + chunk, count))
        ]
        summary = await provision_bulk_async(handles, part)
        if summary.rejected or summary.not_owner:
            raise RuntimeError(
                f"provisioning failed: {summary.rejected[:3]} {summary.not_owner[:3]}"
            )
    return time.perf_counter() - started


async def bench(args: argparse.Namespace) -> None:
    from cluster.bootstrap import bring_up, start_frontdoor

    phases = set(args.only.split(",")) if args.only else set(PHASES)
    unknown = phases - set(PHASES)
    if unknown:
        raise SystemExit(f"--only: unknown phases {sorted(unknown)} (known: {', '.join(PHASES)})")
    print(
        f"# bench_grpc {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}"
    )
    work = Path(tempfile.mkdtemp(prefix="bench-grpc-"))
    work.chmod(0o755)
    system = bring_up(
        data_dir=work / "pg",
        owners=args.owners,
        num_cpus=2,
        object_store_mb=200,
    )
    figures: dict[str, list[float]] = {}

    def note(name: str, value: float) -> None:
        figures.setdefault(name, []).append(value)

    try:
        subscribers = args.subscribers
        if phases - {"memory"}:
            seconds = await provision(system.handles, subscribers)
            print(f"provisioned {subscribers:,} subscribers in {seconds:.1f} s")
        doors: dict[str, Any] = {}
        holds = args.batch_hold_us.split(",") if args.batch_hold_us else [None]
        for transport in args.transport.split(","):
            for in_flight in (int(m) for m in args.max_in_flight.split(",")):
                for hold in holds:
                    label = f"{transport}/{in_flight}" + ("" if hold is None else f"/hold{hold}")
                    hold_us, _, hold_rest = (hold or "").partition(":")
                    hold_min, _, hold_target = hold_rest.partition(":")
                    doors[label] = await start_frontdoor(
                        port=0,
                        batch_max=args.frontdoor_batch_max,
                        transport=transport,
                        max_in_flight=in_flight,
                        batch_hold_s=int(hold_us) / 1e6 if hold_us else None,
                    )
                    if hold_min:  # batchers are built at first use, from these settings
                        doors[label].dispatcher._hold_min = int(hold_min)
                    if hold_target:
                        doors[label].dispatcher._hold_target = int(hold_target)
        print(f"front doors (transport/batches in flight per owner): {', '.join(doors)}")
        batches: dict[str, list[Any]] = {label: [] for label in doors}
        for label, door in doors.items():
            # Owner batch round trips (the batcher's view: send -> replies), for the latency
            # breakdown. Batchers are built on first use and take the dispatcher's callback then.
            recorded = door.dispatcher._on_batch

            def record(batch: Any, into: list[Any] = batches[label], then: Any = recorded) -> None:
                into.append(batch)
                then(batch)

            door.dispatcher._on_batch = record
        postmaster = system.embedded.status()["pid"] if system.embedded is not None else None
        meter = CpuMeter(postmaster)
        echo_port = free_port()
        base_port = free_port()
        echo = subprocess_server(["benchmarks/echo_server.py", "--port", str(echo_port)], "echo")
        baseline = (
            subprocess_server(
                [__file__, "--serve-baseline", str(base_port), system.dsn, str(subscribers)],
                "ready",
            )
            if "baseline" in phases
            else contextlib.nullcontext()
        )
        with echo, baseline:
            echo_target = f"127.0.0.1:{echo_port}"
            base_target = f"127.0.0.1:{base_port}"

            def unary(target: str) -> LoadConfig:
                return LoadConfig(
                    target=target,
                    duration_s=args.duration,
                    transport="unary",
                    concurrency=64,
                    subscribers=subscribers,
                )

            stream_args = (subscribers, args.duration, args.streams, args.batch, args.window)
            for round_ in range(args.rounds):
                print(f"## round {round_ + 1}/{args.rounds}")
                # Several front doors: every other round measures them in reverse order, so
                # none always runs first (or right after the echo server) on a shared machine.
                ordered = list(doors.items())
                if round_ % 2:
                    ordered.reverse()
                if "unary" in phases:
                    meter.start()
                    r = await in_child(_load_child, unary(echo_target))
                    print(f"unary echo      {fmt(r)}")
                    print(f"  cpu per request: {per_request(meter.stop(), r.requests)}")
                    note("unary_echo", r.throughput)
                    for label, door in ordered:
                        batches[label].clear()
                        meter.start()
                        r = await in_child(_load_child, unary(door.address))
                        used = meter.stop()
                        print(f"unary frontdoor [{label}] {fmt(r)}")
                        print(f"  cpu per request: {per_request(used, r.requests)}")
                        note(f"unary_frontdoor[{label}]", r.throughput)
                        note(f"unary_cpu_us[{label}]", cpu_us(used, r.requests))
                        if batches[label]:
                            size = batch_summary(batches[label])
                            print(f"  owner batches: {size}")
                            note(f"unary_batch_size[{label}]", mean_size(batches[label]))
                if "stream" in phases:
                    s = await in_child(_stream_child, (echo_target, *stream_args))
                    print(f"stream echo      {s.rate:9,.0f} req/s  {s.results}")
                    note("stream_echo", s.rate)
                    for label, door in ordered:
                        meter.start()
                        s = await in_child(_stream_child, (door.address, *stream_args))
                        used = meter.stop()
                        print(f"stream frontdoor [{label}] {s.rate:9,.0f} req/s  {s.results}")
                        print(f"  cpu per request: {per_request(used, s.requests)}")
                        note(f"stream_frontdoor[{label}]", s.rate)
                        note(f"stream_cpu_us[{label}]", cpu_us(used, s.requests))
                if "latency" in phases:
                    for label, door in ordered:
                        config = LoadConfig(
                            target=door.address,
                            duration_s=args.duration,
                            transport="unary",
                            rate=args.latency_rate,
                            subscribers=subscribers,
                        )
                        batches[label].clear()
                        meter.start()
                        r = await in_child(_load_child, config)
                        used = meter.stop()
                        p = r.latencies.percentiles()
                        print(f"open loop {args.latency_rate:g}/s [{label}] {fmt(r)}")
                        print(f"  cpu per request: {per_request(used, r.requests)}")
                        trips = sorted(b.seconds for b in batches[label])
                        if trips:
                            size = sum(b.size for b in batches[label]) / len(trips)
                            print(
                                f"  owner batch round trip: p50 {_at(trips, 0.5):.2f} p95"
                                f" {_at(trips, 0.95):.2f} p99 {_at(trips, 0.99):.2f} ms,"
                                f" {len(trips):,} batches of {size:.2f} requests on average"
                            )
                            print(f"  owner batches: {batch_summary(batches[label])}")
                            note(f"latency_batch_size[{label}]", size)
                            note(f"batch_rtt_p50_ms[{label}]", _at(trips, 0.5))
                            note(f"batch_rtt_p95_ms[{label}]", _at(trips, 0.95))
                        note(f"latency_p50_ms[{label}]", p["p50"] * 1e3)
                        note(f"latency_p95_ms[{label}]", p["p95"] * 1e3)
                        note(f"latency_p99_ms[{label}]", p["p99"] * 1e3)
                        note(f"latency_cpu_us[{label}]", cpu_us(used, r.requests))
                if "baseline" in phases:
                    r = await in_child(_load_child, unary(base_target))
                    print(f"unary baseline  {fmt(r)}")
                    note("unary_baseline", r.throughput)
                    s = await in_child(_stream_child, (base_target, *stream_args))
                    print(f"stream baseline  {s.rate:9,.0f} req/s  {s.results}")
                    note("stream_baseline", s.rate)
        for door in doors.values():
            await door.stop()
        if "memory" in phases:
            await memory(system, args, note)
    finally:
        system.stop()
        shutil.rmtree(work, ignore_errors=True)
    print("\n## medians")
    med = {name: statistics.median(values) for name, values in figures.items()}
    for name, value in med.items():
        print(f"{name:24} {value:12,.2f}   (runs: {', '.join(f'{v:,.1f}' for v in figures[name])})")
    labels = [k[len("unary_frontdoor[") : -1] for k in med if k.startswith("unary_frontdoor[")]
    labels += [k[len("stream_frontdoor[") : -1] for k in med if k.startswith("stream_frontdoor[")]
    labels += [k[len("latency_p95_ms[") : -1] for k in med if k.startswith("latency_p95_ms[")]
    for label in dict.fromkeys(labels):
        unary_rate = med.get(f"unary_frontdoor[{label}]")
        stream_rate = med.get(f"stream_frontdoor[{label}]")
        if unary_rate and "unary_echo" in med:
            print(
                f"[{label}] unary frontdoor / echo      {unary_rate / med['unary_echo']:.2f}  (target >= 0.6)"
            )
        if stream_rate:
            print(
                f"[{label}] stream frontdoor            {stream_rate:,.0f} req/s  (target >= 20,000)"
            )
        if stream_rate and "stream_baseline" in med:
            print(
                f"[{label}] stream frontdoor / baseline {stream_rate / med['stream_baseline']:.2f}  (target >= 5)"
            )
        if unary_rate and "unary_baseline" in med:
            print(f"[{label}] unary frontdoor / baseline  {unary_rate / med['unary_baseline']:.2f}")
        if f"latency_p95_ms[{label}]" in med:
            print(
                f"[{label}] open loop {args.latency_rate:g}/s p50/p95/p99 "
                + "/".join(f"{med[f'latency_{q}_ms[{label}]']:.1f}" for q in ("p50", "p95", "p99"))
                + " ms  (target p95 <= 5, p99 <= 10)"
            )


async def memory(system: Any, args: argparse.Namespace, note: Callable[[str, float], None]) -> None:
    """Provision ``--memory-subscribers`` more subscribers; RSS growth of the owners per subscriber."""
    import gc

    gc.collect()
    before = owner_rss_bytes()
    if not before:
        print("memory: no ShardOwner processes found among this process's descendants")
        return
    total_before = sum(before.values())
    offset = 10_000_000  # ids apart from the load phases' subscribers
    count = args.memory_subscribers
    started = time.perf_counter()
    from actors.bootstrap import provision_bulk_async
    from actors.messages import ProvisionRequest

    chunk = 20_000
    for start in range(0, count, chunk):
        part = [
            ProvisionRequest(subscriber_id(offset + i), "payg", initial_balance_micros=5_000_000)
            for i in range(start, min(start + chunk, count))
        ]
        summary = await provision_bulk_async(system.handles, part)
        if summary.rejected or summary.not_owner:
            raise RuntimeError(f"provisioning failed: {summary.rejected[:3]}")
        if (start // chunk) % 10 == 0:
            print(
                f"  provisioned {start + len(part):,} ({time.perf_counter() - started:.0f} s)",
                flush=True,
            )
    seconds = time.perf_counter() - started
    after = owner_rss_bytes()
    total_after = sum(after.values())
    per = (total_after - total_before) / count
    print(
        f"memory: {count:,} subscribers provisioned in {seconds:.0f} s ({count / seconds:,.0f}/s);"
        f" owner RSS {total_before / 2**20:,.0f} MiB -> {total_after / 2**20:,.0f} MiB over"
        f" {len(after)} processes: {per:,.0f} B per subscriber (growth),"
        f" {total_after / count:,.0f} B per subscriber (total RSS / subscribers)"
    )
    note("memory_bytes_per_subscriber", per)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per figure (median)")
    parser.add_argument("--subscribers", type=int, default=20_000)
    parser.add_argument("--owners", type=int, default=2)
    parser.add_argument("--streams", type=int, default=2)
    parser.add_argument("--batch", type=int, default=500, help="requests per stream message")
    parser.add_argument("--window", type=int, default=8, help="batches in flight per stream")
    parser.add_argument(
        "--latency-rate", type=float, default=500.0, help="open-loop rate of the latency phase"
    )
    parser.add_argument("--memory-subscribers", type=int, default=1_000_000)
    parser.add_argument(
        "--frontdoor-batch-max", type=int, default=None, help="front door batch bound per owner"
    )
    parser.add_argument(
        "--transport",
        default="direct",
        help="how the front door reaches the owners: direct, ray, or both (direct,ray: one front"
        " door each, measured interleaved in every round)",
    )
    parser.add_argument(
        "--max-in-flight",
        default="1",
        help="batches in flight per owner; several (1,2) start one front door each",
    )
    parser.add_argument(
        "--batch-hold-us",
        default="",
        help="filling owner batches under load: the longest a batch waits, in µs, optionally"
        " :MIN requests already queued before it may wait and :TARGET it waits for (hold_min,"
        " hold_target, cluster/batching.py); several (0,3000:3:24) start one front door each;"
        " 0 = off; default: the front door's default",
    )
    parser.add_argument("--only", default="", help=f"comma-separated subset of {','.join(PHASES)}")
    parser.add_argument("--serve-baseline", nargs=3, metavar=("PORT", "DSN", "SUBSCRIBERS"))
    args = parser.parse_args()
    if args.serve_baseline:
        port, dsn, count = args.serve_baseline
        asyncio.run(serve_baseline(int(port), dsn, int(count)))
        return
    asyncio.run(bench(args))


if __name__ == "__main__":
    main()
