"""`billing chaos`: a multi-node cluster on one machine, charging load, seeded faults, an audit.

The run (``python -m failover.chaos --seed 7``, or ``billing chaos`` where the CLI hooks it in):

1. Starts a private PostgreSQL, a Ray cluster of a head and ``--nodes`` worker nodes with
   :class:`ray.cluster_utils.Cluster` (explicit ``num_cpus`` and ``object_store_memory`` per
   node; the tuned health checks of :mod:`failover.config`), the shard manager and the failover
   monitor on the head, ``--owners-per-node`` owners pinned to each worker node, and two front
   doors; provisions ``--subscribers`` prepaid subscribers.
2. Drives continuous charging sessions through the front doors (:mod:`failover.load`) and
   injects the faults of the seeded schedule (:mod:`failover.schedule`); after each owner or node
   fault a probe measures how long until the affected vshards are served again.
3. Stops the load, lets the cluster settle, reads the journal, balances and sessions from
   PostgreSQL and runs the audit (:mod:`failover.audit`) plus the store's own SQL audit.
4. Prints the tables (faults by kind; requests by result; invariant checks; takeover time per
   fault kind). Any violation: exit status 1 and the seed to replay the same schedule.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from failover.audit import AuditReport, check, load_ledger
from failover.config import Settings
from failover.schedule import (
    DRAWN_KINDS,
    Fault,
    FaultKind,
    ScheduleSpec,
    choose,
    generate,
)

log = logging.getLogger(__name__)

PLAN_ID = "payg"
OPENING_MICROS = 20_000_000  # 20 EUR per subscriber
PROBE_BUDGET_S = 60.0
PROBE_ATTEMPT_S = 0.25  # one probe attempt; bounds how finely a recovery time is measured
NODE_RESOURCE = "billing-chaos-node"


@dataclass(frozen=True, slots=True)
class ChaosOptions:
    seed: int = 1
    faults: int = 6
    interval_ms: int = 3000
    start_ms: int = 3000
    settle_s: float = 4.0
    nodes: int = 2
    nodes_max: int = 3
    owners_per_node: int = 1
    vshards: int = 64
    subscribers: int = 200
    concurrency: int = 8
    node_cpus: int = 1
    object_store_mb: int = 80
    kinds: tuple[FaultKind, ...] = DRAWN_KINDS
    move_round: int = 8  # vshards per scale-out round
    verbose: bool = False
    tamper: bool = False  # tests only: write one journal row out of band, so the audit must fail

    def spec(self) -> ScheduleSpec:
        weights = ScheduleSpec().weights
        return ScheduleSpec(
            faults=self.faults,
            interval_ms=self.interval_ms,
            start_ms=self.start_ms,
            nodes_initial=self.nodes,
            nodes_min=1,
            nodes_max=max(self.nodes_max, self.nodes),
            weights={k: w for k, w in weights.items() if k in self.kinds},
        )


@dataclass(frozen=True, slots=True)
class Recovery:
    """How long one fault kept some vshards (or the database) from being served."""

    kind: FaultKind
    at_s: float  # since the load started
    recovered_ms: float | None  # None: not served again within the probe budget
    detail: str = ""


@dataclass(slots=True)
class Move:
    """One scale-out: vshards moved, in how many rounds, when (monotonic), failed attempts."""

    vshards: int
    rounds: int
    started: float
    ended: float
    failed_attempts: int = 0  # client gRPC errors while it ran (any cause)
    rates: tuple[float, float, float] = (0.0, 0.0, 0.0)  # answers/s: 5 s before, during, 5 s after


@dataclass
class ChaosResult:
    seed: int
    schedule: list[Fault]
    injected: list[tuple[float, Fault, str]] = field(default_factory=list)
    recoveries: list[Recovery] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=dict)
    answers: int = 0
    audit: AuditReport | None = None
    store_audit: list[str] = field(default_factory=list)
    load_seconds: float = 0.0
    phases: dict[str, tuple[int, float]] = field(default_factory=dict)  # name -> (ok, seconds)
    errors: list[str] = field(default_factory=list)
    moves: list[Move] = field(default_factory=list)  # scale-out moves
    takeovers: list[dict[str, Any]] = field(default_factory=list)  # the monitor's decisions
    monitor_status: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.audit is not None and self.audit.ok and not self.store_audit and not self.errors


class ChaosCluster:
    """Everything the run started, and the operations the faults need."""

    def __init__(self, options: ChaosOptions, workdir: Path) -> None:
        self.options = options
        self.workdir = workdir
        self.settings = Settings.from_env()  # RAY_health_check_* etc. from the environment
        self.pg: Any = None
        self.dsn = ""
        self.pg_port = 0
        self.cluster: Any = None
        self.nodes: list[Any] = []  # worker nodes alive, in the order added
        self.node_owners: dict[str, list[str]] = {}  # node id -> owner names started there
        self.owner_count = 0
        self.manager: Any = None
        self.doors: list[Any] = []
        self.door_ports: list[int] = []
        self.handles: dict[str, Any] = {}
        self.frozen: dict[int, int] = {}  # fault pair -> pid
        self.monitor: Any = None
        self.reaping: list[asyncio.Task[None]] = []

    # -- bring-up ----------------------------------------------------------------------------

    def start_database(self) -> None:
        from sharding.pgserver import EmbeddedPostgres

        data = self.workdir / "pg"
        self.workdir.chmod(0o755)
        self.pg = EmbeddedPostgres(data)
        self.dsn = self.pg.start()
        self.pg_port = int(self.pg.status()["port"])

    def start_ray(self) -> None:
        import ray
        from ray.cluster_utils import Cluster

        store = self.options.object_store_mb * 1024 * 1024
        # shutdown_at_exit=False: nodes then register no signal handlers, so add_node and
        # remove_node can run in a worker thread while the event loop keeps serving; stop()
        # shuts the cluster down explicitly.
        self.cluster = Cluster(
            initialize_head=True,
            shutdown_at_exit=False,
            head_node_args={
                "num_cpus": 1,
                "object_store_memory": store,
                "include_dashboard": False,
                "_system_config": self.settings.ray_system_config(),
            },
        )
        ray.init(
            address=self.cluster.address,
            namespace=self.settings.namespace,
            log_to_driver=self.options.verbose,
            configure_logging=False,
        )
        for _ in range(self.options.nodes):
            self.nodes.append(self._new_node())

    def _new_node(self) -> Any:
        return self.cluster.add_node(
            num_cpus=self.options.node_cpus,
            object_store_memory=self.options.object_store_mb * 1024 * 1024,
        )

    def _pinned_options(self, name: str, node_id: str) -> dict[str, Any]:
        from actors.bootstrap import actor_options

        # Hard affinity: an owner lives and dies with its node, as on real machines (soft
        # affinity let Ray place owners anywhere). After a node loss Ray cannot restart it; its
        # vshards go to the owners of the surviving nodes, and new nodes bring new owners.
        return actor_options(name, self.settings.namespace, node_id=node_id)

    def _start_owners(self, node: Any) -> list[str]:
        from actors.owner import OwnerConfig, owner_actor, owner_name

        names = []
        config = OwnerConfig(dsn=self.dsn, sweep_interval_s=1.0)
        for _ in range(self.options.owners_per_node):
            name = owner_name(self.owner_count)
            self.owner_count += 1
            self.handles[name] = (
                owner_actor()
                .options(**self._pinned_options(name, node.node_id))
                .remote(name, config)
            )
            names.append(name)
        self.node_owners[node.node_id] = names
        return names

    async def start_actors(self) -> None:
        from actors.manager import manager_actor
        from actors.owner import MANAGER_NAME, owner_name
        from failover.takeover import MonitorConfig, start_monitor

        head_id = self.cluster.head_node.node_id
        names = [owner_name(i) for i in range(self.options.nodes * self.options.owners_per_node)]
        self.manager = (
            manager_actor()
            .options(**self._pinned_options(MANAGER_NAME, head_id))
            .remote(self.dsn, names, self.options.vshards, namespace=self.settings.namespace)
        )
        if not await self.manager.ready.remote(120.0):
            raise RuntimeError(f"shard manager did not start: {await self.manager.status.remote()}")
        for node in self.nodes:
            self._start_owners(node)
        for name in names:
            if not await self.handles[name].ready.remote(120.0):
                status = await self.handles[name].status.remote()
                raise RuntimeError(f"owner {name} did not load: {status.last_error}")
        self.monitor = await asyncio.to_thread(
            start_monitor, MonitorConfig.from_settings(self.settings), node_id=head_id, soft=False
        )

    async def provision(self) -> list[str]:
        from actors.bootstrap import ClusterHandles, provision_bulk_async
        from actors.messages import ProvisionRequest

        ids = [f"chaos-{self.options.seed}-{i:05d}" for i in range(self.options.subscribers)]
        handles = ClusterHandles(manager=self.manager, namespace=self.settings.namespace)
        summary = await provision_bulk_async(
            handles,
            [ProvisionRequest(s, PLAN_ID, initial_balance_micros=OPENING_MICROS) for s in ids],
        )
        if summary.created != len(ids):
            raise RuntimeError(
                f"provisioned {summary.created} of {len(ids)}: {summary.rejected[:3]}"
            )
        return ids

    async def start_doors(self) -> list[str]:
        from cluster.bootstrap import start_frontdoor

        for _ in range(2):
            door = await start_frontdoor(request_timeout_s=5.0, namespace=self.settings.namespace)
            self.doors.append(door)
            self.door_ports.append(door.port)
        return [f"127.0.0.1:{p}" for p in self.door_ports]

    # -- what the faults act on --------------------------------------------------------------

    async def live_owners(self) -> list[str]:
        shard_map = await self.manager.get_map.remote()
        return sorted(shard_map.owners)

    async def owner_pid(self, name: str) -> int:
        from failover.takeover import actor_infos

        infos = await asyncio.to_thread(actor_infos)
        info = infos.get(name)
        if info is None or info.state != "ALIVE" or not info.pid:
            raise LookupError(f"owner {name} has no live process ({info})")
        return info.pid

    async def vshards_of(self, owners: Sequence[str]) -> set[int]:
        shard_map = await self.manager.get_map.remote()
        return {v for o in owners for v in shard_map.vshards_of(o)}

    async def add_node(self) -> tuple[list[str], Move]:
        """Add a node with new owners and move their share of vshards to them in small rounds.

        Each round is one ``ShardManager.move``: the givers drop the round's vshards, the map
        is published, the takers bump the epochs and load. Requests for a moving vshard get
        NotOwner and are retried by the front door at the new owner.
        """
        from failover.plan import plan_join, rounds
        from sharding.shardmap import moved_vshards

        node = await asyncio.to_thread(self._new_node)
        self.nodes.append(node)
        names = self._start_owners(node)
        for name in names:
            await self.handles[name].ready.remote(120.0)
        current = await self.manager.get_map.remote()
        target = plan_join(current, sorted({*current.owners, *names}))
        started = time.monotonic()
        moved = 0
        steps = rounds(current, target, self.options.move_round) if target is not None else []
        for step in steps:
            chunk = {v: new for v, (_old, new) in moved_vshards(current, step).items()}
            await self.manager.move.remote(chunk)
            moved += len(chunk)
            current = step
        return names, Move(moved, len(steps), started, time.monotonic())

    async def remove_node(self, pick: int) -> tuple[Any, list[str], set[int], float]:
        """Lose a worker node silently, as a machine that loses power or network does.

        Every process of the node (raylet, agents, the owners on it) is frozen with SIGSTOP, so
        Ray learns of the loss only through its health checks (``RAY_health_check_*``), not from
        a closed connection. Once the GCS has declared the node dead its processes are killed
        for good (``Cluster.remove_node``). Returns the node, the owners that were on it, their
        vshards and when the node went silent.
        """
        from failover.takeover import actor_infos

        if len(self.nodes) <= 1:
            raise LookupError("only one worker node left")
        node = choose(self.nodes, pick)
        infos = await asyncio.to_thread(actor_infos)
        owners = sorted(
            n for n, i in infos.items() if i.state == "ALIVE" and i.node_id == node.node_id
        )
        vshards = await self.vshards_of(owners)
        pids = [p.process.pid for procs in node.all_processes.values() for p in procs]
        pids += [infos[o].pid for o in owners if infos[o].pid]
        started = time.monotonic()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        self.nodes.remove(node)
        self.reaping.append(asyncio.create_task(self._reap(node)))
        return node, owners, vshards, started

    async def _reap(self, node: Any) -> None:
        from failover.takeover import dead_nodes

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if node.node_id in await asyncio.to_thread(dead_nodes):
                break
            await asyncio.sleep(0.1)
        await asyncio.to_thread(self.cluster.remove_node, node, False)

    async def restart_postgres(self, down_ms: int) -> float:
        """Crash PostgreSQL (immediate shutdown: no checkpoint, crash recovery on start), keep it
        down ``down_ms``, start it again on the SAME port (the owners' DSN does not change).

        pg_ctl is run directly rather than through EmbeddedPostgres.start(): that one picks a
        new port when the old one still has TIME_WAIT sockets (its bind probe lacks
        SO_REUSEADDR), which would leave every owner pool pointing at a dead port.
        """
        pg_ctl = str(self.pg.bindir / "pg_ctl")
        data = str(self.pg.data_dir)
        await asyncio.to_thread(
            self.pg._run, [pg_ctl, "-D", data, "-m", "immediate", "-w", "stop"], timeout_s=60
        )
        await asyncio.sleep(down_ms / 1000)
        return await self.start_postgres(self.pg_port)

    async def start_postgres(self, port: int | None = None) -> float:
        """Start the stopped database on its port again (a no-op when it runs)."""
        if self.pg.status()["running"]:
            return time.monotonic()
        port = port or self.pg_port
        pg_ctl = str(self.pg.bindir / "pg_ctl")
        data = str(self.pg.data_dir)
        start = [pg_ctl, "-D", data, "-l", str(self.pg.log_path), "-o", f"-p {port}", "-w", "start"]
        error = ""
        for _attempt in range(5):
            # Forking this many-threaded process (gRPC, Ray) to exec pg_ctl occasionally crashes
            # the child before exec: try again rather than leave the database down for good.
            done = await asyncio.to_thread(self.pg._run, start, timeout_s=120)
            if done.returncode == 0 or self.pg.status()["running"]:
                return time.monotonic()
            error = done.stderr[-300:]
            await asyncio.sleep(0.5)
        raise RuntimeError(f"PostgreSQL did not restart on port {port}: {error}")

    async def kill_door(self, pick: int) -> int:
        from cluster.bootstrap import start_frontdoor

        index = pick % len(self.doors)
        await self.doors[index].stop(0)
        await asyncio.sleep(1.0)
        door = await start_frontdoor(
            port=self.door_ports[index], request_timeout_s=5.0, namespace=self.settings.namespace
        )
        self.doors[index] = door
        return index

    # -- tear-down ---------------------------------------------------------------------------

    async def resume_all(self) -> None:
        for pid in list(self.frozen.values()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self.frozen.clear()

    async def stop(self) -> None:
        import ray

        from failover.takeover import stop_monitor

        if self.reaping:
            await asyncio.gather(*self.reaping, return_exceptions=True)

        for door in self.doors:
            with contextlib.suppress(Exception):
                await door.stop(0)
        if ray.is_initialized():
            await asyncio.to_thread(stop_monitor, self.settings.namespace)
            actors = [*self.handles.values(), *([self.manager] if self.manager else [])]
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    asyncio.gather(*(a.shutdown.remote() for a in actors), return_exceptions=True),
                    10,
                )
            for actor in actors:
                with contextlib.suppress(Exception):
                    ray.kill(actor, no_restart=True)
            ray.shutdown()
        if self.cluster is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.cluster.shutdown)
        if self.pg is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.pg.stop)


async def wait_served(
    addresses: Sequence[str], subscriber_id: str, started: float, budget_s: float = PROBE_BUDGET_S
) -> float | None:
    """Milliseconds from ``started`` (monotonic) until a GetBalance of the subscriber succeeds."""
    import grpc

    from cluster.pb import billing_pb2 as pb
    from cluster.pb import billing_pb2_grpc as pb_grpc

    channels = [grpc.aio.insecure_channel(a) for a in addresses]
    try:
        stubs = [pb_grpc.AccountsStub(c) for c in channels]
        attempt = 0
        while time.monotonic() - started < budget_s:
            stub = stubs[attempt % len(stubs)]
            attempt += 1
            try:
                await stub.GetBalance(
                    pb.GetBalanceRequest(subscriber_id=subscriber_id), timeout=PROBE_ATTEMPT_S
                )
                return (time.monotonic() - started) * 1000
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.02)
        return None
    finally:
        for channel in channels:
            await channel.close()


class Harness:
    """Runs one seeded chaos run."""

    def __init__(self, options: ChaosOptions, *, say: Any = None) -> None:
        self.options = options
        self.say = say or (lambda line: print(line, flush=True))  # progress shows in a log file
        self.schedule = generate(options.seed, options.spec())
        self.result = ChaosResult(seed=options.seed, schedule=self.schedule)
        self.subscribers: list[str] = []
        self.addresses: list[str] = []
        self._probes: list[asyncio.Task[None]] = []
        self._background: list[asyncio.Task[Any]] = []

    async def run(self) -> ChaosResult:
        from failover.load import LoadClient

        workdir = Path(tempfile.mkdtemp(prefix="billing-chaos-"))
        chaos = ChaosCluster(self.options, workdir)
        client: LoadClient | None = None
        try:
            self.say(f"chaos seed {self.options.seed}: {len(self.schedule)} scheduled faults")
            await asyncio.to_thread(chaos.start_database)
            chaos.start_ray()  # ray.init belongs on the main thread
            await chaos.start_actors()
            self.subscribers = await chaos.provision()
            self.addresses = await chaos.start_doors()
            self.say(
                f"cluster up: {len(chaos.nodes)} worker nodes, {chaos.owner_count} owners, "
                f"{len(self.subscribers)} subscribers, front doors {', '.join(self.addresses)}"
            )
            client = LoadClient(
                self.addresses,
                self.subscribers,
                run_id=f"c{self.options.seed}-{int(time.time())}",
                seed=self.options.seed,
            )
            await client.open()
            load = asyncio.create_task(client.run(self.options.concurrency))
            t0 = time.monotonic()
            await self._inject_all(chaos, client, t0)
            await asyncio.sleep(self.options.settle_s)
            if self._probes or self._background:
                await asyncio.gather(*self._probes, *self._background, return_exceptions=True)
            client.stop()
            await load
            self.result.load_seconds = time.monotonic() - t0
            await chaos.resume_all()
            self._phases(client, t0)
            for move in self.result.moves:
                move.failed_attempts = sum(
                    1 for at, _ in client.errors if move.started <= at <= move.ended
                )
                spans = (
                    (move.started - 5, move.started),
                    (move.started, max(move.ended, move.started + 0.001)),
                    (move.ended, move.ended + 5),
                )
                move.rates = tuple(  # type: ignore[assignment]
                    sum(1 for at, ok in client.timeline if ok and a <= at < b) / (b - a)
                    for a, b in spans
                )
            if chaos.monitor is not None:
                self.result.takeovers = await chaos.monitor.actor.events.remote()
                self.result.monitor_status = await chaos.monitor.actor.status.remote()
            await self._settle(chaos)
            await chaos.start_postgres()  # in case a restart fault left it down
            if self.options.tamper:
                await asyncio.to_thread(_tamper, chaos.dsn)
            self.say("auditing the journal against every answer...")
            ledger = await asyncio.to_thread(load_ledger, chaos.dsn)
            self.result.audit = check(client.answers, ledger)
            self.result.store_audit = await self._store_audit(chaos.dsn)
            self.result.outcomes = dict(client.outcomes)
            self.result.answers = len(client.answers)
        except Exception as exc:
            log.exception("chaos run failed")
            self.result.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            if client is not None:
                client.stop()
                await client.close()
            await chaos.resume_all()
            await chaos.stop()
            shutil.rmtree(workdir, ignore_errors=True)
        return self.result

    async def _inject_all(self, chaos: ChaosCluster, client: Any, t0: float) -> None:
        rng = random.Random(self.options.seed ^ 0x5EED)
        for fault in self.schedule:
            delay = t0 + fault.at_ms / 1000 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            at = time.monotonic() - t0
            try:
                detail = await self._inject(chaos, client, fault, rng, t0)
            except LookupError as exc:
                detail = f"skipped: {exc}"
            except Exception as exc:
                detail = f"failed: {type(exc).__name__}: {exc}"
                log.warning("fault %s failed", fault, exc_info=True)
            self.result.injected.append((at, fault, detail))
            self.say(f"{at:7.1f}s  {fault.kind.value:<20} {detail}")

    def _probe(self, kind: FaultKind, started: float, t0: float, vshards: set[int]) -> None:
        """Measure, in the background, until a subscriber of the affected vshards is served."""
        from sharding.vshard import vshard_of

        victims = [s for s in self.subscribers if vshard_of(s, self.options.vshards) in vshards]
        if not victims:
            return

        async def probe() -> None:
            ms = await wait_served(self.addresses, victims[0], started)
            self.result.recoveries.append(
                Recovery(kind, started - t0, ms, f"{len(vshards)} vshards")
            )

        self._probes.append(asyncio.create_task(probe()))

    async def _inject(
        self, chaos: ChaosCluster, client: Any, fault: Fault, rng: random.Random, t0: float
    ) -> str:
        kind = fault.kind
        if kind is FaultKind.KILL_OWNER:
            owner = choose(await chaos.live_owners(), fault.pick)
            pid = await chaos.owner_pid(owner)
            vshards = await chaos.vshards_of([owner])
            started = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            self._probe(kind, started, t0, vshards)
            return f"{owner} (pid {pid}, {len(vshards)} vshards)"
        if kind is FaultKind.FREEZE_OWNER:
            owner = choose(await chaos.live_owners(), fault.pick)
            pid = await chaos.owner_pid(owner)
            vshards = await chaos.vshards_of([owner])
            started = time.monotonic()
            os.kill(pid, signal.SIGSTOP)
            chaos.frozen[fault.pair if fault.pair is not None else -1] = pid
            self._probe(kind, started, t0, vshards)
            return f"{owner} (pid {pid}) for {fault.duration_ms} ms"
        if kind is FaultKind.RESUME_OWNER:
            pid = chaos.frozen.pop(fault.pair if fault.pair is not None else -1, 0)
            if not pid:
                raise LookupError("nothing frozen")
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                return f"pid {pid} is gone (killed while frozen)"
            return f"pid {pid}"
        if kind is FaultKind.REMOVE_NODE:
            node, owners, vshards, started = await chaos.remove_node(fault.pick)
            self._probe(kind, started, t0, vshards)
            return f"node {node.node_id[:8]} went silent with {', '.join(owners) or 'no owners'}"
        if kind is FaultKind.ADD_NODE:
            names, move = await chaos.add_node()
            self.result.moves.append(move)
            return (
                f"owners {', '.join(names)} joined; {move.vshards} vshards moved in "
                f"{move.rounds} rounds, {move.ended - move.started:.2f}s"
            )
        if kind is FaultKind.RESTART_POSTGRES:
            back = await chaos.restart_postgres(fault.duration_ms)
            self._probe_charge(kind, back, t0, client)
            return f"down {fault.duration_ms} ms"
        if kind is FaultKind.KILL_FRONTDOOR:
            index = await chaos.kill_door(fault.pick)
            return f"front door {index} (port {chaos.door_ports[index]}) killed and restarted"
        # Client-side faults run in the background: their requests may wait out an outage
        # (up to the request budget) and must not hold up the rest of the schedule.
        if kind is FaultKind.DUPLICATE_REQUESTS:
            burst = min(fault.burst, len(client.sent))
            self._background.append(asyncio.create_task(client.duplicate(burst, rng)))
            return f"{burst} answered requests sent again"
        if kind is FaultKind.REORDER_REQUESTS:
            subscriber = choose(self.subscribers, fault.pick)
            updates = max(2, min(fault.burst, 6))
            self._background.append(
                asyncio.create_task(client.session(subscriber, reorder=updates))
            )
            return f"{updates} updates of one session sent in reverse order"
        raise ValueError(f"unknown fault kind {kind}")

    def _probe_charge(self, kind: FaultKind, started: float, t0: float, client: Any) -> None:
        """After the database is back: time until the load gets its next successful answer."""

        async def probe() -> None:
            deadline = started + PROBE_BUDGET_S
            while time.monotonic() < deadline:
                if any(ok and at > started for at, ok in client.timeline[-200:]):
                    ms = (time.monotonic() - started) * 1000
                    self.result.recoveries.append(Recovery(kind, started - t0, ms, "database back"))
                    return
                await asyncio.sleep(0.02)
            self.result.recoveries.append(Recovery(kind, started - t0, None, "database back"))

        self._probes.append(asyncio.create_task(probe()))

    def _phases(self, client: Any, t0: float) -> None:
        first = self.schedule[0].at_ms / 1000 if self.schedule else None
        last = self.schedule[-1].at_ms / 1000 if self.schedule else None
        end = time.monotonic() - t0
        spans = {"before faults": (0.0, first or end)}
        if first is not None and last is not None:
            spans["during faults"] = (first, last)
            spans["after faults"] = (last, end)
        for name, (a, b) in spans.items():
            ok = sum(1 for at, good in client.timeline if good and a <= at - t0 < b)
            self.result.phases[name] = (ok, max(b - a, 1e-9))

    async def _settle(self, chaos: ChaosCluster) -> None:
        """Wait until every owner in the map answers (zombies resumed, restarts done)."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            owners = await chaos.live_owners()
            try:
                await asyncio.wait_for(
                    asyncio.gather(*(chaos.handles[o].ready.remote(5.0) for o in owners)), 10
                )
                return
            except Exception:
                await asyncio.sleep(0.5)

    async def _store_audit(self, dsn: str) -> list[str]:
        from sharding.store import Store

        store = Store(dsn)
        await store.open()
        try:
            return await store.audit()
        finally:
            await store.close()


def _tamper(dsn: str) -> None:
    """Credit one micro to one account in the journal only, behind the owners' backs."""
    import psycopg

    with psycopg.connect(dsn) as conn:
        conn.execute(
            "INSERT INTO journal (vshard, idempotency_key, line, account_id, kind, amount_micros,"
            " units, at) SELECT vshard, 'tamper', 0, account_id, 'adjustment', 1, 0, now()"
            " FROM accounts ORDER BY account_id LIMIT 1"
        )


def parse_args(argv: Sequence[str] | None) -> ChaosOptions:
    parser = argparse.ArgumentParser(
        prog="billing chaos",
        description="Run a multi-node cluster on this machine under charging load, inject seeded "
        "faults, then audit the journal against every answer. Exit 1 on any violation.",
    )
    parser.add_argument("--seed", type=int, default=None, help="schedule seed (default: random)")
    parser.add_argument("--faults", type=int, default=6, help="faults to inject (default 6)")
    parser.add_argument("--interval-ms", type=int, default=3000, help="mean gap between faults")
    parser.add_argument("--nodes", type=int, default=2, help="worker nodes at start (default 2)")
    parser.add_argument("--nodes-max", type=int, default=3, help="at most this many worker nodes")
    parser.add_argument("--owners-per-node", type=int, default=1)
    parser.add_argument("--vshards", type=int, default=64)
    parser.add_argument("--subscribers", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent client sessions")
    parser.add_argument("--settle-s", type=float, default=4.0, help="load after the last fault")
    parser.add_argument(
        "--kinds",
        default=",".join(k.value for k in DRAWN_KINDS),
        help="fault kinds to draw from (comma separated)",
    )
    parser.add_argument("--move-round", type=int, default=8, help="vshards per scale-out round")
    parser.add_argument("--verbose", action="store_true", help="show Ray worker logs")
    parser.add_argument("--tamper-for-test", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        kinds = tuple(FaultKind(k.strip()) for k in args.kinds.split(",") if k.strip())
    except ValueError as exc:
        parser.error(f"--kinds: {exc}; known: {', '.join(k.value for k in DRAWN_KINDS)}")
    for name in (
        "faults",
        "nodes",
        "owners_per_node",
        "vshards",
        "subscribers",
        "concurrency",
        "move_round",
    ):
        if getattr(args, name) < (0 if name == "faults" else 1):
            parser.error(f"--{name.replace('_', '-')} must be positive")
    return ChaosOptions(
        seed=args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31),
        faults=args.faults,
        interval_ms=args.interval_ms,
        nodes=args.nodes,
        nodes_max=args.nodes_max,
        owners_per_node=args.owners_per_node,
        vshards=args.vshards,
        subscribers=args.subscribers,
        concurrency=args.concurrency,
        settle_s=args.settle_s,
        kinds=kinds,
        verbose=args.verbose,
        tamper=args.tamper_for_test,
        move_round=args.move_round,
    )


def run(options: ChaosOptions) -> ChaosResult:
    return asyncio.run(Harness(options).run())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``billing chaos`` (and ``python -m failover.chaos``)."""
    from rich.console import Console

    from failover.report import render_result

    logging.basicConfig(level=logging.WARNING)
    options = parse_args(argv)
    result = run(options)
    console = Console()
    render_result(result, console)
    if not result.ok:
        console.print(
            f"[red]FAILED[/red]: replay with [bold]billing chaos --seed {result.seed} "
            f"--faults {options.faults} --interval-ms {options.interval_ms}[/bold]"
        )
        return 1
    console.print(f"[green]OK[/green]: seed {result.seed}, no invariant violated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
