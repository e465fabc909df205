"""Group commits shaped like the unary load, against schema variants, in ONE process and server.

``bench_commit_paths.py`` commits DEBIT entries only; the unary load (``cluster/loadgen.py``'s
default mix: SMS events, voice and data sessions INITIAL / UPDATE / TERMINATION) also upserts
and ends sessions, rewrites usage counters and stores one answer per request. Here the batches
are made by the domain itself: ``cluster.loadgen.Workload`` builds the requests (the same mix,
sessions continued after their answer), ``billing.charging.handle`` answers them on one
in-memory state of ``--subscribers`` payg subscribers, and every ``--batch`` requests
``take_changes()`` gives one commit's :class:`~billing.state.Changes` (the unary load's owner
batches average ~12.7 requests).

Each *variant* is a database of its own on one embedded server, migrated to 0004 and then
changed (``VARIANTS``: the newest migrations, fillfactor, an index dropped, commit_delay...).
Every variant gets the same provisioning and then the same commits in the same order, so their
tables stay alike. Two ways to alternate:

- turns (default): the variants take turns, ``--seconds`` each, ``--rounds`` times, with
  ``--writers`` concurrent committers (``Store.commit``: billing_commit on unix-socket writer
  connections, generic plans). Printed per variant, medians of the rounds: commits/s, the
  committing backends' CPU per commit and per request (/proc/PID/schedstat), the whole
  server's (postmaster and every child: WAL writer, checkpointer, autovacuum...), WAL bytes
  per request and WAL syncs per commit (pg_current_wal_lsn, pg_stat_wal around each turn);
- ``--interleave`` (one writer): every batch goes to every variant in turn and the committing
  backend's CPU is read around each commit, so the machine's noise hits every variant alike
  (the backend's CPU only).

At the end, each table's share of HOT updates (pg_stat_user_tables).

    .venv/bin/python benchmarks/bench_commit_mix.py [--variants 0004,0005] [--rounds 5]
        [--seconds 2] [--batch 13] [--subscribers 20000] [--writers 1] [--interleave]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import scratch_database

from billing.accounts import provision_subscriber
from billing.charging import handle
from billing.state import Changes, ShardState
from billing.tariff import builtin_catalog
from cluster.convert import answer_to_proto, request_from_proto
from cluster.loadgen import LoadConfig, Workload, subscriber_id
from sharding import _sql as q
from sharding.store import Store
from sharding.vshard import VSHARD_COUNT_DEFAULT, vshard_of

EUR = 1_000_000
_HOT_TABLES = ("accounts", "sessions", "subscribers", "buckets", "journal", "answers")
_FF = "ALTER TABLE {} SET (fillfactor = {})"


def _newest_commit_function() -> str:
    """The CREATE FUNCTION billing_commit of the newest migration that defines it."""
    text = [sql for _, sql in q.migrations() if "FUNCTION billing_commit(" in sql][-1]
    return text[text.index("CREATE OR REPLACE FUNCTION billing_commit(") :]


_NEW_FN = "<newest billing_commit>"
# name -> (migrations to apply: "0004" = up to 0004, "all" = every one; SQL run after them).
VARIANTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "0004": ("0004", ()),
    "0005": ("all", ()),
    "new_fn": ("0004", (_NEW_FN,)),
    "ff90": ("0004", tuple(_FF.format(t, 90) for t in ("accounts", "sessions"))),
    "ff70": ("0004", tuple(_FF.format(t, 70) for t in ("accounts", "sessions"))),
    "no_jacct": ("0004", ("DROP INDEX journal_account",)),
    "no_arecent": ("0004", ("DROP INDEX answers_recent",)),
    "new_fn_no_jacct": ("0004", (_NEW_FN, "DROP INDEX journal_account")),
    "0005_no_jacct": ("all", ("DROP INDEX journal_account",)),
    # Group commit of concurrent writers (run with --writers 2 or more): settings of the
    # database, so only that variant's writer connections have them.
    "cd50": ("0004", ('ALTER DATABASE "{db}" SET commit_delay = 50',)),
    "cd200": ("0004", ('ALTER DATABASE "{db}" SET commit_delay = 200',)),
    "cd500": ("0004", ('ALTER DATABASE "{db}" SET commit_delay = 500',)),
}


@dataclass
class Turn:
    """One variant's figures over one turn."""

    commits: int
    requests: int
    seconds: float
    backend_s: float
    server_s: float
    wal_bytes: int
    wal_syncs: int


