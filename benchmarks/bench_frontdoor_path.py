"""The front door's own Python per unary request, without gRPC: CPU µs per CreditControl.

Runs :meth:`cluster.frontdoor.ChargingService.CreditControl` in one process against an owner
that answers every batch at once (no Ray, no database, no sockets), 64 callers at a time, with
requests shaped like the load generator's (cluster/loadgen.py: SMS events, voice and data
sessions) and a client deadline. What it measures is what bench_grpc.py's "frontdoor" CPU holds
beyond grpc.aio's own per-call work: conversion, routing, batching, deadline, answer building.

``--root`` imports the code from another checkout (a ``git worktree`` of an earlier commit), so
before and after run alternately from one command:

    .venv/bin/python benchmarks/bench_frontdoor_path.py --rounds 7 --root /tmp/before --root .
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _measure(requests: int, concurrency: int) -> float:
    """CPU µs per request of CreditControl in this process (imports from sys.path[0])."""
    from _fake_owner import FakeOwners

    from cluster.frontdoor import ChargingService, Dispatcher
    from cluster.loadgen import LoadConfig, Workload

    class Context:
        def time_remaining(self) -> float:
            return 9.5

        async def abort(self, code: Any, message: str) -> None:
            raise RuntimeError(f"{code}: {message}")

    async def run() -> float:
        owners = FakeOwners()
        dispatcher = Dispatcher(owners, owners)
        await dispatcher.start()
        service = ChargingService(dispatcher)
        workload = Workload(LoadConfig(target="", subscribers=20_000))
        context = Context()
        msgs = []
        for _ in range(requests):
            msg, session = workload.next_request()
            msgs.append(msg)
            if session is not None and len(msgs) % 2:
                session.granted = 60
                workload._ready.append(session)

        async def caller(part: list[Any]) -> None:
            for msg in part:
                await service.CreditControl(msg, context)

        parts = [msgs[i::concurrency] for i in range(concurrency)]
        await asyncio.gather(caller(parts[0][:50]))  # warm up
        started = time.process_time()
        await asyncio.gather(*(caller(part) for part in parts))
        used = time.process_time() - started
        await dispatcher.close()
        return used / requests * 1e6

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--root", action="append", default=[], help="checkout to import from (repeat)"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(f"{_measure(args.requests, args.concurrency):.2f}")
        return
    roots = [str(Path(root).resolve()) for root in (args.root or [str(ROOT)])]
    print(
        f"# bench_frontdoor_path {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC,"
        f" load {os.getloadavg()[0]:.1f}; {args.requests:,} requests, {args.concurrency} callers"
    )
    figures: dict[str, list[float]] = {root: [] for root in roots}
    for round_ in range(args.rounds):
        for root in roots:  # alternately, each in a fresh process importing from its checkout
            child = [sys.executable, __file__, "--child", "--requests", str(args.requests)]
            out = subprocess.run(
                [*child, "--concurrency", str(args.concurrency)],
                cwd=root,
                env={**os.environ, "PYTHONPATH": root},
                capture_output=True,
                text=True,
                check=True,
            )
            figures[root].append(float(out.stdout.strip()))
            print(f"round {round_ + 1} {root}: {figures[root][-1]:.1f} µs/request", flush=True)
    first = statistics.median(figures[roots[0]])
    for root, values in figures.items():
        median = statistics.median(values)
        print(
            f"{root}: median {median:.1f} µs/request (runs {', '.join(f'{v:.1f}' for v in values)})"
            f"  ratio to first {median / first:.2f}"
        )


if __name__ == "__main__":
    main()
