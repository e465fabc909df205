"""PostgreSQL persistence for shard owners: fenced group commit, takeover and recovery loads.

The contract (../team/PERSIST_API.md) in one paragraph: an owner calls :meth:`Store.take_over`
for its vshards (bumping each vshard's epoch, which fences out any previous owner), then
:meth:`Store.load` to rebuild their state, then :meth:`Store.commit` once per batch with the
epochs it was given. A commit is ONE transaction: the epoch of every vshard it touches is checked
(under a lock a takeover must wait for), then the journal, upserts, deletes and answers are
written, each as one statement for the whole batch. On plain PostgreSQL the whole commit is ONE
statement, ``billing_commit()`` (migrations 0003, 0004), sent on a connection the store holds
for commits (over the server's unix socket when it is local, its statements planned once);
several commits may run at once (``writers``), each on its own connection. A stale
epoch raises :class:`NotOwner` and writes nothing; any other failure raises
:class:`StoreUnavailable` and nothing is acknowledged (DESIGN.md invariants 2, 3, 5). Only after ``commit`` returns may the
owner send the batch's answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg
import psycopg_pool
from psycopg import errors as pg_errors
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from billing.protocol import BalanceResult, CreditControlAnswer
from billing.state import Bucket, Changes, ShardState
from sharding import _sql as q
from sharding._rows import (
    ACCOUNTS,
    BUCKETS,
    JOURNAL,
    SESSIONS,
    SUBSCRIBERS,
    batch_json,
    decode_answer,
    decode_balance_result,
    encode_answer,
    encode_balance_result,
)

__all__ = [
    "DuplicateKey",
    "NotOwner",
    "ShardMapRecord",
    "Store",
    "StoreError",
    "StoreUnavailable",
]

_MIGRATION_LOCK = 0x62696C6C  # pg_advisory_xact_lock key: "bill"
_FENCE_SQLSTATE = "BF001"  # raised by billing_fence() (0002) and billing_commit() (0003, 0004)
_COMMIT_LOCK = 0x62696C6C  # advisory lock (key, vshard): a vshard's commits vs its takeover
_CONNECT_TIMEOUT_S = 5
_RECONNECT_TIMEOUT_S = 5.0
_CHECK_IDLE_S = 1.0  # probe a pooled connection before use if idle longer than this
# Writer connections run only billing_commit. Its statements are planned once per connection
# (generic plans): by default PL/pgSQL planned several of them afresh on every call, ~100 µs of
# a one-request commit's ~300 µs of server CPU. A plan made once may be made while a table is
# still empty (a new deployment): seq scans and hash/merge joins are ruled out so that every
# statement (key lookups and inserts, nothing else) stays an index lookup as the tables grow.
_WRITER_OPTIONS = (
    "-c TimeZone=UTC -c plan_cache_mode=force_generic_plan"
    " -c enable_seqscan=off -c enable_hashjoin=off -c enable_mergejoin=off"
)
_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})


class StoreError(Exception):
    """Base of everything the store raises."""


class NotOwner(StoreError):
    """The caller's epoch for ``vshard`` is stale (or the vshard has no lease): NOTHING written."""

    def __init__(self, vshard: int, expected_epoch: int, actual_epoch: int | None) -> None:
        super().__init__(
            f"not the owner of vshard {vshard}: commit carried epoch {expected_epoch}, "
            f"the lease holds {actual_epoch if actual_epoch is not None else 'no lease'}"
        )
        self.vshard = vshard
        self.expected_epoch = expected_epoch
        self.actual_epoch = actual_epoch


class StoreUnavailable(StoreError):
    """The database is unreachable or the transaction failed: NOTHING is acknowledged.

    The owner must not send the batch's answers; it reloads its vshards (the database is the
    truth) and the clients retry with the same idempotency keys. The pool reconnects by itself
    when the server is back.
    """


class DuplicateKey(StoreUnavailable):
    """The commit repeated an idempotency key already in the journal or answers: NOTHING written.

    The database refused a second application of one key (invariant 3); the owner's memory was
    behind the database and must be reloaded.
    """


@dataclass(frozen=True, slots=True)
class ShardMapRecord:
    """The shard map as stored: which owner holds each vshard, under a version."""

    version: int
    vshard_count: int
    assignments: dict[int, str] = field(default_factory=dict)  # vshard -> owner name


