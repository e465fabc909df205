"""Owner round trip: what one small batch costs between "the owner has it" and "it is durable".

One local Ray cluster (``num_cpus=2``), one PostgreSQL (fsync on, synchronous_commit on), the
billing owners and manager; the driver talks to one owner directly (no front door):

- *ping*: a bare Ray call to the owner (the baseline, measured in the same run);
- *submit*: ``owner.submit([one SMS debit])`` one after another: the Ray hop, the domain step
  and the fenced group commit of a one-request batch;
- *open loop*: one-request submits at ``--rate`` per second on a fixed schedule for
  ``--duration`` s, latency counted from the scheduled send (so a request that waits for the
  one before it is charged for the wait): what a trickle of traffic sees. The owner's CPU per
  request comes from /proc over that phase.

Each round starts the owners afresh for every ``--commits-in-flight`` setting (interleaved, so
the shared machine's noise falls on all alike); figures are medians over ``--rounds``. On a code
base without the setting (an older checkout) the owners run with their defaults.

    .venv/bin/python benchmarks/bench_owner_rtt.py [--dsn DSN] [--rounds 3] [--rate 500]
        [--duration 10] [--commits-in-flight 1,2]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout this file is in

import ray
from _common import percentiles, scratch_database, sms_event

from actors.bootstrap import provision_bulk_async, start_cluster, stop_cluster
from actors.messages import Answered, ProvisionRequest
from actors.owner import OwnerConfig
from cluster.loadgen import subscriber_id

VSHARDS = 64


def cpu_seconds(pid: int) -> float:
    """User + system CPU of process ``pid`` so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def owner_config(dsn: str, in_flight: int) -> OwnerConfig:
    names = {f.name for f in dataclasses.fields(OwnerConfig)}
    if "commits_in_flight" in names:
        return OwnerConfig(dsn=dsn, commits_in_flight=in_flight)
    return OwnerConfig(dsn=dsn)


async def measure(handles: Any, mine: list[int], args: argparse.Namespace) -> dict[str, float]:
    name = handles.get_map().owner_of_key(subscriber_id(mine[0]))
    owner = handles.owner(name)
    pid = int((await owner.status.remote()).pid)
    for i in range(50):  # warm-up
        await owner.ping.remote()
        await owner.submit.remote([sms_event(mine[i % len(mine)], "rtt")])
    pings: list[float] = []
    submits: list[float] = []
    for k in range(args.requests):
        t = time.perf_counter()
        await owner.ping.remote()
        pings.append(time.perf_counter() - t)
        request = sms_event(mine[k % len(mine)], "rtt")
        t = time.perf_counter()
        [reply] = await owner.submit.remote([request])
        submits.append(time.perf_counter() - t)
        if not isinstance(reply, Answered):
            raise SystemExit(f"submit failed: {reply}")
    # Open loop: sends on a fixed schedule, whatever the answers do.
    count = int(args.rate * args.duration)
    latencies: list[float] = []
    failures = 0

    async def one(at: float, index: int) -> None:
        nonlocal failures
        delay = at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        [reply] = await owner.submit.remote([sms_event(index, "rtt")])
        latencies.append(time.perf_counter() - at)
        if not isinstance(reply, Answered):
            failures += 1

    cpu0 = cpu_seconds(pid)
    start = time.perf_counter() + 0.2
    await asyncio.gather(*(one(start + k / args.rate, mine[k % len(mine)]) for k in range(count)))
    owner_cpu = cpu_seconds(pid) - cpu0
    ping50 = statistics.median(pings)
    sub50, sub95, sub99 = percentiles(submits)
    ol50, ol95, ol99 = percentiles(latencies)
    return {
        "ping p50": ping50 * 1e3,
        "submit p50": sub50 * 1e3,
        "submit p95": sub95 * 1e3,
        "submit p99": sub99 * 1e3,
        "submit - ping": (sub50 - ping50) * 1e3,
        "open p50": ol50 * 1e3,
        "open p95": ol95 * 1e3,
        "open p99": ol99 * 1e3,
        "owner CPU µs/req": owner_cpu / count * 1e6,
        "failed": float(failures),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", help="an existing server (default: an embedded one, started here)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=400, help="sequential submits per round")
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--subscribers", type=int, default=2000)
    parser.add_argument("--commits-in-flight", default="1,2")
    args = parser.parse_args()
    settings = [int(k) for k in args.commits_in_flight.split(",")]

    with scratch_database(args.dsn, "bench_rtt") as dsn:
        run(args, settings, dsn)


def run(args: argparse.Namespace, settings: list[int], dsn: str) -> None:
    ray.init(
        address="local",
        num_cpus=2,
        object_store_memory=200 * 1024 * 1024,
        namespace="billing",
        include_dashboard=False,
        log_to_driver=False,
    )
    print(
        f"# bench_owner_rtt {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs,"
        f" load {os.getloadavg()[0]:.1f}; open loop {args.rate:g}/s x {args.duration:g} s,"
        f" {args.requests} sequential submits, medians of {args.rounds} rounds"
    )
    samples: dict[int, list[dict[str, float]]] = {k: [] for k in settings}
    provisioned = False
    try:
        for r in range(args.rounds):
            for k in settings:
                handles = start_cluster(
                    dsn, owners=2, vshard_count=VSHARDS, config=owner_config(dsn, k)
                )
                try:
                    if not provisioned:
                        requests = [
                            ProvisionRequest(
                                subscriber_id(i), "payg", initial_balance_micros=10**12
                            )
                            for i in range(args.subscribers)
                        ]
                        asyncio.run(provision_bulk_async(handles, requests))
                        provisioned = True
                    shard_map = handles.get_map()
                    first = shard_map.owner_of_key(subscriber_id(0))
                    mine = [
                        i
                        for i in range(args.subscribers)
                        if shard_map.owner_of_key(subscriber_id(i)) == first
                    ]
                    figures = asyncio.run(measure(handles, mine, args))
                finally:
                    stop_cluster(handles)
                samples[k].append(figures)
                print(
                    f"  round {r + 1} commits_in_flight={k}: "
                    + ", ".join(f"{n} {v:.2f}" for n, v in figures.items()),
                    flush=True,
                )
    finally:
        ray.shutdown()
    names = list(next(iter(samples.values()))[0])
    print(f"{'commits_in_flight':>18} " + " ".join(f"{n:>16}" for n in names))
    for k in settings:
        med = [statistics.median(s[n] for s in samples[k]) for n in names]
        print(f"{k:>18} " + " ".join(f"{v:>16.2f}" for v in med))
    print("(times in ms; 'submit - ping' is what the owner adds to a bare Ray call)")


if __name__ == "__main__":
    main()
