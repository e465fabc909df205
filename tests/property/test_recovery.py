"""Recovery equals the state before the crash, after random workloads (real PostgreSQL).

Hypothesis generates batches of operations over a few accounts spread on three vshards: opening
accounts (with subscribers), money movements, bucket grants, sessions reserving money and units,
sessions ending, answers and balance results. Each batch is applied to a copy of a model state,
collected as :class:`Changes` and committed; some batches are sent by a *zombie* (a stale epoch)
and must change nothing. After the workload, a fresh ``ShardState`` loaded from PostgreSQL must
equal the model, and the SQL audit must find the journal reproducing every balance.
"""

from __future__ import annotations

import asyncio
import copy
from dataclasses import dataclass, field
from datetime import UTC, datetime

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing.protocol import PaymentMode, ResultCode, ServiceKind
from billing.state import Changes, EntryKind, JournalEntry, ShardState
from sharding import _samples as sample
from sharding.store import NotOwner, Store

pytestmark = pytest.mark.integration

VSHARDS = [0, 1, 2]
ACCOUNTS = 6
SESSIONS = 5

texts = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=6
)
times = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)
amounts = st.integers(min_value=-(10**12), max_value=10**12)

op = st.one_of(
    st.tuples(
        st.just("open"),
        st.integers(0, ACCOUNTS - 1),
        st.integers(0, 10**9),
        st.sampled_from(PaymentMode),
        times,
        texts,
    ),
    st.tuples(st.just("move"), st.integers(0, ACCOUNTS - 1), amounts, texts),
    st.tuples(
        st.just("grant"), st.integers(0, ACCOUNTS - 1), st.integers(0, 2), st.integers(1, 10**6)
    ),
    st.tuples(
        st.just("reserve"),
        st.integers(0, SESSIONS - 1),
        st.integers(0, ACCOUNTS - 1),
        st.integers(0, 3),
        st.integers(0, 10**6),
        st.integers(0, 1000),
        times,
        st.one_of(st.none(), texts),
    ),
    st.tuples(st.just("end"), st.integers(0, SESSIONS - 1)),
)
workload = st.lists(
    st.tuples(st.lists(op, min_size=1, max_size=8), st.integers(0, 9).map(lambda n: n == 0)),
    min_size=1,
    max_size=6,
)


@dataclass
class Model:
    """What the database must hold: a ShardState kept by hand, plus the key counter."""

    state: ShardState = field(default_factory=ShardState)
    next_key: int = 0

    def key(self, prefix: str) -> str:
        self.next_key += 1
        return f"{prefix}:{self.next_key}"


def apply_batch(model: Model, ops: list[tuple[object, ...]]) -> Changes:
    """Apply ``ops`` to ``model`` (already a private copy) and return what changed."""
    ch = Changes()
    st_ = model.state

    def journal(acc_id: str, kind: EntryKind, amount: int, bucket: str | None, units: int) -> None:
        acc = st_.accounts[acc_id]
        key = model.key("k")
        ch.journal.append(
            JournalEntry(acc.vshard, acc_id, key, 0, kind, amount, bucket, units, sample.T0)
        )

    for o in ops:
        kind = o[0]
        if kind == "open":
            _, i, opening, mode, at, note = o
            acc_id = f"a{i}"
            if acc_id in st_.accounts:
                continue
            acc = sample.account(acc_id, int(i) % 3, balance_micros=int(opening))
            acc.payment_mode, acc.created_at, acc.usage_counters = mode, at, {str(note): 1}
            sub = sample.subscriber(f"s{i}", acc.vshard, acc_id)
            sub.created_at = at
            st_.accounts[acc_id], st_.subscribers[sub.subscriber_id] = acc, sub
            ch.accounts[acc_id], ch.subscribers[sub.subscriber_id] = acc, sub
            journal(acc_id, EntryKind.OPENING, int(opening), None, 0)
            result = sample.balance_result(model.key("top"), acc_id, int(opening))
            st_.balance_results[result.idempotency_key] = result
            ch.balance_results[result.idempotency_key] = (acc.vshard, result)
        elif kind == "move":
            _, i, amount, _note = o
            acc_id = f"a{i}"
            if acc_id not in st_.accounts:
                continue
            acc = st_.accounts[acc_id]
            acc.balance_micros += int(amount)
            ch.accounts[acc_id] = acc
            journal(acc_id, EntryKind.ADJUSTMENT, int(amount), None, 0)
        elif kind == "grant":
            _, i, b, units = o
            acc_id, bucket_id = f"a{i}", f"b{i}-{b}"
            if acc_id not in st_.accounts:
                continue
            acc = st_.accounts[acc_id]
            bkt = st_.buckets.get(bucket_id)
            if bkt is None:
                bkt = sample.bucket(bucket_id, acc_id, acc.vshard)
                st_.buckets[bucket_id] = bkt
                st_.buckets_by_account.setdefault(acc_id, []).append(bucket_id)
                st_.buckets_by_account[acc_id].sort()
            bkt.units += int(units)
            ch.buckets[bucket_id] = bkt
            journal(acc_id, EntryKind.BUCKET_GRANT, 0, bucket_id, int(units))
        elif kind == "reserve":
            _, j, i, rg, money, units, at, dest = o
            sid, acc_id = f"x{j}", f"a{i}"
            if acc_id not in st_.accounts:
                continue
            acc = st_.accounts[acc_id]
            sess = st_.sessions.get(sid)
            if sess is not None and sess.account_id != acc_id:
                continue
            if sess is None:
                sess = sample.session(sid, acc.vshard, f"s{i}", acc_id)
                sess.started_at, sess.destination = at, dest
                st_.sessions[sid] = sess
            if int(rg) in sess.reservations:
                continue
            bucket_units: dict[str, int] = {}
            for bucket_id in st_.buckets_by_account.get(acc_id, [])[:1]:
                bkt = st_.buckets[bucket_id]
                take = min(int(units), bkt.units - bkt.reserved_units)
                if take > 0:
                    bkt.reserved_units += take
                    bucket_units[bucket_id] = take
                    ch.buckets[bucket_id] = bkt
            sess.reservations[int(rg)] = sample.reservation(
                int(rg), money_micros=int(money), bucket_units=bucket_units
            )
            sess.next_request_number += 1
            acc.reserved_micros += int(money)
            ch.sessions[sid], ch.accounts[acc_id] = sess, acc
            ch.ended_sessions.pop(sid, None)
            key = model.key(f"cc:{sid}#{sess.next_request_number}")
            answer = sample.answer(sid, sess.next_request_number)
            st_.answers[key] = answer
            ch.answers[key] = (acc.vshard, answer)
        elif kind == "end":
            sid = f"x{o[1]}"
            sess = st_.sessions.pop(sid, None)
            if sess is None:
                continue
            acc = st_.accounts[sess.account_id]
            for res in sess.reservations.values():
                acc.reserved_micros -= res.money_micros
                for bucket_id, units_held in res.bucket_units.items():
                    st_.buckets[bucket_id].reserved_units -= units_held
                    ch.buckets[bucket_id] = st_.buckets[bucket_id]
            ch.accounts[acc.account_id] = acc
            ch.sessions.pop(sid, None)
            ch.ended_sessions[sid] = sess.vshard
        else:  # pragma: no cover - the strategy makes only the kinds above
            raise AssertionError(kind)
    return ch


