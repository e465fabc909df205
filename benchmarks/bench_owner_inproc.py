"""One shard owner's CPU per request, in this process: no Ray, no other process on the clock.

bench_owner_mixed measures the owners as Ray actors, by /proc CPU ticks, on cores shared with
everything else; here a :class:`~actors.owner.ShardOwner` runs in the benchmark's own event loop
(a fake shard manager hands it the map; it holds every vshard) against an embedded PostgreSQL,
and is driven the way its channel drives it (actors/channel.py): the batch unpickled, the fast
path (``_submit_now``), the replies pickled. The clock is this thread's CPU time
(``time.thread_time``), less the driver's own share (building requests, feeding answers back),
so other processes' load moves it little. One batch in flight, as a front door sends them.

Phases (``--duration`` s each, ``--rounds`` times, interleaved): ``mixed`` (the loadgen's mix,
cluster/loadgen.py, batches of ``--batch``), ``sms`` (SMS events, batches of ``--batch``) and
``sms-big`` (SMS events, batches of ``--big-batch``). Prints owner CPU µs per request and per
batch, medians over rounds. ``--profile PATH`` writes a cProfile (thread CPU clock) of the last
round's ``--profile-phase`` (default mixed).

    .venv/bin/python benchmarks/bench_owner_inproc.py [--rounds 3] [--duration 5] [--batch 13]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pickle
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path.cwd() if (Path.cwd() / "actors").is_dir() else Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import ray  # noqa: E402
from _common import scratch_database  # noqa: E402
from bench_owner_mixed import Router  # noqa: E402

from actors.messages import ProvisionRequest  # noqa: E402
from actors.owner import OwnerConfig, ShardOwner  # noqa: E402
from cluster.loadgen import subscriber_id  # noqa: E402
from sharding.shardmap import ShardMap, balanced_map  # noqa: E402
from sharding.store import Store  # noqa: E402

OWNER = "billing-owner-0"
VSHARDS = 64


class _Manager:
    def __init__(self, shard_map: ShardMap) -> None:
        self.shard_map = shard_map
        self.get_map = self

    def remote(self) -> Any:
        async def answer() -> ShardMap:
            return self.shard_map

        return answer()


class _LocalOwner(ShardOwner):
    manager: _Manager

    def _handle(self, name: str) -> Any:
        return self.manager


async def _call(owner: ShardOwner, body: bytes) -> bytes:
    """What the channel does with one call frame's body: unpickle, fast path, pickle replies."""
    requests = pickle.loads(body)
    future = owner._submit_now(requests)
    replies = await (future if future is not None else owner.submit(requests))
    return pickle.dumps(list(replies), protocol=5)


async def run_phase(
    owner: ShardOwner, router: Router, size: int, seconds: float, profile: cProfile.Profile | None
) -> tuple[float, int]:
    """Owner CPU seconds (thread time less the driver's) and requests, over ``seconds``."""
    driver = 0.0
    count = 0
    stop_at = time.perf_counter() + seconds
    started = time.thread_time()
    if profile is not None:
        profile.enable()
    while time.perf_counter() < stop_at:
        t0 = time.thread_time()
        sent = router.batch(OWNER, size)
        body = pickle.dumps([p.request for p in sent], protocol=5)
        t1 = time.thread_time()
        reply = await _call(owner, body)
        t2 = time.thread_time()
        router.answered(sent, pickle.loads(reply))
        driver += (t1 - t0) + (time.thread_time() - t2)
        count += len(sent)
    if profile is not None:
        profile.disable()
    return time.thread_time() - started - driver, count


async def bench(args: argparse.Namespace, dsn: str) -> None:
    async with Store(dsn, min_size=1, max_size=1) as store:
        await store.migrate()
    _LocalOwner.manager = _Manager(balanced_map(VSHARDS, [OWNER]))
    owner = _LocalOwner(OWNER, OwnerConfig(dsn=dsn))
    try:
        assert await owner.ready(60.0)
        for start in range(0, args.subscribers, 500):
            part = [
                ProvisionRequest(subscriber_id(i), "payg", initial_balance_micros=10**9)
                for i in range(start, min(start + 500, args.subscribers))
            ]
            await owner.submit(part)
        phases = {
            "mixed": (dict(voice=5, sms=3, data=2), args.batch),
            "sms": (dict(sms=1), args.batch),
            "sms-big": (dict(sms=1), args.big_batch),
        }
        routers = {
            name: Router(args.subscribers, mix, lambda _key: OWNER)
            for name, (mix, _) in phases.items()
        }
        for name, (_, size) in phases.items():  # warm up
            await run_phase(owner, routers[name], size, 1.0, None)
        rows: dict[str, list[tuple[float, float]]] = {name: [] for name in phases}
        for round_no in range(args.rounds):
            for name, (_, size) in phases.items():
                last = round_no == args.rounds - 1
                profile = (
                    cProfile.Profile(time.thread_time)
                    if args.profile and name == args.profile_phase and last
                    else None
                )
                cpu, count = await run_phase(owner, routers[name], size, args.duration, profile)
                per_request = cpu / count * 1e6
                rows[name].append((per_request, per_request * size))
                print(f"round {round_no + 1} {name:7} batch {size:3}: {per_request:6.1f} µs/req")
                if profile is not None:
                    profile.dump_stats(args.profile)
        print("## medians (owner CPU, this thread, driver excluded)")
        for name, values in rows.items():
            req = statistics.median(v for v, _ in values)
            batch = statistics.median(b for _, b in values)
            runs = ", ".join(f"{v:.1f}" for v, _ in values)
            print(f"{name:7}: {req:6.1f} µs/request ({runs}); {batch:7.1f} µs/batch")
        for name, router in routers.items():
            print(f"{name} results: {dict(sorted(router.results.items()))}")
    finally:
        await owner.shutdown()


def _local_ip(*_: Any) -> str:
    return "127.0.0.1"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--subscribers", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=13)
    parser.add_argument("--big-batch", type=int, default=200)
    parser.add_argument("--profile", help="cProfile output of the last round's --profile-phase")
    parser.add_argument("--profile-phase", default="mixed", help="the phase --profile covers")
    parser.add_argument("--dsn", help="an admin DSN of a running server (default: embedded)")
    args = parser.parse_args()
    ray.util.get_node_ip_address = _local_ip  # no Ray here: the channel binds locally
    with scratch_database(args.dsn, "bench_inproc") as dsn:
        asyncio.run(bench(args, dsn))


if __name__ == "__main__":
    main()
