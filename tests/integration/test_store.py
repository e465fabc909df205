"""The store against a real PostgreSQL: round trips, fencing, idempotency keys, audit, shard map."""

from __future__ import annotations

import asyncio
import copy

import psycopg
import pytest

from billing.state import Changes, ShardState
from sharding import _samples as sample
from sharding.store import DuplicateKey, NotOwner, ShardMapRecord, Store, StoreError

pytestmark = pytest.mark.integration


def full_changes(vshard: int = 3) -> Changes:
    """One of every entity, consistent with each other (so the audit passes)."""
    ch = Changes()
    res = sample.reservation(10, money_micros=2_000, bucket_units={"b-1": 500})
    ch.accounts["a-1"] = sample.account("a-1", vshard, balance_micros=10_000, reserved_micros=2_000)
    ch.buckets["b-1"] = sample.bucket("b-1", "a-1", vshard, units=1_000, reserved_units=500)
    ch.subscribers["s-1"] = sample.subscriber("s-1", vshard, "a-1")
    ch.sessions["sess-1"] = sample.session("sess-1", vshard, "s-1", "a-1", reservations={10: res})
    ch.journal.append(sample.entry(vshard, "a-1", "open:a-1", amount_micros=10_000))
    ch.journal.append(sample.entry(vshard, "a-1", "grant:b-1", bucket_id="b-1", units=1_000))
    ch.answers["cc:sess-1#0"] = (vshard, sample.answer("sess-1", 0))
    ch.balance_results["top-1"] = (vshard, sample.balance_result("top-1", "a-1", 10_000))
    return ch


def expected_state(ch: Changes) -> ShardState:
    st = ShardState()
    st.subscribers.update(ch.subscribers)
    st.accounts.update(ch.accounts)
    st.buckets.update(ch.buckets)
    for b in sorted(ch.buckets.values(), key=lambda b: b.bucket_id):
        st.buckets_by_account.setdefault(b.account_id, []).append(b.bucket_id)
    st.sessions.update(ch.sessions)
    st.answers.update({k: a for k, (_, a) in ch.answers.items()})
    st.balance_results.update({k: r for k, (_, r) in ch.balance_results.items()})
    return st


def loaded(aio: asyncio.Runner, store: Store, vshards: list[int]) -> ShardState:
    st = ShardState()
    aio.run(store.load(vshards, st))
    return st


def without_log(st: ShardState) -> ShardState:
    """The answer log carries commit times from the database clock: compare its keys apart."""
    out = copy.copy(st)
    out.answer_log = type(st.answer_log)()
    return out


def count(dsn: str, table: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}".encode()).fetchone()
        assert row is not None
        return int(row[0])


SUBSCRIBER_TABLES = ("subscribers", "accounts", "buckets", "sessions", "journal", "answers")


def test_round_trip_of_every_entity(store: Store, aio: asyncio.Runner) -> None:
    epochs = aio.run(store.take_over([3], "owner-a"))
    ch = full_changes(3)
    want = expected_state(ch)
    aio.run(store.commit(ch, epochs))
    got = loaded(aio, store, [3])
    assert without_log(got) == want
    assert [k for _, k in got.answer_log] == ["cc:sess-1#0"]
    assert got.pending.is_empty()
    assert loaded(aio, store, [4]) == ShardState()  # other vshards see nothing
    assert aio.run(store.audit()) == []


def test_updates_overwrite_and_ended_sessions_are_deleted(
    store: Store, aio: asyncio.Runner, pg_dsn: str
) -> None:
    epochs = aio.run(store.take_over([3], "owner-a"))
    aio.run(store.commit(full_changes(3), epochs))
    ch = Changes()
    acc = sample.account("a-1", 3, balance_micros=9_000, reserved_micros=0)
    bkt = sample.bucket("b-1", "a-1", 3, units=1_000, reserved_units=0)
    ch.accounts["a-1"], ch.buckets["b-1"] = acc, bkt
    ch.ended_sessions["sess-1"] = 3
    ch.journal.append(sample.entry(3, "a-1", "cc:sess-1#1", amount_micros=-1_000))
    aio.run(store.commit(ch, epochs))
    got = loaded(aio, store, [3])
    assert got.accounts == {"a-1": acc}
    assert got.buckets == {"b-1": bkt}
    assert got.sessions == {}
    assert count(pg_dsn, "journal") == 3
    assert aio.run(store.audit()) == []


