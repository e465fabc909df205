"""One owner call's round trip from a front door's process: the direct channel vs a Ray call.

Interleaved in one run against the same owner (2 owners, embedded PostgreSQL, 2,000
subscribers): a Ray ``ping`` (the floor of any Ray actor call), an empty batch and a one-request
charging batch (an SMS debit: apply + group commit) through :class:`cluster.owners.RayOwnerClient`
(the baseline) and :class:`cluster.owners.DirectOwnerClient` (actors/channel.py), one at a time.
Prints p50 / p95 / p99 per kind, and the owner's CPU per call (median over the calls of each
kind, from the owner process's threads' scheduler clocks, /proc/<pid>/task/*/schedstat, in
nanoseconds: the owner does nothing else meanwhile, as the calls are sequential). Results in
benchmarks/README.md ("Direct owner channel"; "Owner CPU per request", engineer O).

Usage:
    python benchmarks/bench_owner_call.py --calls 400
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import percentiles, sms_event  # noqa: E402

from cluster.loadgen import subscriber_id  # noqa: E402


def owner_cpu_ns(pid: int) -> int:
    """CPU time the threads of process ``pid`` have run so far, in ns (Linux schedstat)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/schedstat") as f:
            total += int(f.read().split()[0])  # (OSError: a thread that ended meanwhile)
    return total


def _percentiles(seconds: list[float]) -> str:
    p50, p95, p99 = (x * 1e3 for x in percentiles(seconds))
    return f"p50 {p50:5.2f}  p95 {p95:5.2f}  p99 {p99:5.2f} ms"


async def bench(calls: int) -> None:
    from bench_grpc import provision

    from cluster.bootstrap import bring_up
    from cluster.owners import DirectOwnerClient, RayOwnerClient

    work = Path(tempfile.mkdtemp(prefix="bench-owner-call-"))
    work.chmod(0o755)
    system = bring_up(data_dir=work / "pg", owners=2, num_cpus=2, object_store_mb=200)
    try:
        await provision(system.handles, 2000)
        shard_map = system.handles.get_map()
        name = shard_map.owner_of_key(subscriber_id(0))
        handle = system.handles.owner(name)
        pid = int((await handle.status.remote()).pid)
        mine = [i for i in range(2000) if shard_map.owner_of_key(subscriber_id(i)) == name]
        direct, ray_client = DirectOwnerClient(name), RayOwnerClient(name)

        async def ping() -> Any:
            return await handle.ping.remote()

        kinds: dict[str, Callable[[int], Awaitable[Any]]] = {
            # No call: what the owner process burns by itself (Ray's threads) in 1 ms.
            "idle 1 ms": lambda i: asyncio.sleep(0.001),
            "ray ping": lambda i: ping(),
            "ray empty batch": lambda i: ray_client.submit([]),
            "direct empty batch": lambda i: direct.submit([]),
            "ray 1-request batch": lambda i: ray_client.submit(
                [sms_event(mine[i % len(mine)], "call")]
            ),
            "direct 1-request batch": lambda i: direct.submit(
                [sms_event(mine[i % len(mine)], "call")]
            ),
        }
        for i in range(30):  # warm up: connections, imports, caches
            for call in kinds.values():
                await call(i)
        times: dict[str, list[float]] = {kind: [] for kind in kinds}
        cpu: dict[str, list[int]] = {kind: [] for kind in kinds}
        for i in range(calls):
            for kind, call in kinds.items():
                cpu0 = owner_cpu_ns(pid)
                started = time.perf_counter()
                await call(i)
                times[kind].append(time.perf_counter() - started)
                cpu[kind].append(owner_cpu_ns(pid) - cpu0)
        for kind, seconds in times.items():
            owner_us = statistics.median(cpu[kind]) / 1e3
            print(f"{kind:24} {_percentiles(seconds)}  owner CPU {owner_us:6.1f} µs/call")
        await direct.close()
    finally:
        system.stop()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=400, help="calls of each kind")
    args = parser.parse_args()
    print(f"# bench_owner_call {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    asyncio.run(bench(args.calls))


if __name__ == "__main__":
    main()
