"""One commit path against the other, in ONE process, alternating second by second.

On a shared machine two separate runs of ``bench_commit.py`` differ by more than the change being
measured; here the paths share the process, the server, the accounts and the noise:

- *pipeline* (the group commit before migration 0003): a pool checkout, BEGIN,
  ``billing_fence()`` (lease rows ``FOR SHARE``), one INSERT/upsert per kind of row, COMMIT, sent
  as one psycopg async pipeline;
- *0003* (the one-statement commit as migration 0003 landed it): ``billing_commit()`` of 0003,
  created here under the name ``billing_commit_0003``, one prepared statement on a held
  autocommit TCP connection with the default plan cache, answers sent as JSON objects;
- *statement* (``Store.commit`` now): ``billing_commit()`` of migration 0004 on the store's
  writer connection (generic plans, the server's unix socket when local), answers as text.

All write the same rows (one *entry*: a DEBIT journal line, the account's new balance, the stored
answer) encoded by the same code (``sharding.store.encode_writes``). Per batch size it prints
entries per second, and the CPU per entry (and per commit) of this process (the committer) and
of the server (the local postmaster and its children, from /proc); medians of ``--rounds``
alternations, and each path's server CPU as a ratio of the first path's.

    .venv/bin/python benchmarks/bench_commit_paths.py [--dsn DSN] [--rounds 5] [--seconds 1]
        [--batches 1,10,100,500] [--paths 0003,statement] [--vshards 1024] [--accounts 100000]

The scratch database first gets a deployment's shape (``--vshards`` leases, ``--accounts``
accounts, ANALYZE): PostgreSQL's plans depend on it (see :func:`preload`).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import scratch_database
from bench_commit import owner_accounts, owner_vshards, postmaster_pid, server_cpu_s

from billing.state import Changes
from sharding import _samples as sample
from sharding import _sql as q
from sharding._rows import answer_data, balance_result_data, batch_json
from sharding.store import (
    Store,
    _execute_prepared,
    _int_array,
    _results,
    _touched_vshards,
    encode_writes,
)

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


_V0003_NAME = b"billing_commit_0003_q"
_v0003_conn: list[psycopg.AsyncConnection[Any]] = []


async def create_v0003(dsn: str) -> None:
    """billing_commit as migration 0003 defined it, as ``billing_commit_0003`` (the baseline)."""
    text = dict(q.migrations())["0003_commit"]
    body = text[text.index("CREATE FUNCTION billing_commit(") :].replace(
        "CREATE FUNCTION billing_commit(", "CREATE OR REPLACE FUNCTION billing_commit_0003(", 1
    )
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(body.encode())


async def v0003_commit(store: Store, changes: Changes, epochs: Mapping[int, int]) -> None:
    """``Store.commit`` as it was with migration 0003: TCP, the default plan cache, answers as
    JSON objects inserted as ``(r->3)::text``."""
    if not _v0003_conn:
        conn = await psycopg.AsyncConnection.connect(
            store.dsn, autocommit=True, options="-c TimeZone=UTC"
        )
        sql = q.SQL_COMMIT.replace(b"billing_commit(", b"billing_commit_0003(")
        conn.pgconn.send_prepare(_V0003_NAME, sql)
        await _results(conn)
        _v0003_conn.append(conn)
    touched = _touched_vshards(changes)
    # The other rows as the store encodes them; the answers as 0003 took them (JSON objects).
    by_sql = dict(encode_writes(dataclasses.replace(changes, answers={}, balance_results={})))
    if changes.answers or changes.balance_results:
        answers: list[tuple[int, str, str, dict[str, Any]]] = [
            (v, key, "cc", answer_data(answer)) for key, (v, answer) in changes.answers.items()
        ]
        answers += [
            (v, key, "balance", balance_result_data(result))
            for key, (v, result) in changes.balance_results.items()
        ]
        by_sql[q.SQL_ANSWERS] = batch_json(answers)
    params = (
        _int_array(touched),
        _int_array([epochs[v] for v in touched]),
        *(by_sql.get(s) for s in q.COMMIT_ARGS),
    )
    await _execute_prepared(_v0003_conn[0], _V0003_NAME, params)


def committing_backend(path: str, store: Store) -> int | None:
    """The server process (backend) that runs ``path``'s commits, when it is known."""
    if path == "0003" and _v0003_conn:
        return _v0003_conn[0].info.backend_pid
    if path == "statement" and store._idle_writers:
        return store._idle_writers[-1][0].info.backend_pid
    return None