def test_load_merges_into_existing_state_and_keeps_pending(
    store: Store, aio: asyncio.Runner
) -> None:
    epochs = aio.run(store.take_over([1, 2], "owner-a"))
    c1, c2 = full_changes(1), Changes()
    c2.accounts["a-2"] = sample.account("a-2", 2)
    aio.run(store.commit(c1, epochs))
    aio.run(store.commit(c2, epochs))
    st = ShardState()
    aio.run(store.load([1], st))
    st.pending.accounts["x"] = sample.account("x", 9)
    aio.run(store.load([2], st))
    assert set(st.accounts) == {"a-1", "a-2"}
    assert set(st.pending.accounts) == {"x"}


def test_empty_changes_write_nothing_and_need_no_epoch(store: Store, aio: asyncio.Runner) -> None:
    aio.run(store.commit(Changes(), {}))


def test_missing_epoch_is_a_clear_error(store: Store, aio: asyncio.Runner, pg_dsn: str) -> None:
    aio.run(store.take_over([3], "owner-a"))
    with pytest.raises(ValueError, match=r"vshards \[3\]"):
        aio.run(store.commit(full_changes(3), {}))
    assert count(pg_dsn, "journal") == 0


def test_oversized_commit_is_refused_whole(store: Store, aio: asyncio.Runner, pg_dsn: str) -> None:
    epochs = aio.run(store.take_over([3], "owner-a"))
    store.max_commit_rows = 5
    with pytest.raises(ValueError, match="exceeds max_commit_rows=5"):
        aio.run(store.commit(full_changes(3), epochs))
    assert count(pg_dsn, "journal") == 0


def test_naive_datetime_is_refused_before_writing(store: Store, aio: asyncio.Runner) -> None:
    epochs = aio.run(store.take_over([3], "owner-a"))
    ch = Changes()
    acc = sample.account("a-1", 3)
    acc.created_at = acc.created_at.replace(tzinfo=None)
    ch.accounts["a-1"] = acc
    with pytest.raises(ValueError, match=r"account\.created_at must be timezone-aware"):
        aio.run(store.commit(ch, epochs))


# -- fencing -----------------------------------------------------------------------------------


def test_take_over_bumps_epochs(store: Store, aio: asyncio.Runner) -> None:
    assert aio.run(store.take_over([1, 2], "a")) == {1: 1, 2: 1}
    assert aio.run(store.take_over([2, 3], "b")) == {2: 2, 3: 1}
    assert aio.run(store.leases()) == {1: (1, "a"), 2: (2, "b"), 3: (1, "b")}
    with pytest.raises(ValueError, match="owner"):
        aio.run(store.take_over([1], ""))


def test_stale_owner_is_rejected_and_writes_nothing(
    store: Store, aio: asyncio.Runner, pg_dsn: str
) -> None:
    old = aio.run(store.take_over([3, 4], "owner-a"))
    new = aio.run(store.take_over([3], "owner-b"))
    assert new[3] == old[3] + 1
    ch = full_changes(3)
    ch.accounts["a-4"] = sample.account("a-4", 4)  # vshard 4 is still owner-a's: not enough
    with pytest.raises(NotOwner) as info:
        aio.run(store.commit(ch, old))
    assert (info.value.vshard, info.value.expected_epoch, info.value.actual_epoch) == (3, 1, 2)
    for table in SUBSCRIBER_TABLES:
        assert count(pg_dsn, table) == 0, table
    aio.run(store.commit(full_changes(3), new))  # the new owner writes
    assert count(pg_dsn, "journal") == 2