@contextmanager
def _translate(what: str) -> Iterator[None]:
    """Turn driver errors into the store's: the caller learns *whether* anything was written."""
    try:
        yield
    except StoreError:
        raise
    except psycopg.Error as e:
        if e.sqlstate != _FENCE_SQLSTATE:
            raise _translated(what, e) from e
        detail = (e.diag.message_detail or "").split()
        vshard, expected, actual = int(detail[0]), int(detail[1]), detail[2]
        raise NotOwner(vshard, expected, None if actual == "-" else int(actual)) from e
    except (OSError, TimeoutError) as e:
        raise StoreUnavailable(f"{what} failed: {type(e).__name__}: {e}") from e


def _translated(what: str, e: psycopg.Error) -> StoreError:
    if isinstance(e, pg_errors.UniqueViolation):
        diag = e.diag
        return DuplicateKey(
            f"{what}: duplicate key in {diag.table_name} ({diag.message_detail}); "
            "nothing was written"
        )
    if isinstance(e, psycopg_pool.PoolTimeout):
        return StoreUnavailable(f"{what}: no database connection ({e}); nothing was written")
    return StoreUnavailable(f"{what} failed: {type(e).__name__}: {e}".rstrip())


class Store:
    """The persistence of shard owners on PostgreSQL (plain, or a Citus coordinator).

    Keyword arguments: pool sizes; ``timeout_s`` is how long a call waits for a connection before
    :class:`StoreUnavailable`; ``answer_horizon`` is how far back :meth:`load` reads answers
    (idempotency for retries; older keys are still refused by the journal's unique key);
    ``answer_load_max`` bounds how many of those it reads (the newest; None: all of the
    horizon), besides each open session's last answer, read whatever its age;
    ``max_commit_rows`` bounds one commit (invariant 6: a bigger one is refused, not tried);
    ``writers`` is how many commits may run at once, each on a connection of its own.
    """

    def __init__(
        self,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 4,
        timeout_s: float = 10.0,
        answer_horizon: timedelta = timedelta(days=1),
        answer_load_max: int | None = None,
        max_commit_rows: int = 200_000,
        writers: int = 2,
    ) -> None:
        if not 1 <= min_size <= max_size:
            raise ValueError(f"need 1 <= min_size <= max_size, got {min_size}, {max_size}")
        if writers < 1:
            raise ValueError(f"writers must be >= 1, got {writers}")
        if answer_load_max is not None and answer_load_max < 0:
            raise ValueError(f"answer_load_max must be >= 0 or None, got {answer_load_max}")
        self.dsn = dsn
        self.writers = writers
        self._timeout_s = timeout_s
        # Group commits run on connections of their own, held between commits (no pool
        # checkout per commit); at most ``writers`` at once (each commit on its own connection).
        self._idle_writers: list[tuple[psycopg.AsyncConnection[Any], float]] = []
        self._writer_slots = asyncio.Semaphore(writers)
        self._closed = False
        # The DSN writers connect with: the server's unix socket when it is this machine's
        # (found by open()), else ``dsn``.
        self._writer_dsn = dsn
        self.answer_horizon = answer_horizon
        self.answer_load_max = answer_load_max
        self.max_commit_rows = max_commit_rows
        self._citus = False
        self._returned_at: weakref.WeakKeyDictionary[psycopg.AsyncConnection[Any], float] = (
            weakref.WeakKeyDictionary()
        )
        self._pool = psycopg_pool.AsyncConnectionPool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            timeout=timeout_s,
            open=False,
            check=self._check_if_idle,
            reset=self._note_returned,
            # A slot that cannot reconnect is given up after a few seconds (the pool backs off
            # exponentially without a cap); the next request grows the pool afresh, so service
            # resumes within seconds of the server coming back.
            reconnect_timeout=_RECONNECT_TIMEOUT_S,
            kwargs={"options": "-c TimeZone=UTC", "connect_timeout": _CONNECT_TIMEOUT_S},
            name="billing-store",
        )

    async def _check_if_idle(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Probe a pooled connection before use only if it sat idle a while: back-to-back
        commits (the hot path) skip the extra round trip; after a pause, for instance a server
        restart, a dead connection is found and replaced before a commit is tried on it."""
        returned = self._returned_at.get(conn)
        if returned is None or time.monotonic() - returned > _CHECK_IDLE_S:
            await psycopg_pool.AsyncConnectionPool.check_connection(conn)

    async def _note_returned(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._returned_at[conn] = time.monotonic()

    async def open(self) -> None:
        """Open the pool (waits for ``min_size`` connections) and detect Citus."""
        with _translate("opening the store"):
            await self._pool.open(wait=True, timeout=self._pool.timeout)
            async with self._pool.connection() as conn:
                cur = await conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'citus'")
                self._citus = await cur.fetchone() is not None
                if not self._citus:
                    self._writer_dsn = await _local_socket_dsn(self.dsn, conn) or self.dsn

    async def close(self) -> None:
        self._closed = True
        idle, self._idle_writers = self._idle_writers, []
        for conn, _ in idle:
            with contextlib.suppress(Exception):
                await conn.close()
        await self._pool.close()

    async def __aenter__(self) -> Store:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @asynccontextmanager
    async def _tx(self, what: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        with _translate(what):
            async with self._pool.connection() as conn, conn.transaction():
                yield conn

    # -- schema ----------------------------------------------------------------------------

    async def migrate(self) -> list[str]:
        """Apply the migrations not yet applied, in order; return the versions applied now.

        Idempotent, and safe for concurrent starters: a transaction-scoped advisory lock
        serialises them, and each migration commits with its row in ``schema_migrations``.
        """
        applied_now: list[str] = []
        for version, sql in q.migrations():
            async with self._tx(f"migration {version}") as conn:
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations ("
                    " version text PRIMARY KEY,"
                    " applied_at timestamptz NOT NULL DEFAULT now())"
                )
                cur = await conn.execute(
                    "SELECT 1 FROM schema_migrations WHERE version = %s", (version,)
                )
                if await cur.fetchone() is not None:
                    continue
                await conn.execute(sql.encode())
                await conn.execute(
                    "INSERT INTO schema_migrations (version) VALUES (%s)", (version,)
                )
                applied_now.append(version)
        return applied_now

    # -- ownership -------------------------------------------------------------------------

    async def take_over(self, vshards: Sequence[int], owner: str) -> dict[int, int]:
        """Bump the epoch of each vshard (creating its lease at epoch 1) and record ``owner``.

        Returns vshard -> new epoch. It first takes each vshard's commit lock exclusively
        (``billing_commit`` holds it shared), and the UPDATE waits for any Citus-path commit
        holding the lease ``FOR SHARE``: in-flight commits of the old epoch finish first, so once
        this returns no write of a previous owner can land.
        """
        if not owner:
            raise ValueError("owner must be a non-empty name")
        wanted = sorted(set(vshards))
        async with self._tx("take_over") as conn:
            # The commit locks of these vshards, exclusively and in order (billing_commit holds
            # them shared): in-flight commits finish first, later ones see the new epoch.
            await conn.execute(
                "SELECT pg_advisory_xact_lock(%s, v) FROM unnest(%s::integer[]) AS v",
                (_COMMIT_LOCK, wanted),
            )
            cur = await conn.execute(
                "INSERT INTO shard_leases (vshard, epoch, owner, updated_at)"
                " SELECT v, 1, %s, now() FROM unnest(%s::integer[]) AS v"
                " ON CONFLICT (vshard) DO UPDATE SET epoch = shard_leases.epoch + 1,"
                " owner = EXCLUDED.owner, updated_at = EXCLUDED.updated_at"
                " RETURNING vshard, epoch",
                (owner, wanted),
            )
            return {int(v): int(e) for v, e in await cur.fetchall()}

    async def leases(self, vshards: Sequence[int] | None = None) -> dict[int, tuple[int, str]]:
        """vshard -> (epoch, owner) as stored (all leases when ``vshards`` is None)."""
        async with self._tx("reading leases") as conn:
            if vshards is None:
                cur = await conn.execute("SELECT vshard, epoch, owner FROM shard_leases")
            else:
                cur = await conn.execute(
                    "SELECT vshard, epoch, owner FROM shard_leases WHERE vshard = ANY(%s)",
                    (list(vshards),),
                )
            return {int(v): (int(e), str(o)) for v, e, o in await cur.fetchall()}

    # -- recovery ----------------------------------------------------------------------------

    async def load(
        self, vshards: Sequence[int], state: ShardState, *, now: datetime | None = None
    ) -> None:
        """Read the vshards' subscribers, accounts, buckets, open sessions (with reservations)
        and recent answers and balance results (see ``answer_load_max``) into ``state`` (added
        to what it holds; ``pending`` untouched). One REPEATABLE READ snapshot, so the parts agree.

        ``now`` is the domain's time (default: the database's clock): buckets that expired by
        then and were swept empty (``billing.accounts.expire_buckets`` writes them zeroed, then
        drops them from memory) stay in the database for audit but are not loaded. Each
        account's bucket list is in consumption order (priority, expiry, id), as
        ``billing.accounts.index_bucket`` keeps it. ``answer_log`` gets the credit-control
        answers' keys with their commit time (the database clock).
        """
        wanted = sorted(set(vshards))
        loaded = ShardState()
        async with self._tx("load") as conn:
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            await self._load(conn, wanted, loaded, now)
        # Merge only once everything was read: a failed load leaves ``state`` as it was.
        state.subscribers.update(loaded.subscribers)
        state.accounts.update(loaded.accounts)
        state.buckets.update(loaded.buckets)
        state.buckets_by_account.update(loaded.buckets_by_account)
        state.sessions.update(loaded.sessions)
        state.answers.update(loaded.answers)
        state.balance_results.update(loaded.balance_results)
        if loaded.answer_log:
            state.answer_log = deque(sorted([*state.answer_log, *loaded.answer_log]))

    async def _load(
        self,
        conn: psycopg.AsyncConnection[Any],
        wanted: list[int],
        state: ShardState,
        now: datetime | None,
    ) -> None:
        # All five queries go out at once (pipeline): the server runs the next while this
        # process turns the previous one's rows into records.
        async with conn.pipeline():
            cursors = []
            for sql, extra in (
                (q.SQL_LOAD_SUBSCRIBERS, ()),
                (q.SQL_LOAD_ACCOUNTS, ()),
                (q.SQL_LOAD_BUCKETS, (now,)),
                (q.SQL_LOAD_SESSIONS, ()),
                (q.SQL_LOAD_ANSWERS, (self.answer_horizon, self.answer_load_max, wanted)),
            ):
                cur = conn.cursor()
                await cur.execute(sql, (wanted, *extra))
                cursors.append(cur)
            subscribers, accounts, buckets, sessions, answers = cursors
            from_row = SUBSCRIBERS.from_row
            state.subscribers = {
                s.subscriber_id: s for s in map(from_row, await subscribers.fetchall())
            }
            from_row = ACCOUNTS.from_row
            state.accounts = {a.account_id: a for a in map(from_row, await accounts.fetchall())}
            by_account = state.buckets_by_account
            all_buckets = state.buckets
            several: list[list[str]] = []
            for b in map(BUCKETS.from_row, await buckets.fetchall()):
                all_buckets[b.bucket_id] = b
                ids = by_account.get(b.account_id)
                if ids is None:
                    by_account[b.account_id] = [b.bucket_id]
                else:
                    if len(ids) == 1:
                        several.append(ids)
                    ids.append(b.bucket_id)
            # Consumption order, as billing.accounts.index_bucket keeps it; sorted here rather
            # than by the server (a 100k-row ORDER BY spilled to disk and tripled the load).
            for ids in several:
                ids.sort(key=lambda i: _consumption_key(all_buckets[i]))
            from_row = SESSIONS.from_row
            state.sessions = {s.session_id: s for s in map(from_row, await sessions.fetchall())}
            for key, kind, text, committed_at in await answers.fetchall():
                if kind == "cc":
                    state.answers[key] = decode_answer(text)
                    state.answer_log.append((committed_at, key))
                else:
                    state.balance_results[key] = decode_balance_result(text)

    # -- the fenced group commit -----------------------------------------------------------------

    async def commit(self, changes: Changes, epochs: Mapping[int, int]) -> None:
        """Write ``changes`` in ONE transaction, fenced by ``epochs`` (vshard -> epoch).

        Raises :class:`NotOwner` (nothing written) if any touched vshard's lease holds another
        epoch; :class:`StoreUnavailable` (nothing acknowledged) if the database fails.
        """
        touched = _touched_vshards(changes)
        if not touched:
            return
        rows = _row_count(changes)
        if rows > self.max_commit_rows:
            raise ValueError(
                f"commit of {rows} rows exceeds max_commit_rows={self.max_commit_rows}: "
                "flush smaller batches"
            )
        missing = sorted(v for v in touched if v not in epochs)
        if missing:
            raise ValueError(f"commit touches vshards {missing} but no epoch was given for them")
        # Encode before the transaction: a bad record fails without touching the database.
        writes = encode_writes(changes)
        if self._citus:
            async with self._tx("commit") as conn:
                await self._check_epochs(conn, touched, epochs)
                async with conn.pipeline():
                    for sql, batch in writes:
                        await conn.execute(sql, (batch,))
            return
        # Plain PostgreSQL: ONE statement, billing_commit() (migrations 0003, 0004), on a held
        # autocommit connection: its own transaction, the fence first, then the writes; one
        # round trip and one prepared statement instead of a pipeline of nine.
        by_sql = dict(writes)
        params = (
            _int_array(touched),
            _int_array([epochs[v] for v in touched]),
            *(by_sql.get(s) for s in q.COMMIT_ARGS),
        )
        with _translate("commit"):
            await self._write(params)

    async def _write(self, params: Sequence[Any]) -> None:
        """Run ``billing_commit`` on a writer connection (bounded by ``writers``).

        A connection whose state is unknown after a failure (lost, cancelled mid-statement) is
        closed, and the next commit connects afresh; after a server-side refusal (a stale epoch,
        a repeated key) it is idle and clean, and kept.
        """
        async with self._writer_slots:
            conn = await self._writer()
            try:
                await _execute_prepared(conn, q.COMMIT_STATEMENT, params)
            except BaseException:
                if conn.closed or conn.info.transaction_status != pq.TransactionStatus.IDLE:
                    with contextlib.suppress(Exception):
                        await conn.close()
                else:
                    self._idle_writers.append((conn, time.monotonic()))
                raise
            if self._closed:
                await conn.close()
            else:
                self._idle_writers.append((conn, time.monotonic()))

    async def _writer(self) -> psycopg.AsyncConnection[Any]:
        """An idle writer connection (probed first if it sat idle a while), or a new one."""
        while self._idle_writers:
            conn, since = self._idle_writers.pop()
            if conn.closed:
                continue
            if time.monotonic() - since <= _CHECK_IDLE_S:
                return conn
            try:
                await conn.execute("")
                return conn
            except psycopg.Error:
                with contextlib.suppress(Exception):
                    await conn.close()
        if self._closed:
            raise StoreUnavailable("the store is closed; nothing was written")
        try:
            conn = await self._connect_writer(self._writer_dsn)
        except psycopg.OperationalError:
            if self._writer_dsn == self.dsn:
                raise
            # The local socket found at open() is gone (the server moved or was reconfigured):
            # back to the DSN as given, for this and every later writer.
            self._writer_dsn = self.dsn
            conn = await self._connect_writer(self.dsn)
        try:
            conn.pgconn.send_prepare(q.COMMIT_STATEMENT, q.SQL_COMMIT)
            await _results(conn)
        except BaseException:
            await conn.close()
            raise
        return conn

    async def _connect_writer(self, dsn: str) -> psycopg.AsyncConnection[Any]:
        return await asyncio.wait_for(
            psycopg.AsyncConnection.connect(
                dsn, autocommit=True, options=_WRITER_OPTIONS, connect_timeout=_CONNECT_TIMEOUT_S
            ),
            self._timeout_s,
        )

    async def _check_epochs(
        self, conn: psycopg.AsyncConnection[Any], touched: list[int], epochs: Mapping[int, int]
    ) -> None:
        """Read (and hold, FOR SHARE) the lease of every touched vshard; raise on a mismatch.

        The Citus path: Citus runs FOR SHARE only in single-shard (router) queries, so one
        statement per vshard, checked before any write is sent.
        """
        found: dict[int, int] = {}
        cur = conn.cursor()
        await cur.executemany(
            "SELECT vshard, epoch FROM shard_leases WHERE vshard = %s FOR SHARE",
            [(v,) for v in touched],
            returning=True,
        )
        while True:
            for v, e in await cur.fetchall():
                found[int(v)] = int(e)
            if not cur.nextset():
                break
        for v in touched:
            if found.get(v) != epochs[v]:
                raise NotOwner(v, epochs[v], found.get(v))

    # -- idempotency keys already applied --------------------------------------------------------

    async def applied_answers(
        self, keys: Sequence[tuple[int, str]]
    ) -> dict[tuple[int, str], CreditControlAnswer | BalanceResult | None]:
        """Which of ``keys`` ((vshard, idempotency key) pairs) were committed already.

        Maps each applied key to its stored answer (a credit-control answer or a balance
        result, read regardless of the load horizon), or to None when the journal has the key
        but the answers table no longer does (pruned): the request was applied and must never
        be applied again (invariant 3), but its original answer cannot be given. Keys never
        applied are absent. A fresh read (its own transaction): the owner calls it after a
        commit failed with :class:`DuplicateKey`, or before applying a suspected retransmission.
        """
        wanted = sorted(set(keys))
        if not wanted:
            return {}
        found: dict[tuple[int, str], CreditControlAnswer | BalanceResult | None] = {}
        async with self._tx("reading applied keys") as conn:
            await conn.execute("SET TRANSACTION READ ONLY")
            cur = await conn.execute(
                q.SQL_APPLIED_KEYS, ([v for v, _ in wanted], [k for _, k in wanted])
            )
            rows = await cur.fetchall()
        for vshard, key, kind, text, journaled in rows:
            ident = (int(vshard), str(key))
            if kind == "cc":
                found[ident] = decode_answer(text)
            elif kind == "balance":
                found[ident] = decode_balance_result(text)
            elif journaled:
                found[ident] = None
        return found

    # -- answers housekeeping ----------------------------------------------------------------------

    async def prune_answers(
        self, older_than: timedelta, *, vshards: Sequence[int] | None = None
    ) -> int:
        """Delete stored answers committed more than ``older_than`` ago; return how many.

        Keeps the answers table bounded (invariant 6); money stays exactly-once because the
        journal's unique key never forgets. ``vshards`` limits it to an owner's own vshards
        (each owner prunes what it holds; on Citus that keeps the delete on its shards).
        """
        async with self._tx("prune_answers") as conn:
            if vshards is None:
                cur = await conn.execute(
                    "DELETE FROM answers WHERE committed_at < now() - %s", (older_than,)
                )
            else:
                cur = await conn.execute(
                    "DELETE FROM answers WHERE vshard = ANY(%s) AND committed_at < now() - %s",
                    (list(vshards), older_than),
                )
            return cur.rowcount

    # -- shard map and plans (reference tables) ------------------------------------------------

    async def load_shard_map(self) -> ShardMapRecord | None:
        async with self._tx("load_shard_map") as conn:
            cur = await conn.execute("SELECT version, vshard_count, assignments FROM shard_map")
            row = await cur.fetchone()
        if row is None:
            return None
        version, count, assignments = row
        return ShardMapRecord(
            version=int(version),
            vshard_count=int(count),
            assignments={int(k): str(v) for k, v in assignments.items()},
        )

    async def save_shard_map(self, record: ShardMapRecord, *, expected_version: int | None) -> bool:
        """Replace the stored map with ``record`` iff its version is ``expected_version`` (None:
        iff there is no map yet). Returns whether it was saved (False: someone else won)."""
        assignments = json.dumps({str(k): v for k, v in sorted(record.assignments.items())})
        async with self._tx("save_shard_map") as conn:
            if expected_version is None:
                cur = await conn.execute(
                    "INSERT INTO shard_map (version, vshard_count, assignments)"
                    " VALUES (%s, %s, %s::jsonb) ON CONFLICT (singleton) DO NOTHING",
                    (record.version, record.vshard_count, assignments),
                )
            else:
                cur = await conn.execute(
                    "UPDATE shard_map SET version = %s, vshard_count = %s,"
                    " assignments = %s::jsonb, updated_at = now() WHERE version = %s",
                    (record.version, record.vshard_count, assignments, expected_version),
                )
            return cur.rowcount == 1

    async def save_plan(self, plan_id: str, version: int, text: str) -> None:
        """Store a plan (tariff) text under (plan_id, version); re-saving the same is a no-op,
        a different text under an existing version is refused (a version never changes)."""
        async with self._tx("save_plan") as conn:
            cur = await conn.execute(
                "INSERT INTO plans (plan_id, version, body) VALUES (%s, %s, %s)"
                " ON CONFLICT (plan_id, version) DO NOTHING",
                (plan_id, version, text),
            )
            if cur.rowcount == 0:
                cur = await conn.execute(
                    "SELECT body FROM plans WHERE plan_id = %s AND version = %s",
                    (plan_id, version),
                )
                row = await cur.fetchone()
                if row is not None and row[0] != text:
                    raise StoreError(
                        f"plan {plan_id!r} version {version} already stored with another text: "
                        "save it under a new version"
                    )

    async def load_plans(self) -> list[str]:
        """The text of the newest version of every plan, ordered by plan id."""
        async with self._tx("load_plans") as conn:
            cur = await conn.execute(
                "SELECT DISTINCT ON (plan_id) body FROM plans ORDER BY plan_id, version DESC"
            )
            return [str(r[0]) for r in await cur.fetchall()]

    # -- audit ---------------------------------------------------------------------------------

    async def audit(self) -> list[str]:
        """Check conservation with SQL over the stored state; return the violations ([] = OK).

        - every account's balance equals the sum of its journal amounts;
        - every bucket's units equal the sum of its journal units;
        - every account's reserved money and every bucket's reserved units equal what the open
          sessions' reservations hold, and neither is negative;
        - every journal row names an account that exists on its vshard.
        """
        async with self._tx("audit") as conn:
            problems: list[str] = []
            for sql, fmt in q.AUDIT_QUERIES:
                cur = await conn.execute(sql)
                problems += [fmt.format(*row) for row in await cur.fetchall()]
            return problems


async def _local_socket_dsn(dsn: str, conn: psycopg.AsyncConnection[Any]) -> str | None:
    """``dsn`` pointed at the server's unix-domain socket, when ``dsn`` reaches it over TCP on
    this machine (a loopback address) and the socket answers as the same server (same port,
    same postmaster start time); else None.

    A commit's round trip over a unix socket skips the TCP/IP stack on both sides (measured: ~8%
    of the server's CPU for a one-request commit, and client CPU too). The embedded server
    (sharding.pgserver) listens on both. Any failure to find or verify the socket keeps TCP.
    """
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return None
    host = str(params.get("host") or "")
    if host not in _LOOPBACK or params.get("hostaddr"):
        return None
    try:
        cur = await conn.execute(
            "SELECT current_setting('unix_socket_directories'), current_setting('port'),"
            " pg_postmaster_start_time()"
        )
        row = await cur.fetchone()
    except psycopg.Error:
        return None
    if row is None:
        return None
    directories, port, started = row
    for directory in str(directories).split(","):
        directory = directory.strip()
        if not directory.startswith("/") or not os.path.exists(f"{directory}/.s.PGSQL.{port}"):
            continue
        local = make_conninfo(dsn, host=directory, port=str(port))
        try:
            async with await psycopg.AsyncConnection.connect(
                local, connect_timeout=_CONNECT_TIMEOUT_S, autocommit=True
            ) as probe:
                cur = await probe.execute("SELECT pg_postmaster_start_time()")
                same = await cur.fetchone()
        except (psycopg.Error, OSError):
            continue
        if same is not None and same[0] == started:
            return local
    return None


def _consumption_key(bucket: Bucket) -> tuple[int, bool, datetime | None, str]:
    """Lowest priority first, then earliest expiry (none last), then id."""
    expiry = bucket.expires_at
    return (bucket.priority, expiry is None, expiry, bucket.bucket_id)


def encode_writes(changes: Changes) -> list[tuple[bytes, str]]:
    """(statement, JSON batch) per kind of row ``changes`` writes, in the commit's order."""
    writes: list[tuple[bytes, str]] = []
    if changes.journal:
        writes.append((q.SQL_JOURNAL, JOURNAL.batch_json(changes.journal)))
    if changes.subscribers:
        writes.append(
            (q.SQL_SUBSCRIBERS, SUBSCRIBERS.batch_json(list(changes.subscribers.values())))
        )
    if changes.accounts:
        writes.append((q.SQL_ACCOUNTS, ACCOUNTS.batch_json(list(changes.accounts.values()))))
    if changes.buckets:
        writes.append((q.SQL_BUCKETS, BUCKETS.batch_json(list(changes.buckets.values()))))
    if changes.sessions:
        writes.append((q.SQL_SESSIONS, SESSIONS.batch_json(list(changes.sessions.values()))))
    if changes.ended_sessions:
        ended = [[v, sid] for sid, v in changes.ended_sessions.items()]
        writes.append((q.SQL_END_SESSIONS, batch_json(ended)))
    if changes.answers or changes.balance_results:
        # Each answer as its own JSON text, stored as sent (q.SQL_ANSWERS).
        answers: list[tuple[int, str, str, str]] = [
            (v, key, "cc", encode_answer(answer)) for key, (v, answer) in changes.answers.items()
        ]
        answers += [
            (v, key, "balance", encode_balance_result(result))
            for key, (v, result) in changes.balance_results.items()
        ]
        writes.append((q.SQL_ANSWERS, batch_json(answers)))
    return writes


