"""One commit path against the other, in ONE process, alternating second by second.

On a shared machine two separate runs of ``bench_commit.py`` differ by more than the change being
measured; here both paths share the process, the server, the accounts and the noise:

- *pipeline* (the baseline: the group commit before migration 0003): a pool checkout, BEGIN,
  ``billing_fence()`` (lease rows ``FOR SHARE``), one INSERT/upsert per kind of row, COMMIT, sent
  as one psycopg async pipeline;
- *statement* (``Store.commit`` now): ``billing_commit()`` as one prepared statement on a held
  autocommit connection, run through libpq directly, fenced by advisory commit locks.

Both write the same rows (one *entry*: a DEBIT journal line, the account's new balance, the stored
answer) encoded by the same code (``sharding.store.encode_writes``). Per batch size it prints
entries per second, and the CPU per entry of this process (the committer) and of the server (the
local postmaster and its children, from /proc); medians of ``--rounds`` alternations.

    .venv/bin/python benchmarks/bench_commit_paths.py [--dsn DSN] [--rounds 5] [--seconds 1]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import scratch_database
from bench_commit import owner_accounts, owner_vshards, postmaster_pid, server_cpu_s

from billing.state import Changes
from sharding import _samples as sample
from sharding import _sql as q
from sharding.store import Store, _touched_vshards, encode_writes

Commit = Callable[[Store, Changes, Mapping[int, int]], Awaitable[None]]


async def pipeline_commit(store: Store, changes: Changes, epochs: Mapping[int, int]) -> None:
    """The group commit as it was before migration 0003 (the baseline)."""
    touched = _touched_vshards(changes)
    writes = encode_writes(changes)
    async with store._pool.connection() as conn, conn.pipeline(), conn.transaction():
        await conn.execute(q.SQL_FENCE, (touched, [epochs[v] for v in touched]))
        for sql, batch in writes:
            await conn.execute(sql, (batch,))


async def statement_commit(store: Store, changes: Changes, epochs: Mapping[int, int]) -> None:
    await store.commit(changes, epochs)


PATHS: dict[str, Commit] = {"pipeline": pipeline_commit, "statement": statement_commit}


async def run(dsn: str, batches: list[int], rounds: int, seconds: float) -> None:
    async with Store(dsn, min_size=1, max_size=1, writers=1) as store:
        await store.migrate()
        epochs = await store.take_over(owner_vshards(0), "bench-paths")
        accounts = owner_accounts(0)
        await store.commit(sample.debit_batch(accounts, "setup"), epochs)
        postmaster = postmaster_pid(dsn)
        n = 0
        samples: dict[tuple[int, str], list[tuple[float, float, float]]] = {}
        for _ in range(rounds):
            for batch in batches:
                for name, commit in PATHS.items():
                    # The batches are built before the clock starts: only the commit is timed.
                    todo = []
                    for _ in range(max(3, int(seconds * 40_000 / batch))):
                        n += 1
                        chosen = [accounts[(n * batch + i) % len(accounts)] for i in range(batch)]
                        todo.append(sample.debit_batch(chosen, f"p-{name}-{n}"))
                    await commit(store, todo.pop(), epochs)  # warm-up
                    entries = 0
                    server0 = server_cpu_s(postmaster)
                    start, cpu = time.perf_counter(), time.process_time()
                    while todo and time.perf_counter() - start < seconds:
                        await commit(store, todo.pop(), epochs)
                        entries += batch
                    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
                    server = server_cpu_s(postmaster) - server0
                    samples.setdefault((batch, name), []).append(
                        (entries / elapsed, cpu / entries * 1e6, server / entries * 1e6)
                    )
        print(f"{'batch':>6} {'path':>10} {'entries/s':>10} {'client µs':>10} {'server µs':>10}")
        for batch in batches:
            for name in PATHS:
                got = samples[(batch, name)]
                rate, client, server = (statistics.median(x[i] for x in got) for i in range(3))
                print(f"{batch:>6} {name:>10} {rate:>10,.0f} {client:>10.1f} {server:>10.1f}")
        print("(CPU per entry; medians of", rounds, "alternations of", seconds, "s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", help="an existing server (default: an embedded one, started here)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--batches", default="1,10,100,1000")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    with scratch_database(args.dsn, "bench_paths") as dsn:
        asyncio.run(run(dsn, batches, args.rounds, args.seconds))


if __name__ == "__main__":
    main()