def test_vshard_without_lease_is_not_owned(store: Store, aio: asyncio.Runner) -> None:
    with pytest.raises(NotOwner) as info:
        aio.run(store.commit(full_changes(7), {7: 1}))
    assert info.value.actual_epoch is None


def test_citus_style_epoch_check_path(store: Store, aio: asyncio.Runner, pg_dsn: str) -> None:
    """The one-statement-per-vshard lease check used on Citus gives the same answers."""
    store._citus = True
    epochs = aio.run(store.take_over([3, 4], "owner-a"))
    ch = full_changes(3)
    ch.accounts["a-4"] = sample.account("a-4", 4)
    aio.run(store.commit(ch, epochs))
    aio.run(store.take_over([4], "owner-b"))
    ch2 = Changes()
    ch2.accounts["a-4"] = sample.account("a-4", 4, balance_micros=1)
    with pytest.raises(NotOwner):
        aio.run(store.commit(ch2, epochs))
    assert count(pg_dsn, "accounts") == 2


def test_take_over_waits_for_a_commit_in_flight(store: Store, aio: asyncio.Runner) -> None:
    """The vshard's commit lock is held by a commit: a takeover cannot slip in between the
    epoch check and COMMIT, so the new owner's load sees every write the old owner made."""

    async def scenario() -> list[str]:
        epochs = await store.take_over([3], "owner-a")
        events: list[str] = []
        async with await psycopg.AsyncConnection.connect(store.dsn) as blocker:
            # Hold the answers table so the commit stops after its epoch check.
            await blocker.execute("LOCK TABLE answers IN EXCLUSIVE MODE")
            commit = asyncio.create_task(store.commit(full_changes(3), epochs))
            # The commit is one statement, billing_commit() (its INSERT INTO answers waits).
            await _wait_for_lock_waiter(store.dsn, "SELECT billing_commit")
            takeover = asyncio.create_task(store.take_over([3], "owner-b"))
            await _wait_for_lock_waiter(store.dsn, "SELECT pg_advisory_xact_lock")
            events.append("takeover blocked" if not takeover.done() else "takeover ran")
            await blocker.rollback()
        await commit
        events.append("commit done")
        assert (await takeover) == {3: 2}
        st = ShardState()
        await store.load([3], st)
        events.append(f"loaded {len(st.accounts)} account(s)")
        return events

    assert aio.run(scenario()) == ["takeover blocked", "commit done", "loaded 1 account(s)"]


def test_commit_during_a_takeover_waits_then_writes_nothing(
    store: Store, aio: asyncio.Runner, pg_dsn: str
) -> None:
    """A commit sent while a takeover of its vshard is under way waits for it, then reads the new
    epoch (not the one it would have seen before waiting): NotOwner, nothing written."""

    async def scenario() -> None:
        epochs = await store.take_over([3], "owner-a")
        async with await psycopg.AsyncConnection.connect(store.dsn) as blocker:
            # The takeover stops after taking the commit lock, before its epoch UPDATE commits.
            await blocker.execute("LOCK TABLE shard_leases IN EXCLUSIVE MODE")
            takeover = asyncio.create_task(store.take_over([3], "owner-b"))
            await _wait_for_lock_waiter(store.dsn, "INSERT INTO shard_leases")
            commit = asyncio.create_task(store.commit(full_changes(3), epochs))
            await _wait_for_lock_waiter(store.dsn, "SELECT billing_commit")
            await blocker.rollback()
        assert (await takeover) == {3: 2}
        with pytest.raises(NotOwner) as info:
            await commit
        assert (info.value.expected_epoch, info.value.actual_epoch) == (1, 2)

    aio.run(scenario())
    for table in SUBSCRIBER_TABLES:
        assert count(pg_dsn, table) == 0, table