def backend_cpu_s(pid: int | None) -> float:
    """CPU seconds of one server process so far, to the nanosecond (/proc/PID/schedstat: the
    clock-tick counts of /proc/PID/stat are too coarse for a one-second window); 0 if unknown."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[0]) / 1e9
    except OSError:
        return 0.0


PATHS: dict[str, Commit] = {
    "pipeline": pipeline_commit,
    "0003": v0003_commit,
    "statement": statement_commit,
}


async def preload(dsn: str, vshards: int, accounts: int) -> None:
    """A database the size of a deployment's: a lease for each of ``vshards`` vshards (other
    owners' beyond the benchmark's own), ``accounts`` accounts spread over them, statistics
    gathered. The plans PostgreSQL picks depend on it: on a few-row scratch database 0003's
    statements got cheap generic plans by themselves, on a full one they were planned per call."""
    own = set(owner_vshards(0))
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(
            "INSERT INTO shard_leases (vshard, epoch, owner)"
            " SELECT v, 1, 'other' FROM generate_series(0, %s - 1) AS v WHERE NOT v = ANY(%s)",
            (vshards, sorted(own)),
        )
        await conn.execute(
            "INSERT INTO accounts (vshard, account_id, payment_mode, currency, plan_id,"
            " balance_micros, credit_limit_micros, reserved_micros, created_at)"
            " SELECT i %% %s, 'pre-' || i, 'prepaid', 'EUR', 'plan-basic', 0, 0, 0, now()"
            " FROM generate_series(1, %s) AS i",
            (vshards, accounts),
        )
        await conn.execute("ANALYZE")


async def run(
    dsn: str,
    batches: list[int],
    rounds: int,
    seconds: float,
    paths: dict[str, Commit],
    preloaded: tuple[int, int],
) -> None:
    async with Store(dsn, min_size=1, max_size=1, writers=1) as store:
        await store.migrate()
        await create_v0003(dsn)
        if preloaded[0]:
            await preload(dsn, *preloaded)
        epochs = await store.take_over(owner_vshards(0), "bench-paths")
        accounts = owner_accounts(0)
        await store.commit(sample.debit_batch(accounts, "setup"), epochs)
        postmaster = postmaster_pid(dsn)
        n = 0
        samples: dict[tuple[int, str], list[tuple[float, float, float, float]]] = {}
        for _ in range(rounds):
            for batch in batches:
                for name, commit in paths.items():
                    # The batches are built before the clock starts: only the commit is timed.
                    todo = []
                    for _ in range(max(3, int(seconds * 40_000 / batch))):
                        n += 1
                        chosen = [accounts[(n * batch + i) % len(accounts)] for i in range(batch)]
                        todo.append(sample.debit_batch(chosen, f"p-{name}-{n}"))
                    await commit(store, todo.pop(), epochs)  # warm-up
                    backend = committing_backend(name, store)
                    entries = 0
                    server0, backend0 = server_cpu_s(postmaster), backend_cpu_s(backend)
                    start, cpu = time.perf_counter(), time.process_time()
                    while todo and time.perf_counter() - start < seconds:
                        await commit(store, todo.pop(), epochs)
                        entries += batch
                    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
                    server = server_cpu_s(postmaster) - server0
                    own = backend_cpu_s(backend) - backend0
                    samples.setdefault((batch, name), []).append(
                        (
                            entries / elapsed,
                            cpu / entries * 1e6,
                            server / entries * 1e6,
                            own / entries * 1e6,
                        )
                    )
        for conn in _v0003_conn:
            await conn.close()
        _v0003_conn.clear()
        first = next(iter(paths))
        print(
            f"{'batch':>6} {'path':>10} {'entries/s':>10} {'client µs':>10} {'server µs':>10}"
            f" {'backend µs':>11} {'client/commit':>14} {'server/commit':>14}"
            f" {'backend/commit':>15} {'ratio':>6}"
        )
        for batch in batches:
            base = statistics.median(x[3] for x in samples[(batch, first)])
            for name in paths:
                got = samples[(batch, name)]
                rate, client, server, own = (statistics.median(x[i] for x in got) for i in range(4))
                print(
                    f"{batch:>6} {name:>10} {rate:>10,.0f} {client:>10.1f} {server:>10.1f}"
                    f" {own:>11.1f} {client * batch:>14,.0f} {server * batch:>14,.0f}"
                    f" {own * batch:>15,.0f} {own / base if base else 0:>6.2f}"
                )
        print(
            "(CPU µs per entry and per commit, medians of",
            rounds,
            "alternations of",
            seconds,
            "s. server: the postmaster and all its children (WAL writer, checkpointer,"
            " autovacuum...); backend: the committing connection's backend alone (the pipeline"
            f" path's is not tracked); ratio: backend CPU against path {first!r})",
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", help="an existing server (default: an embedded one, started here)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--batches", default="1,10,100,500")
    parser.add_argument("--paths", default="0003,statement", help=f"of {', '.join(PATHS)}")
    parser.add_argument(
        "--vshards", type=int, default=1024, help="leases stored (0: only the benchmark's own)"
    )
    parser.add_argument("--accounts", type=int, default=100_000, help="accounts preloaded")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    unknown = [p for p in args.paths.split(",") if p not in PATHS]
    if unknown:
        parser.error(f"unknown paths {unknown}: choose among {', '.join(PATHS)}")
    paths = {p: PATHS[p] for p in args.paths.split(",")}
    with scratch_database(args.dsn, "bench_paths") as dsn:
        preloaded = (args.vshards, args.accounts)
        asyncio.run(run(dsn, batches, args.rounds, args.seconds, paths, preloaded))


if __name__ == "__main__":
    main()