async def _execute_prepared(
    conn: psycopg.AsyncConnection[Any], name: bytes, params: Sequence[str | None]
) -> None:
    """Run the prepared statement ``name`` with text ``params`` on ``conn``; raise its error.

    The group commit's hot path at small batches, driven through libpq directly: psycopg's
    async ``execute`` (cursor, adapters, prepared-statement cache, a reader registration per
    wait) cost ~170 µs of CPU per one-request commit against ~75 µs for its sync twin; this is
    one send, one wait for the socket, one result. The statement returns no rows we need. The
    caller owns ``conn`` (nothing else uses it meanwhile) and closes it if this raises with a
    statement still in flight.
    """
    conn.pgconn.send_query_prepared(name, [None if p is None else p.encode() for p in params])
    await _results(conn)


async def _results(conn: psycopg.AsyncConnection[Any]) -> None:
    """Flush what was sent on ``conn``'s libpq connection, read every result; raise the error."""
    pgconn = conn.pgconn
    loop = asyncio.get_running_loop()
    fd = pgconn.socket
    while pgconn.flush():  # the batch did not fit the socket buffer at once
        await _ready(loop, fd, write=True)
    error: psycopg.Error | None = None
    while True:
        # Parse what libpq holds already (flush() may have read some); read the socket only
        # once it is readable: a read straight after the send finds nothing but costs a syscall.
        if pgconn.is_busy():
            await _ready(loop, fd, write=False)
            pgconn.consume_input()
            continue
        result = pgconn.get_result()
        if result is None:
            break
        if result.status == pq.ExecStatus.FATAL_ERROR and error is None:
            error = psycopg.errors.error_from_result(result, encoding=conn.info.encoding)
    if error is not None:
        raise error