def test_concurrent_commits_of_one_owner_share_vshards(
    store: Store, aio: asyncio.Runner, pg_dsn: str
) -> None:
    """Commits in flight at once (one connection each, up to ``writers``) on the same vshard
    both land; a takeover afterwards fences both connections."""

    async def scenario() -> None:
        epochs = await store.take_over([3], "owner-a")
        batches = []
        for i in range(store.writers + 2):
            ch = Changes()
            ch.accounts[f"c-{i}"] = sample.account(f"c-{i}", 3, balance_micros=5)
            ch.journal.append(sample.entry(3, f"c-{i}", f"open:c-{i}", amount_micros=5))
            batches.append(ch)
        await asyncio.gather(*(store.commit(ch, epochs) for ch in batches))
        await store.take_over([3], "owner-b")
        late = [Changes() for _ in range(store.writers)]
        for i, ch in enumerate(late):
            ch.accounts[f"c-{i}"] = sample.account(f"c-{i}", 3, balance_micros=1)
        results = await asyncio.gather(
            *(store.commit(ch, epochs) for ch in late), return_exceptions=True
        )
        assert all(isinstance(r, NotOwner) for r in results), results

    aio.run(scenario())
    assert count(pg_dsn, "journal") == store.writers + 2
    assert aio.run(store.audit()) == []


