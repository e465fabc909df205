"""Fenced group commit throughput, against one transaction per request, and recovery time.

Workload: each owner (a separate process, like a Ray owner actor) holds its own vshards and
accounts; one *entry* is one charging request's write: a DEBIT journal row, the account's new
balance (upsert) and the stored answer. The fenced group commit (``Store.commit``) writes a batch
of B requests in ONE transaction with the epoch check; batch sizes 1, 10, 100, 1,000 with 1 and
4 owners running concurrently on distinct vshards. CPU per entry: the committing processes' own,
and (for a server on this host) that of the server's processes over the round.

Baseline (same run, same server, same owners): what a typical application writes, one
transaction per request: ``SELECT balance FOR UPDATE``, ``UPDATE`` it, ``INSERT`` a journal row,
``COMMIT``.

Recovery: ``take_over`` + ``load`` of one vshard holding 100,000 subscribers and their 100,000
accounts, into an empty ``ShardState``; and again with one bucket per subscriber.

Durability is on throughout (fsync on, synchronous_commit on). Figures are medians of
``--rounds`` timed rounds of ``--seconds`` each.

    .venv/bin/python benchmarks/bench_commit.py [--dsn DSN] [--rounds 3] [--seconds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from billing.state import ShardState
from sharding import _samples as sample
from sharding.pgserver import EmbeddedPostgres
from sharding.store import Store

ACCOUNTS_PER_OWNER = 2_000
VSHARDS_PER_OWNER = 8
RECOVERY_VSHARDS = {False: 100_000, True: 100_001}  # without / with one bucket per subscriber
console = Console()


def owner_vshards(owner: int) -> list[int]:
    return [owner * VSHARDS_PER_OWNER + i for i in range(VSHARDS_PER_OWNER)]


def owner_accounts(owner: int) -> list[Any]:
    vshards = owner_vshards(owner)
    return [
        sample.account(f"o{owner}-a{i}", vshards[i % len(vshards)], balance_micros=10**12)
        for i in range(ACCOUNTS_PER_OWNER)
    ]


# -- workers (one process per owner) ----------------------------------------------------------


def group_commit_worker(
    dsn: str, owner: int, batch: int, seconds: float, tag: str, barrier: Any, out: Any
) -> None:
    async def run() -> tuple[int, float, float]:
        async with Store(dsn, min_size=1, max_size=1) as store:
            epochs = await store.take_over(owner_vshards(owner), f"bench-owner-{owner}")
            accounts = owner_accounts(owner)
            cursor, n = 0, 0

            def next_batch() -> Any:
                nonlocal cursor, n
                chosen = [accounts[(cursor + i) % len(accounts)] for i in range(batch)]
                cursor += batch
                n += 1
                return sample.debit_batch(chosen, f"{tag}-{owner}-{n}")

            await store.commit(next_batch(), epochs)  # warm-up
            barrier.wait()
            entries, start, cpu = 0, time.perf_counter(), time.process_time()
            while time.perf_counter() - start < seconds:
                await store.commit(next_batch(), epochs)
                entries += batch
            return entries, time.perf_counter() - start, time.process_time() - cpu

    out.put(asyncio.run(run()))


def baseline_worker(dsn: str, owner: int, seconds: float, tag: str, barrier: Any, out: Any) -> None:
    accounts = owner_accounts(owner)
    with psycopg.connect(dsn) as conn:
        barrier.wait()
        entries, start, cpu = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - start < seconds:
            acc = accounts[entries % len(accounts)]
            with conn.transaction():
                row = conn.execute(
                    "SELECT balance_micros FROM accounts"
                    " WHERE vshard = %s AND account_id = %s FOR UPDATE",
                    (acc.vshard, acc.account_id),
                ).fetchone()
                assert row is not None
                conn.execute(
                    "UPDATE accounts SET balance_micros = %s WHERE vshard = %s AND account_id = %s",
                    (row[0] - 1_000, acc.vshard, acc.account_id),
                )
                conn.execute(
                    "INSERT INTO journal (vshard, idempotency_key, line, account_id, kind,"
                    " amount_micros, units, at) VALUES (%s, %s, 0, %s, 'debit', -1000, 0, now())",
                    (acc.vshard, f"base-{tag}-{owner}-{entries}", acc.account_id),
                )
            entries += 1
        out.put((entries, time.perf_counter() - start, time.process_time() - cpu))


def server_cpu_s(postmaster: int | None) -> float:
    """CPU seconds used so far by the server: the postmaster, its live children (backends, WAL
    writer, checkpointer...) and the children it has reaped, from /proc; 0 when unknown."""
    if postmaster is None:
        return 0.0
    with open(f"/proc/{postmaster}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # Its own CPU and that of its children already gone (a closed connection's backend).
    total = sum(int(x) for x in fields[11:15])
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == postmaster:
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def postmaster_pid(dsn: str) -> int | None:
    """The local server's postmaster (the parent of our backend), or None if not on this host."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
    try:
        with open(f"/proc/{row[0] if row else 0}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return None


def run_round(
    target: Any, owners: int, args: tuple[Any, ...], postmaster: int | None = None
) -> tuple[float, float, float]:
    """Run ``owners`` worker processes at once: entries per second over the slowest one, and
    the client's and the server's CPU microseconds per entry (the server's counted over the
    whole round, connections and warm-up included: a slight overcount)."""
    ctx = mp.get_context("fork")
    barrier, out = ctx.Barrier(owners), ctx.Queue()
    procs = [
        ctx.Process(target=target, args=(args[0], o, *args[1:], barrier, out))
        for o in range(owners)
    ]
    server0 = server_cpu_s(postmaster)
    for p in procs:
        p.start()
    results = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        if p.exitcode != 0:
            raise SystemExit(f"benchmark worker failed (exit {p.exitcode})")
    time.sleep(0.3)  # the workers' backends exit and are reaped (their CPU moves to cutime)
    server = server_cpu_s(postmaster) - server0
    entries = float(sum(e for e, _, _ in results))
    rate = entries / float(max(t for _, t, _ in results))
    return rate, sum(c for _, _, c in results) / entries * 1e6, server / entries * 1e6


# -- setup ----------------------------------------------------------------------------------


def setup_accounts(dsn: str, owners: int) -> None:
    async def run() -> None:
        async with Store(dsn) as store:
            await store.migrate()
            for owner in range(owners):
                epochs = await store.take_over(owner_vshards(owner), "setup")
                accounts = owner_accounts(owner)
                changes = sample.debit_batch(accounts, f"setup-{owner}")
                await store.commit(changes, epochs)

    asyncio.run(run())


def setup_recovery_vshard(dsn: str, subscribers: int, with_buckets: bool) -> None:
    """One vshard with ``subscribers`` subscribers and their accounts (and one bucket each if
    ``with_buckets``), written with COPY (VACUUM ANALYZE after, as autovacuum would)."""
    v = RECOVERY_VSHARDS[with_buckets]
    t0 = sample.T0
    chunk = 10_000
    with psycopg.connect(dsn) as conn, Progress(console=console, transient=True) as progress:
        task = progress.add_task(
            f"loading {subscribers:,} subscribers into vshard {v}", total=subscribers
        )
        for start in range(0, subscribers, chunk):
            ids = range(start, min(start + chunk, subscribers))
            with conn.cursor().copy(
                "COPY subscribers (vshard, subscriber_id, account_id, account_vshard, plan_id,"
                " created_at) FROM STDIN"
            ) as copy:
                for i in ids:
                    copy.write_row((v, f"sub-{i:07d}", f"acc-{i:07d}", v, "payg", t0))
            with conn.cursor().copy(
                "COPY accounts (vshard, account_id, payment_mode, currency, plan_id,"
                " balance_micros, credit_limit_micros, reserved_micros, created_at,"
                " usage_counters) FROM STDIN"
            ) as copy:
                for i in ids:
                    copy.write_row(
                        (v, f"acc-{i:07d}", "prepaid", "EUR", "payg", 5_000_000, 0, 0, t0, "{}")
                    )
            if not with_buckets:
                conn.commit()
                progress.advance(task, len(ids))
                continue
            with conn.cursor().copy(
                "COPY buckets (vshard, bucket_id, account_id, bundle_id, service,"
                " destination_groups, rating_groups, units, reserved_units, priority,"
                " valid_from, expires_at) FROM STDIN"
            ) as copy:
                for i in ids:
                    copy.write_row(
                        (v, f"acc-{i:07d}/sms", f"acc-{i:07d}", "sms-100", "sms", [], [200],
                         100, 0, 10, t0, None)
                    )  # fmt: skip
            conn.commit()
            progress.advance(task, len(ids))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE subscribers, accounts, buckets")


def time_recovery(dsn: str, vshard: int, rounds: int) -> tuple[float, float, int]:
    async def once() -> tuple[float, float, int]:
        async with Store(dsn) as store:
            start, cpu = time.perf_counter(), time.process_time()
            await store.take_over([vshard], "recovering-owner")
            state = ShardState()
            await store.load([vshard], state, now=sample.T0)
            elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
            return elapsed, cpu, len(state.subscribers) + len(state.accounts) + len(state.buckets)

    results = [asyncio.run(once()) for _ in range(rounds)]
    return (
        statistics.median(t for t, _, _ in results),
        statistics.median(c for _, c, _ in results),
        results[0][2],
    )


# -- main -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", help="an existing server (default: an embedded one, started here)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--batches", default="1,10,100,1000")
    parser.add_argument("--owners", default="1,4")
    parser.add_argument("--subscribers", type=int, default=100_000)
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    owner_counts = [int(o) for o in args.owners.split(",")]

    server: EmbeddedPostgres | None = None
    base: Path | None = None
    admin = args.dsn or os.environ.get("BILLING_DSN")
    if not admin:
        base = Path(tempfile.mkdtemp(prefix="bench-commit-"))
        base.chmod(0o755)
        server = EmbeddedPostgres(base / "pg")
        with console.status("starting an embedded PostgreSQL (fsync on, synchronous_commit on)"):
            admin = server.start()
    params = conninfo_to_dict(admin)
    name = f"bench_commit_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"'.encode())
        version = conn.execute("SHOW server_version").fetchone()
    params["dbname"] = name
    dsn = make_conninfo("", **params)
    try:
        with console.status("creating the schema and accounts"):
            setup_accounts(dsn, max(owner_counts))
        table = Table(
            title=f"Fenced group commit (PostgreSQL {version[0] if version else '?'}, medians of {args.rounds} x {args.seconds:g} s)"
        )
        columns = ("owners", "batch", "entries/s", "baseline req/s", "ratio")
        for col in (*columns, "client CPU µs/entry", "server CPU µs/entry"):
            table.add_column(col, justify="right")
        # Rounds interleave the baseline and every batch size, so that the noise of this
        # shared machine falls on all of them alike; medians per configuration.
        samples: dict[tuple[int, int], list[tuple[float, float, float]]] = {}
        postmaster = postmaster_pid(dsn)
        total = len(owner_counts) * (len(batches) + 1) * args.rounds
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("measuring", total=total)
            for r in range(args.rounds):
                for owners in owner_counts:
                    figures = run_round(
                        baseline_worker, owners, (dsn, args.seconds, f"b{owners}-{r}"), postmaster
                    )
                    samples.setdefault((owners, 0), []).append(figures)
                    progress.advance(task)
                    for batch in batches:
                        tag = f"g{owners}-{batch}-{r}"
                        figures = run_round(
                            group_commit_worker, owners, (dsn, batch, args.seconds, tag), postmaster
                        )
                        samples.setdefault((owners, batch), []).append(figures)
                        progress.advance(task)
        medians = {
            k: tuple(statistics.median(x[i] for x in v) for i in range(3))
            for k, v in samples.items()
        }
        for owners in owner_counts:
            base_rate = medians[(owners, 0)][0]
            for batch in [0, *batches]:
                rate, client, server_cpu = medians[(owners, batch)]
                table.add_row(
                    str(owners),
                    f"{batch:,}" if batch else "baseline",
                    f"{rate:,.0f}",
                    f"{base_rate:,.0f}",
                    f"{rate / base_rate:.1f}x",
                    f"{client:,.0f}",
                    f"{server_cpu:,.0f}" if postmaster else "-",
                )
        console.print(table)

        for with_buckets in (False, True):
            setup_recovery_vshard(dsn, args.subscribers, with_buckets)
            with console.status("timing recovery"):
                vshard = RECOVERY_VSHARDS[with_buckets]
                seconds, cpu, rows = time_recovery(dsn, vshard, args.rounds)
            what = "subscribers + accounts + buckets" if with_buckets else "subscribers + accounts"
            console.print(
                f"Recovery of one vshard with {args.subscribers:,} subscribers "
                f"({rows:,} rows: {what}): take_over + load median {seconds * 1000:,.0f} ms "
                f"wall, {cpu * 1000:,.0f} ms CPU of the loading process, over {args.rounds} "
                f"runs ({rows / seconds:,.0f} rows/s)"
            )
        load = os.getloadavg()
        console.print(f"Machine load average during the run: {load[0]:.1f} (1 min), 2 cores")
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())
        if server is not None:
            server.stop()
        if base is not None:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