@dataclass
class Variant:
    name: str
    dsn: str
    store: Store | None = None
    epochs: dict[int, int] = field(default_factory=dict)
    turns: list[Turn] = field(default_factory=list)


async def migrate_to(dsn: str, upto: str, extra: Sequence[str]) -> None:
    """Apply the migrations up to ``upto`` ("all": every one) the way ``Store.migrate`` records
    them, then ``extra``."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for version, sql in q.migrations():
            if upto != "all" and version[:4] > upto:
                break
            async with conn.transaction():
                await conn.execute(sql.encode())
                await conn.execute(
                    "INSERT INTO schema_migrations (version) VALUES (%s)", (version,)
                )
        for statement in extra:
            sql = _newest_commit_function() if statement == _NEW_FN else statement
            sql = sql.replace("{db}", str(conn.info.dbname))
            await conn.execute(sql.encode())


class Load:
    """The unary load's requests answered by the domain; batches of Changes to commit."""

    def __init__(self, subscribers: int, batch: int, seed: int, prefix: str = "4917") -> None:
        self.catalog = builtin_catalog()
        self.state = ShardState()
        self.batch = batch
        self.now = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
        plan = self.catalog.get("payg")
        for i in range(subscribers):
            sub = subscriber_id(i, prefix)
            provision_subscriber(
                self.state,
                subscriber_id=sub,
                vshard=vshard_of(sub, VSHARD_COUNT_DEFAULT),
                plan=plan,
                payment_mode=None,
                initial_balance_micros=1_000 * EUR,
                credit_limit_micros=0,
                currency=None,
                now=self.now,
            )
        self.workload = Workload(
            LoadConfig(
                target="-",
                subscribers=subscribers,
                transport="unary",
                seed=seed,
                subscriber_prefix=prefix,
            )
        )
        self.codes: dict[int, int] = {}

    def opening(self) -> Changes:
        return self.state.take_changes()

    def next_batch(self) -> tuple[Changes, int]:
        """The Changes of ``batch`` requests (answers fed back after the batch, as the front
        door's batch comes back at once), and how many requests."""
        taken = [self.workload.next_request() for _ in range(self.batch)]
        done = []
        for msg, session in taken:
            self.now += timedelta(milliseconds=1)
            msg.event_time.FromDatetime(self.now.replace(tzinfo=None))
            answer = handle(self.state, request_from_proto(msg), now=self.now, catalog=self.catalog)
            self.codes[int(answer.result_code)] = self.codes.get(int(answer.result_code), 0) + 1
            done.append((session, msg, answer_to_proto(answer)))
        for session, msg, reply in done:
            self.workload.answered(session, msg, reply)
        return self.state.take_changes(), len(taken)


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry))
        except OSError:
            continue
    return found


def _schedstat_s(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[0]) / 1e9
    except OSError:
        return 0.0


def server_cpu_s(postmaster: int) -> float:
    """The server's CPU so far: the postmaster and its live children to the nanosecond, plus
    its reaped children (clock ticks; connections of this benchmark stay open)."""
    with open(f"/proc/{postmaster}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    reaped = (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")
    return reaped + _schedstat_s(postmaster) + sum(map(_schedstat_s, _children(postmaster)))


async def wal_lsn(conn: psycopg.AsyncConnection[Any]) -> tuple[int, int]:
    """The WAL position in bytes and how many WAL syncs (fdatasync) the server has done."""
    cur = await conn.execute(
        "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn, wal_sync FROM pg_stat_wal"
    )
    row = await cur.fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


async def hot_share(dsn: str) -> str:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute(
            "SELECT relname, n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables"
            " WHERE relname = ANY(%s) AND n_tup_upd > 0 ORDER BY relname",
            (list(_HOT_TABLES),),
        )
        rows = await cur.fetchall()
    return ", ".join(f"{r}: {hot / upd:.0%} of {upd:,}" for r, upd, hot in rows)