async def _wait_for_lock_waiter(dsn: str, statement: str, timeout_s: float = 30.0) -> int:
    """Wait (with a deadline) until a backend running ``statement...`` waits for a lock; its pid."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        while loop.time() < deadline:
            cur = await conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND datname = current_database() AND query LIKE %s",
                (statement + "%",),
            )
            row = await cur.fetchone()
            if row is not None:
                return int(row[0])
            await asyncio.sleep(0.02)
    raise AssertionError(f"no backend started waiting for a lock in {statement!r}")


def test_connection_killed_mid_commit_leaves_nothing(
    store: Store, aio: asyncio.Runner, pg_dsn: str
) -> None:
    """pg_terminate_backend while the commit is in flight (after the journal insert, before the
    answers): StoreUnavailable, no row at all, and the next commit goes through."""
    from sharding.store import StoreUnavailable

    async def scenario() -> None:
        epochs = await store.take_over([3], "owner-a")
        async with await psycopg.AsyncConnection.connect(pg_dsn) as blocker:
            await blocker.execute("LOCK TABLE answers IN EXCLUSIVE MODE")
            commit = asyncio.create_task(store.commit(full_changes(3), epochs))
            pid = await _wait_for_lock_waiter(pg_dsn, "SELECT billing_commit")
            async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as killer:
                await killer.execute("SELECT pg_terminate_backend(%s)", (pid,))
            with pytest.raises(StoreUnavailable):
                await commit
            await blocker.rollback()
        for table in SUBSCRIBER_TABLES:
            assert count(pg_dsn, table) == 0, table
        await store.commit(full_changes(3), epochs)  # a new connection replaced the dead one

    aio.run(scenario())
    assert count(pg_dsn, "journal") == 2


# -- idempotency keys ------------------------------------------------------------------------


def test_repeated_journal_key_is_refused_whole(
    store: Store, aio: asyncio.Runner, pg_dsn: str
) -> None:
    epochs = aio.run(store.take_over([3], "owner-a"))
    aio.run(store.commit(full_changes(3), epochs))
    again = Changes()
    again.accounts["a-1"] = sample.account("a-1", 3, balance_micros=1)
    again.journal.append(sample.entry(3, "a-1", "open:a-1", amount_micros=10_000))
    with pytest.raises(DuplicateKey, match="journal"):
        aio.run(store.commit(again, epochs))
    assert loaded(aio, store, [3]).accounts["a-1"].balance_micros == 10_000
    assert count(pg_dsn, "journal") == 2


def test_repeated_answer_key_is_refused_whole(store: Store, aio: asyncio.Runner) -> None:
    epochs = aio.run(store.take_over([3], "owner-a"))
    aio.run(store.commit(full_changes(3), epochs))
    again = Changes()
    again.accounts["a-9"] = sample.account("a-9", 3)
    again.answers["cc:sess-1#0"] = (3, sample.answer("sess-1", 0))
    with pytest.raises(DuplicateKey, match="answers"):
        aio.run(store.commit(again, epochs))
    assert "a-9" not in loaded(aio, store, [3]).accounts


def test_same_key_on_another_vshard_is_another_key(store: Store, aio: asyncio.Runner) -> None:
    epochs = aio.run(store.take_over([3, 4], "owner-a"))
    aio.run(store.commit(full_changes(3), epochs))
    aio.run(store.commit(full_changes(4), epochs))


def test_prune_answers_keeps_recent(store: Store, aio: asyncio.Runner, pg_dsn: str) -> None:
    from datetime import timedelta

    epochs = aio.run(store.take_over([3], "owner-a"))
    aio.run(store.commit(full_changes(3), epochs))
    assert aio.run(store.prune_answers(timedelta(hours=1))) == 0
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("UPDATE answers SET committed_at = now() - interval '2 hours'")
    assert loaded(aio, store, [3]).answers == {"cc:sess-1#0": sample.answer("sess-1", 0)}
    store.answer_horizon = timedelta(hours=1)
    assert loaded(aio, store, [3]).answers == {}
    assert aio.run(store.prune_answers(timedelta(hours=1))) == 2
    assert count(pg_dsn, "answers") == 0


def test_prune_answers_of_some_vshards_leaves_the_others(
    store: Store, aio: asyncio.Runner, pg_dsn: str
) -> None:
    from datetime import timedelta

    epochs = aio.run(store.take_over([3, 4], "owner-a"))
    aio.run(store.commit(full_changes(3), epochs))
    aio.run(store.commit(full_changes(4), epochs))
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("UPDATE answers SET committed_at = now() - interval '2 hours'")
    assert aio.run(store.prune_answers(timedelta(hours=1), vshards=[4])) == 2
    with psycopg.connect(pg_dsn) as conn:
        left = conn.execute("SELECT DISTINCT vshard FROM answers").fetchall()
    assert left == [(3,)]


def test_load_reads_at_most_the_newest_answers_and_every_open_sessions_last(
    store: Store, aio: asyncio.Runner, pg_dsn: str
) -> None:
    """A takeover after heavy traffic reads a bounded number of answers (the newest), and
    still each open session's last answer however old: its retransmission stays recognised."""
    epochs = aio.run(store.take_over([3], "owner-a"))
    aio.run(store.commit(full_changes(3), epochs))  # sess-1 open, next request 2
    last = Changes()
    last.answers["cc:sess-1#1"] = (3, sample.answer("sess-1", 1))
    aio.run(store.commit(last, epochs))
    for n in range(6):  # newer answers of ended sessions, one commit (one commit time) each
        ch = Changes()
        ch.answers[f"cc:gone-{n}#0"] = (3, sample.answer(f"gone-{n}", 0))
        aio.run(store.commit(ch, epochs))
    with psycopg.connect(pg_dsn) as conn:
        conn.execute(
            "UPDATE answers SET committed_at = now() - interval '1 hour'"
            " WHERE idempotency_key LIKE 'cc:sess-1#%'"
        )
    assert len(loaded(aio, store, [3]).answers) == 8  # no bound: the whole horizon
    store.answer_load_max = 3
    got = loaded(aio, store, [3])
    assert set(got.answers) == {"cc:gone-3#0", "cc:gone-4#0", "cc:gone-5#0", "cc:sess-1#1"}
    assert [k for _, k in got.answer_log] == [
        "cc:sess-1#1",
        "cc:gone-3#0",
        "cc:gone-4#0",
        "cc:gone-5#0",
    ]
    store.answer_load_max = 0
    assert set(loaded(aio, store, [3]).answers) == {"cc:sess-1#1"}
    assert loaded(aio, store, [4]).answers == {}  # another vshard's sessions read nothing


def test_answer_load_max_must_not_be_negative(pg_dsn: str) -> None:
    with pytest.raises(ValueError, match="answer_load_max"):
        Store(pg_dsn, answer_load_max=-1)


# -- audit -----------------------------------------------------------------------------------


