"""The group commit's JSON encoding, ``json.dumps`` (before) against orjson (now), in ONE process.

``sharding.store.encode_writes`` is what ``Store.commit`` runs on the owner before sending
``billing_commit(...)``; the before path is the same code with ``sharding._rows.dumps`` swapped
for ``sharding._codec.dumps_reference`` (the standard library's encoder, as it was). Batches:

- *debit*: one charging request per account (``sharding._samples.debit_batch``: journal row,
  account, answer), the benchmarks' unit of work;
- *session*: a debit plus the session row with one reservation (what an interim update writes).

Prints the CPU µs per entry (medians of ``--rounds`` alternations) and the ratio, plus the
reading of ``usage_counters`` (``json.loads`` against orjson) per account row.

    .venv/bin/python benchmarks/bench_encode.py [--rounds 7] [--batches 100,1000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from datetime import timedelta

from billing.state import Changes
from sharding import _rows
from sharding import _samples as sample
from sharding._codec import dumps, dumps_reference
from sharding.store import encode_writes


def batches(kind: str, size: int) -> Changes:
    accounts = [sample.account(f"acc-{i}", i % 64, balance_micros=10**9) for i in range(size)]
    changes = sample.debit_batch(accounts, kind)
    if kind == "session":
        for i, acc in enumerate(accounts):
            res = sample.reservation(10, money_micros=50_000, bucket_units={f"b-{i}": 1_000})
            s = sample.session(f"s{kind}-{i}", acc.vshard, f"sub-{i}", acc.account_id)
            s.reservations[10] = res
            s.last_seen_at += timedelta(seconds=i)
            changes.sessions[s.session_id] = s
    return changes


def cpu_per_entry(fn: Callable[[], object], entries: int, seconds: float) -> float:
    n, start = 0, time.process_time()
    while (elapsed := time.process_time() - start) < seconds:
        fn()
        n += 1
    return elapsed / (n * entries) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=0.5)
    parser.add_argument("--batches", default="100,1000")
    args = parser.parse_args()
    sizes = [int(b) for b in args.batches.split(",")]
    samples: dict[tuple[str, int, str], list[float]] = {}
    for _ in range(args.rounds):
        for kind in ("debit", "session"):
            for size in sizes:
                changes = batches(kind, size)
                for name, encode in (("json", dumps_reference), ("orjson", dumps)):
                    _rows.dumps = encode  # batch_json's encoder
                    try:
                        us = cpu_per_entry(lambda c=changes: encode_writes(c), size, args.seconds)
                    finally:
                        _rows.dumps = dumps
                    samples.setdefault((kind, size, name), []).append(us)
        texts = [
            json.dumps({"voice:2026-01": 60 + i, "data:2026-01": 10**9 + i}) for i in range(1000)
        ]
        for name, read in (("json", _rows._json_counters), ("orjson", _rows._counters)):
            us = cpu_per_entry(lambda r=read, t=texts: list(map(r, t)), 1000, args.seconds)
            samples.setdefault(("usage_counters read", 1000, name), []).append(us)
    print(f"{'batch':>20} {'entries':>8} {'json µs':>9} {'orjson µs':>10} {'ratio':>6}")
    for kind, size in dict.fromkeys((k, s) for k, s, _ in samples):
        before = statistics.median(samples[(kind, size, "json")])
        after = statistics.median(samples[(kind, size, "orjson")])
        print(f"{kind:>20} {size:>8} {before:>9.2f} {after:>10.2f} {before / after:>5.1f}x")
    print(f"(CPU µs per entry; medians of {args.rounds} alternations of {args.seconds} s)")


if __name__ == "__main__":
    main()