def comparable(state: ShardState) -> ShardState:
    out = copy.copy(state)
    out.answer_log = type(state.answer_log)()
    return out


async def run_workload(dsn: str, batches: list[tuple[list[tuple[object, ...]], bool]]) -> None:
    async with Store(dsn) as store:
        epochs = await store.take_over(VSHARDS, "owner-a")
        zombie = {v: e - 1 for v, e in epochs.items()}
        model = Model()
        for ops, from_zombie in batches:
            working = copy.deepcopy(model)
            changes = apply_batch(working, ops)
            if from_zombie and not changes.is_empty():
                with pytest.raises(NotOwner):
                    await store.commit(changes, zombie)
                continue  # nothing written: the model stays as it was
            await store.commit(changes, epochs)
            model = working
        # "Crash": a new owner takes over and loads.
        new_epochs = await store.take_over(VSHARDS, "owner-b")
        assert all(new_epochs[v] == epochs[v] + 1 for v in VSHARDS)
        recovered = ShardState()
        await store.load(VSHARDS, recovered)
        assert comparable(recovered) == comparable(model.state)
        assert sorted(k for _, k in recovered.answer_log) == sorted(model.state.answers)
        for v in VSHARDS:  # a vshard alone loads exactly its own part
            part = ShardState()
            await store.load([v], part)
            assert set(part.accounts) == {
                a for a, acc in model.state.accounts.items() if acc.vshard == v
            }
        assert await store.audit() == []


@pytest.fixture
def clean_db(store: Store, pg_dsn: str) -> str:
    """A migrated database; each hypothesis example empties it first (see ``wipe``)."""
    return pg_dsn


def wipe(dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "TRUNCATE shard_leases, subscribers, accounts, buckets, sessions, journal, answers"
        )


@settings(
    derandomize=True,
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batches=workload)
def test_recovery_equals_state_before_crash(clean_db: str, batches: list) -> None:
    wipe(clean_db)
    asyncio.run(run_workload(clean_db, batches))


def test_recovered_answers_are_identical_objects(store: Store, aio: asyncio.Runner) -> None:
    """A deterministic example of the property, also checking the answer's result code type."""
    epochs = aio.run(store.take_over(VSHARDS, "owner-a"))
    model = Model()
    ch = apply_batch(
        model,
        [
            ("open", 1, 500, PaymentMode.HYBRID, sample.T0, "n"),
            ("reserve", 0, 1, 2, 7, 0, sample.T0, None),
        ],
    )
    aio.run(store.commit(ch, epochs))
    got = ShardState()
    aio.run(store.load(VSHARDS, got))
    (answer,) = got.answers.values()
    assert answer.result_code is ResultCode.SUCCESS
    assert got.sessions["x0"].reservations[2].service is ServiceKind.DATA
    assert comparable(got) == comparable(model.state)