async def interleaved_round(variants: list[Variant], load: Load, batches: int) -> None:
    """``--interleave``: each batch goes to every variant in turn (the order rotating), and
    each commit's backend CPU is read around it: the machine's noise hits every variant alike.
    Adds one Turn per variant (server CPU, WAL: not measured in this mode)."""
    totals = {v.name: [0, 0, 0.0, 0.0] for v in variants}  # commits, requests, backend, wall
    for i in range(batches):
        changes, count = load.next_batch()
        k = i % len(variants)
        for v in variants[k:] + variants[:k]:
            assert v.store is not None
            backend = v.store._idle_writers[-1][0].info.backend_pid
            cpu0, start = _schedstat_s(backend), time.perf_counter()
            await v.store.commit(changes, v.epochs)
            wall, cpu = time.perf_counter() - start, _schedstat_s(backend) - cpu0
            t = totals[v.name]
            t[0] += 1
            t[1] += count
            t[2] += cpu
            t[3] += wall
    for v in variants:
        commits, requests, cpu, wall = totals[v.name]
        v.turns.append(Turn(int(commits), int(requests), wall, cpu, cpu, 0, 0))


async def run(args: argparse.Namespace, admin: str) -> None:
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}: choose among {', '.join(VARIANTS)}")
    base = psycopg.conninfo.conninfo_to_dict(admin)
    variants = []
    async with await psycopg.AsyncConnection.connect(admin, autocommit=True) as conn:
        cur = await conn.execute("SELECT pg_backend_pid()")
        row = await cur.fetchone()
        with open(f"/proc/{row[0] if row else 0}/stat") as f:
            postmaster = int(f.read().rsplit(")", 1)[1].split()[1])
        for name in names:
            db = f"mix_{name}"
            await conn.execute(f'CREATE DATABASE "{db}"'.encode())
            variants.append(
                Variant(name, psycopg.conninfo.make_conninfo("", **{**base, "dbname": db}))
            )
    # One load per concurrent writer (an owner's writer connection), each with its own
    # subscribers: their commits never touch the same rows.
    loads = [
        Load(args.subscribers // args.writers, args.batch, args.seed + i, f"49{17 + i}")
        for i in range(args.writers)
    ]
    openings = [load.opening() for load in loads]
    all_vshards = sorted({s.vshard for load in loads for s in load.state.subscribers.values()})
    for v in variants:
        upto, extra = VARIANTS[v.name]
        await migrate_to(v.dsn, upto, extra)
        v.store = Store(v.dsn, min_size=1, max_size=1, writers=args.writers)
        await v.store.open()
        v.epochs = await v.store.take_over(all_vshards, "bench-mix")
        for opening in openings:
            await v.store.commit(opening, v.epochs)
        async with await psycopg.AsyncConnection.connect(v.dsn, autocommit=True) as c:
            await c.execute("VACUUM ANALYZE")
            for setting in args.setting or ():
                await c.execute(f"ALTER DATABASE mix_{v.name} SET {setting}".encode())

    async def commit_all(
        v: Variant, todo: list[list[tuple[Changes, int]]], seconds: float
    ) -> tuple[int, list[Changes]]:
        """Each writer commits its own load's batches in order, until ``seconds`` have passed
        (if given). Returns the requests committed, and what is left for each writer (to be
        committed after the clock, so the variants' tables stay alike)."""
        assert v.store is not None
        store = v.store
        start = time.perf_counter()
        done = [0] * len(todo)

        async def writer(i: int) -> int:
            requests = 0
            for changes, count in todo[i]:
                await store.commit(changes, v.epochs)
                done[i] += 1
                requests += count
                if seconds and time.perf_counter() - start > seconds:
                    break
            return requests

        counts = await asyncio.gather(*(writer(i) for i in range(len(todo))))
        left = [changes for i, batches in enumerate(todo) for changes, _ in batches[done[i] :]]
        return sum(counts), left

    # Warm-up: the same commits to every variant (sessions opened, plans made, every writer
    # connection open).
    warm = [[load.next_batch() for _ in range(50)] for load in loads]
    for v in variants:
        await commit_all(v, warm, 0)
    del warm
    per_turn = max(1, int(args.seconds * 1500 / args.writers))
    async with await psycopg.AsyncConnection.connect(admin, autocommit=True) as probe:
        for round_ in range(args.rounds):
            if args.interleave:
                await interleaved_round(variants, loads[0], per_turn)
                continue
            # Each variant commits the same batches in the same order; the order of the
            # variants turns around every other round.
            todo = [[load.next_batch() for _ in range(per_turn)] for load in loads]
            ordered = variants if round_ % 2 == 0 else variants[::-1]
            for v in ordered:
                assert v.store is not None
                backends = [c.info.backend_pid for c, _ in v.store._idle_writers]
                lsn0, syncs0 = await wal_lsn(probe)
                server0 = server_cpu_s(postmaster)
                backend0 = sum(map(_schedstat_s, backends))
                start = time.perf_counter()
                requests, left = await commit_all(v, todo, args.seconds)
                elapsed = time.perf_counter() - start
                server = server_cpu_s(postmaster) - server0
                own = sum(map(_schedstat_s, backends)) - backend0
                lsn, syncs = await wal_lsn(probe)
                commits = round(requests / args.batch)
                v.turns.append(
                    Turn(commits, requests, elapsed, own, server, lsn - lsn0, syncs - syncs0)
                )
                for changes in left:
                    await v.store.commit(changes, v.epochs)
    codes: dict[int, int] = {}
    for load in loads:
        for code, n in load.codes.items():
            codes[code] = codes.get(code, 0) + n
    load = loads[0]
    load.codes = codes
    print(f"result codes: {load.codes}")
    first = variants[0]

    def med(v: Variant, f: Callable[[Turn], float]) -> float:
        return statistics.median(f(t) for t in v.turns)

    base_server = med(first, lambda t: t.server_s / t.requests * 1e6)
    print(
        f"{'variant':>10} {'commits/s':>10} {'req/commit':>10} {'backend/commit':>15}"
        f" {'server/commit':>14} {'backend/req':>12} {'server/req':>11} {'WAL B/req':>10}"
        f" {'syncs/commit':>12} {'server ratio':>12}"
    )
    for v in variants:
        server_req = med(v, lambda t: t.server_s / t.requests * 1e6)
        print(
            f"{v.name:>10} {med(v, lambda t: t.commits / t.seconds):>10,.0f}"
            f" {med(v, lambda t: t.requests / t.commits):>10.1f}"
            f" {med(v, lambda t: t.backend_s / t.commits * 1e6):>15,.0f}"
            f" {med(v, lambda t: t.server_s / t.commits * 1e6):>14,.0f}"
            f" {med(v, lambda t: t.backend_s / t.requests * 1e6):>12.1f}"
            f" {server_req:>11.1f} {med(v, lambda t: t.wal_bytes / t.requests):>10,.0f}"
            f" {med(v, lambda t: t.wal_syncs / t.commits):>12.2f}"
            f" {server_req / base_server if base_server else 0:>12.2f}"
        )
    print(
        f"(CPU µs, medians of {args.rounds} turns of {args.seconds} s per variant; backend: the"
        " committing connection's server process; server: the postmaster and all its children)"
    )
    for v in variants:
        print(f"HOT updates [{v.name}]: {await hot_share(v.dsn)}")
        assert v.store is not None
        await v.store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", help="an existing server (default: an embedded one, started here)")
    parser.add_argument("--variants", default="0004,0005", help=f"of {', '.join(VARIANTS)}")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--batch", type=int, default=13, help="requests per commit")
    parser.add_argument("--subscribers", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--interleave",
        action="store_true",
        help="every batch to every variant in turn, CPU read around each commit (one writer)",
    )
    parser.add_argument(
        "--writers", type=int, default=1, help="concurrent committers (an owner's writers)"
    )
    parser.add_argument(
        "--setting",
        action="append",
        help="a setting for every variant's database, e.g. 'commit_delay = 100' (repeatable)",
    )
    args = parser.parse_args()
    with scratch_database(args.dsn, "bench_mix") as dsn:
        asyncio.run(run(args, dsn))


if __name__ == "__main__":
    main()
