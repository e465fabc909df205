"""Microbenchmark of the rating engine: rate(), reservation_price() and affordable_units().

Workload: usages against the built-in ``payg`` template (the richest: time bands, destination
groups, roaming zones, connect fee, two versions), cycled over a small pool of realistic usages
so that destinations, rating groups and instants vary. Each case is timed in batches; the figure
is the median per-call time over ``--runs`` batches. Baseline measured in the same run: building
the result values alone (one ``RatedItem`` and one ``Rating``, the floor any rating call pays),
so the ratio shows what the lookups and arithmetic cost on top.

    .venv/bin/python benchmarks/bench_rating.py [--calls 20000] [--runs 9]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from billing.protocol import ServiceKind
from billing.rating import (
    RatedItem,
    Rating,
    UsageEvent,
    affordable_units,
    rate,
    reservation_price,
)
from billing.tariff import Plan, builtin_catalog

START = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)  # Thursday 10:00 in Paris: peak


def pool(kind: str) -> list[UsageEvent]:
    """Usages of one kind, at instants spread over one hour inside one band."""
    out = []
    for i in range(64):
        at = START + timedelta(seconds=37 * i)
        if kind == "voice":
            out.append(UsageEvent(ServiceKind.VOICE, 30 + i, at, 100, f"336{i:08d}"))
        elif kind == "voice-roaming":
            out.append(UsageEvent(ServiceKind.VOICE, 30 + i, at, 100, f"49{i:08d}", "26201"))
        elif kind == "voice-crossing":  # 19:59 local + up to 2 minutes: crosses into off-peak
            cross = datetime(2026, 11, 26, 18, 59, 30, tzinfo=UTC) + timedelta(seconds=i % 20)
            out.append(UsageEvent(ServiceKind.VOICE, 60 + i, cross, 100, f"336{i:08d}"))
        elif kind == "data":
            out.append(UsageEvent(ServiceKind.DATA, 100_000 * (i + 1), at, 10 + 10 * (i % 2)))
        else:
            out.append(UsageEvent(ServiceKind.SMS, 1, at, 200, f"336{i:08d}"))
    return out


def per_call_us(fn: Callable[[UsageEvent], object], usages: list[UsageEvent], calls: int) -> float:
    n = len(usages)
    began = time.perf_counter()
    for i in range(calls):
        fn(usages[i % n])
    return (time.perf_counter() - began) / calls * 1e6


def baseline(usage: UsageEvent) -> Rating:
    item = RatedItem("voice", "peak", usage.units, usage.units, 1000, "up")
    return Rating(1000, (item,), "payg", 2, None, "home", usage.service)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    plan: Plan = builtin_catalog().get("payg")
    pools = {k: pool(k) for k in ("voice", "voice-roaming", "voice-crossing", "data", "sms")}
    cases: list[tuple[str, Callable[[UsageEvent], object], list[UsageEvent]]] = [
        ("baseline: build RatedItem + Rating", baseline, pools["voice"]),
    ]
    for kind, usages in pools.items():
        cases.append((f"rate {kind}", lambda u: rate(u, plan), usages))
    cases.append(("reservation_price voice", lambda u: reservation_price(u, plan), pools["voice"]))
    cases.append(("reservation_price data", lambda u: reservation_price(u, plan), pools["data"]))
    cases.append(
        (
            "affordable_units voice (fits)",
            lambda u: affordable_units(u, plan, 10**9),
            pools["voice"],
        )
    )
    cases.append(
        (
            "affordable_units voice (search)",
            lambda u: affordable_units(u, plan, 50_000),
            pools["voice"],
        )
    )
    results: dict[str, list[float]] = {name: [] for name, _, _ in cases}
    for _ in range(args.runs):  # interleaved, so load changes hit every case alike
        for name, fn, usages in cases:
            results[name].append(per_call_us(fn, usages, args.calls))
    base = statistics.median(results[cases[0][0]])
    print(f"{'case':40s} {'median us/call':>15s} {'x baseline':>11s} {'calls/s':>10s}")
    for name, _, _ in cases:
        med = statistics.median(results[name])
        print(f"{name:40s} {med:15.2f} {med / base:11.1f} {1e6 / med:10.0f}")


if __name__ == "__main__":
    main()