def test_audit_finds_each_kind_of_violation(store: Store, aio: asyncio.Runner, pg_dsn: str) -> None:
    epochs = aio.run(store.take_over([3], "owner-a"))
    aio.run(store.commit(full_changes(3), epochs))
    assert aio.run(store.audit()) == []
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("UPDATE accounts SET balance_micros = balance_micros + 1")
        conn.execute("UPDATE buckets SET units = units - 1, reserved_units = 0")
        conn.execute("UPDATE accounts SET reserved_micros = 0")
        conn.execute(
            "INSERT INTO journal (vshard, idempotency_key, line, account_id, kind, amount_micros,"
            " units, at) VALUES (3, 'stray', 0, 'ghost', 'debit', 0, 0, now())"
        )
    problems = aio.run(store.audit())
    assert len(problems) == 5, problems
    assert "account a-1: balance 10001 but the journal sums to 10000" in problems[0]
    assert "bucket b-1: 999 units but the journal sums to 1000" in problems[1]
    assert "reserved 0 but open reservations hold 2000" in problems[2]
    assert "bucket b-1: 0 units reserved but open reservations hold 500" in problems[3]
    assert "account ghost does not exist" in problems[4]


# -- shard map and plans ---------------------------------------------------------------------


def test_shard_map_compare_and_set(store: Store, aio: asyncio.Runner) -> None:
    assert aio.run(store.load_shard_map()) is None
    v1 = ShardMapRecord(version=1, vshard_count=4, assignments={0: "a", 1: "a", 2: "b", 3: "b"})
    assert aio.run(store.save_shard_map(v1, expected_version=None))
    assert not aio.run(store.save_shard_map(v1, expected_version=None))  # already exists
    assert aio.run(store.load_shard_map()) == v1
    v2 = ShardMapRecord(version=2, vshard_count=4, assignments={0: "a", 1: "c", 2: "b", 3: "b"})
    assert not aio.run(store.save_shard_map(v2, expected_version=5))  # stale expectation
    assert aio.run(store.save_shard_map(v2, expected_version=1))
    assert aio.run(store.load_shard_map()) == v2


def test_plans_keep_versions_and_load_the_newest(store: Store, aio: asyncio.Runner) -> None:
    aio.run(store.save_plan("basic", 1, "plan: basic v1"))
    aio.run(store.save_plan("basic", 2, "plan: basic v2"))
    aio.run(store.save_plan("alpha", 1, "plan: alpha"))
    aio.run(store.save_plan("alpha", 1, "plan: alpha"))  # same text again: fine
    with pytest.raises(StoreError, match="version 1 already stored"):
        aio.run(store.save_plan("alpha", 1, "plan: changed"))
    assert aio.run(store.load_plans()) == ["plan: alpha", "plan: basic v2"]


def test_swept_expired_buckets_stay_for_audit_but_are_not_loaded(
    store: Store, aio: asyncio.Runner
) -> None:
    """expire_buckets writes a swept bucket zeroed and drops it from memory: load agrees."""
    from datetime import timedelta

    epochs = aio.run(store.take_over([3], "owner-a"))
    ch = Changes()
    ch.accounts["a-1"] = sample.account("a-1", 3)
    swept = sample.bucket("b-swept", "a-1", 3)  # units 0, expires T0 + 30 days
    live = sample.bucket("b-live", "a-1", 3, units=5)
    live.expires_at = None
    first = sample.bucket("b-first", "a-1", 3)
    first.priority, first.expires_at = 1, None  # consumed first: lower priority number
    ch.buckets.update({"b-swept": swept, "b-live": live, "b-first": first})
    ch.journal.append(sample.entry(3, "a-1", "grant", bucket_id="b-live", units=5))
    aio.run(store.commit(ch, epochs))
    before = ShardState()
    aio.run(store.load([3], before, now=sample.T0))
    assert before.buckets_by_account == {"a-1": ["b-first", "b-swept", "b-live"]}
    after = ShardState()
    aio.run(store.load([3], after, now=sample.T0 + timedelta(days=30)))
    assert after.buckets_by_account == {"a-1": ["b-first", "b-live"]}
    assert "b-swept" not in after.buckets
    assert aio.run(store.audit()) == []