async def _ready(loop: asyncio.AbstractEventLoop, fd: int, *, write: bool) -> None:
    """Wait until ``fd`` is readable (or writable)."""
    future: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not future.done():
            future.set_result(None)

    if write:
        loop.add_writer(fd, wake)
        try:
            await future
        finally:
            loop.remove_writer(fd)
    else:
        loop.add_reader(fd, wake)
        try:
            await future
        finally:
            loop.remove_reader(fd)


def _int_array(values: Sequence[int]) -> str:
    """A PostgreSQL array literal of ints: psycopg's list adapter costs ~20 µs a list to set up,
    a third of a one-request commit's client CPU; the server casts the text instead."""
    return "{" + ",".join(map(str, values)) + "}"


def _row_count(changes: Changes) -> int:
    return (
        len(changes.accounts)
        + len(changes.buckets)
        + len(changes.subscribers)
        + len(changes.sessions)
        + len(changes.ended_sessions)
        + len(changes.journal)
        + len(changes.answers)
        + len(changes.balance_results)
    )


def _touched_vshards(changes: Changes) -> list[int]:
    vs: set[int] = set()
    vs.update(a.vshard for a in changes.accounts.values())
    vs.update(b.vshard for b in changes.buckets.values())
    vs.update(s.vshard for s in changes.subscribers.values())
    vs.update(s.vshard for s in changes.sessions.values())
    vs.update(changes.ended_sessions.values())
    vs.update(j.vshard for j in changes.journal)
    vs.update(v for v, _ in changes.answers.values())
    vs.update(v for v, _ in changes.balance_results.values())
    return sorted(vs)
