"""What one hand-off between two processes costs on this machine: a unix-socket ping-pong.

Every step of the online path (load client, gRPC's threads, front door, owner, PostgreSQL) hands
work to another process or thread and wakes it. This prints the CPU each side spends per round
trip, once with the two processes free to run on any CPU and once both pinned to CPU 0 (the
baseline: no cross-CPU wake-up), so the cost of waking a process on another CPU shows as the
difference. Medians of ``--rounds``.

    .venv/bin/python benchmarks/bench_wakeup.py [--trips 20000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import statistics
import time


def ping_pong(trips: int, cpu: int | None) -> tuple[float, float]:
    """(this side's, the echoing child's) CPU µs per round trip."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    a, b = socket.socketpair()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    pid = os.fork()
    if pid == 0:  # the echoing side
        a.close()
        while data := b.recv(64):
            b.send(data)
        os._exit(0)
    b.close()
    started = time.process_time()
    for _ in range(trips):
        a.send(b"x")
        a.recv(64)
    used = time.process_time() - started
    a.close()
    os.waitpid(pid, 0)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    child = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    if cpu is not None:
        os.sched_setaffinity(0, range(os.cpu_count() or 1))
    return used / trips * 1e6, child / trips * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trips", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(f"# bench_wakeup, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    runs: dict[str, list[tuple[float, float]]] = {"any CPU": [], "one CPU (baseline)": []}
    for _ in range(args.rounds):
        runs["any CPU"].append(ping_pong(args.trips, None))
        runs["one CPU (baseline)"].append(ping_pong(args.trips, 0))
    for label, values in runs.items():
        mine = statistics.median(v[0] for v in values)
        theirs = statistics.median(v[1] for v in values)
        print(f"{label:20} {mine:6.1f} µs + {theirs:6.1f} µs CPU per round trip (sender + echo)")


if __name__ == "__main__":
    main()
