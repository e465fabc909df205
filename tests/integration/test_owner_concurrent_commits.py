"""Concurrent group commits of one owner (actors/_flights.py), on a real PostgreSQL.

The owner runs in this process (no Ray: a fake manager hands it the map) with its store's
``commit`` wrapped by a gate, so a test decides when each commit proceeds, and whether it fails.
Every ordering below is forced by events, never by timing:

- two batches on different subscribers commit at once, and both are durable;
- a request on an account a commit in flight touches (a shared account's other member) waits for
  that commit and is applied on top of it;
- a commit fails while an independent one is in flight: nothing of the failed one is
  acknowledged, the other's answer stands, and afterwards memory equals the database (the
  ledger audit holds, a retry applies once);
- a takeover meanwhile fences both commits in flight: NotOwner, nothing written.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import ray

import actors.owner as owner_module
from actors.messages import (
    Answered,
    ChargeRequest,
    NotOwner,
    OwnerReply,
    ProvisionRequest,
    QueryRequest,
    Unavailable,
)
from actors.owner import OwnerConfig, ShardOwner
from billing.accounts import BalanceView
from billing.protocol import (
    CreditControlRequest,
    RequestedAction,
    RequestType,
    ServiceUsage,
    Units,
    UsedUnits,
)
from billing.state import Changes
from sharding.shardmap import ShardMap, balanced_map
from sharding.store import Store, StoreUnavailable
from sharding.vshard import vshard_of

OWNER = "billing-owner-0"
VSHARDS = 4
BALANCE = 100_000_000


class _Manager:
    """What the owner asks the shard manager: the map (one owner holds every vshard)."""

    def __init__(self, shard_map: ShardMap) -> None:
        self.shard_map = shard_map
        self.get_map = self

    def remote(self) -> Any:
        async def answer() -> ShardMap:
            return self.shard_map

        return answer()


class _LocalOwner(ShardOwner):
    """A ShardOwner whose manager is :class:`_Manager` (no Ray cluster needed)."""

    manager: _Manager

    def _handle(self, name: str) -> Any:
        return self.manager


class _Gate:
    """Wraps ``Store.commit``: a commit touching a held account waits for its release; one
    touching an account set to fail raises StoreUnavailable (before writing anything)."""

    def __init__(self, store: Store) -> None:
        self.real = store.commit
        self.held: dict[str, asyncio.Event] = {}
        self.fail: set[str] = set()
        self.log: list[tuple[str, frozenset[str]]] = []
        self.waiting: dict[str, asyncio.Event] = {}
        store.commit = self.commit  # type: ignore[method-assign]

    def hold(self, account: str) -> None:
        self.held[account] = asyncio.Event()
        self.waiting[account] = asyncio.Event()

    async def commit(self, changes: Changes, epochs: Any) -> None:
        accounts = frozenset(changes.accounts)
        self.log.append(("start", accounts))
        try:
            for account in accounts:
                if account in self.held:
                    self.waiting[account].set()
                    await self.held[account].wait()
            if accounts & self.fail:
                raise StoreUnavailable("injected commit failure; nothing was written")
            await self.real(changes, epochs)
        finally:
            self.log.append(("end", accounts))


def _sms(subscriber: str, key: str) -> ChargeRequest:
    """A one-SMS direct debit (an EVENT): moves money on the subscriber's account."""
    return ChargeRequest(
        CreditControlRequest(
            session_id=f"sms-{key}",
            request_type=RequestType.EVENT,
            request_number=0,
            subscriber_id=subscriber,
            event_time=datetime.now(UTC),
            services=(ServiceUsage(rating_group=200, used=(UsedUnits(Units(service_units=1)),)),),
            requested_action=RequestedAction.DIRECT_DEBITING,
        )
    )


def _same_vshard_pair() -> tuple[str, str]:
    ids = [f"49170{i:05d}" for i in range(200)]
    first = ids[0]
    second = next(i for i in ids[1:] if vshard_of(i, VSHARDS) == vshard_of(first, VSHARDS))
    return first, second


def _other_vshard(subscriber: str) -> str:
    ids = [f"49171{i:05d}" for i in range(200)]
    return next(i for i in ids if vshard_of(i, VSHARDS) != vshard_of(subscriber, VSHARDS))


@pytest.fixture(autouse=True)
def _no_gc_tuning(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The owner tunes and freezes the collector for a long-lived process: not in pytest."""
    monkeypatch.setattr(owner_module, "tune_gc", lambda: (0, 0, 0))
    monkeypatch.setattr(owner_module, "freeze_loaded", lambda: None)
    monkeypatch.setattr(ray.util, "get_node_ip_address", lambda: "127.0.0.1")
    yield


async def _start(dsn: str, **config: Any) -> tuple[_LocalOwner, _Gate]:
    async with Store(dsn, min_size=1, max_size=1) as store:
        await store.migrate()
    _LocalOwner.manager = _Manager(balanced_map(VSHARDS, [OWNER]))
    owner = _LocalOwner(OWNER, OwnerConfig(dsn=dsn, sweep_interval_s=3600.0, **config))
    assert await owner.ready(60.0)
    return owner, _Gate(owner._store)


async def _provision(owner: ShardOwner, *requests: ProvisionRequest) -> None:
    replies = await owner.submit(list(requests))
    assert all(isinstance(r, Answered) for r in replies), replies


async def _balance(owner: ShardOwner, subscriber: str) -> int:
    [reply] = await owner.submit([QueryRequest("balance", subscriber)])
    assert isinstance(reply, Answered) and isinstance(reply.payload, BalanceView), reply
    return reply.payload.balance_micros


async def _db_balance(dsn: str, account: str) -> int:
    import psycopg

    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute(
            "SELECT balance_micros FROM accounts WHERE account_id = %s", (account,)
        )
        row = await cur.fetchone()
        assert row is not None
        return int(row[0])


async def _journal_keys(dsn: str) -> set[str]:
    import psycopg

    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute("SELECT idempotency_key FROM journal WHERE kind = 'debit'")
        return {str(k) for (k,) in await cur.fetchall()}


async def _audit(dsn: str) -> list[str]:
    async with Store(dsn, min_size=1, max_size=1) as store:
        return await store.audit()


def _submit(owner: ShardOwner, *requests: Any) -> asyncio.Task[list[OwnerReply]]:
    return asyncio.ensure_future(owner.submit(list(requests)))


async def _within(awaitable: Any) -> Any:
    """A bound on every wait: a wrong ordering fails the test instead of hanging it."""
    return await asyncio.wait_for(awaitable, 30.0)


def test_independent_batches_commit_at_once_and_both_are_durable(
    pg_dsn: str, aio: asyncio.Runner
) -> None:
    async def scenario() -> None:
        owner, gate = await _start(pg_dsn)
        try:
            a, b = _same_vshard_pair()  # one vshard, two subscribers: still independent
            await _provision(
                owner,
                ProvisionRequest(a, "payg", initial_balance_micros=BALANCE),
                ProvisionRequest(b, "payg", initial_balance_micros=BALANCE),
            )
            gate.hold(a)
            first = _submit(owner, _sms(a, "1"))
            await _within(gate.waiting[a].wait())  # a's commit is in flight and held
            [second] = await _within(
                owner.submit([_sms(b, "2")])
            )  # committed while a's is in flight
            assert isinstance(second, Answered)
            assert not first.done()
            gate.held[a].set()
            [reply] = await _within(first)
            assert isinstance(reply, Answered)
            assert await _journal_keys(pg_dsn) == {
                _sms(a, "1").request.idempotency_key,
                _sms(b, "2").request.idempotency_key,
            }
            for s in (a, b):
                assert await _balance(owner, s) == await _db_balance(pg_dsn, s) < BALANCE
            assert await _audit(pg_dsn) == []
        finally:
            await owner.shutdown()

    aio.run(scenario())


def test_a_request_on_a_busy_shared_account_waits_and_applies_after(
    pg_dsn: str, aio: asyncio.Runner
) -> None:
    async def scenario() -> None:
        owner, gate = await _start(pg_dsn)
        try:
            account, m1, m2 = "4917200000", "4917200001", "4917200002"
            await _provision(
                owner, ProvisionRequest(account, "payg", initial_balance_micros=BALANCE)
            )
            await _provision(
                owner,
                ProvisionRequest(m1, "payg", account_id=account),
                ProvisionRequest(m2, "payg", account_id=account),
            )
            gate.log.clear()
            gate.hold(account)
            first = _submit(owner, _sms(m1, "1"))
            await _within(gate.waiting[account].wait())
            second = _submit(owner, _sms(m2, "2"))  # same account: must wait for the first
            for _ in range(200):  # give the writer every chance to (wrongly) take it
                await asyncio.sleep(0.001)
            assert [e for e in gate.log if e[0] == "start"] == [("start", frozenset({account}))]
            gate.held[account].set()
            [r1], [r2] = await _within(first), await _within(second)
            assert isinstance(r1, Answered) and isinstance(r2, Answered)
            # The second commit started only after the first ended, and saw its debit.
            assert gate.log == [
                ("start", frozenset({account})),
                ("end", frozenset({account})),
                ("start", frozenset({account})),
                ("end", frozenset({account})),
            ]
            one_sms = BALANCE - await _db_balance(pg_dsn, account)
            assert one_sms > 0 and one_sms % 2 == 0
            assert await _balance(owner, m2) == BALANCE - one_sms
            assert await _audit(pg_dsn) == []
        finally:
            await owner.shutdown()

    aio.run(scenario())


def test_a_lone_commits_keys_are_worked_out_only_when_another_batch_is_taken(
    pg_dsn: str, aio: asyncio.Runner
) -> None:
    """With nothing else in flight a batch is taken without building its keys (the usual
    one-batch-at-a-time load); they are built once another batch must be checked against it,
    which then still waits if it depends on it, and are forgotten when it settles."""

    async def scenario() -> None:
        owner, gate = await _start(pg_dsn)
        try:
            a, b = _same_vshard_pair()
            await _provision(
                owner,
                ProvisionRequest(a, "payg", initial_balance_micros=BALANCE),
                ProvisionRequest(b, "payg", initial_balance_micros=BALANCE),
            )
            gate.hold(a)
            first = _submit(owner, _sms(a, "1"))
            await _within(gate.waiting[a].wait())
            [flight] = owner._flights
            assert flight.keys is None  # nothing else in flight: no keys built
            second = _submit(owner, _sms(a, "2"))  # a again: must wait for the first
            [third] = await _within(owner.submit([_sms(b, "3")]))  # independent: goes by
            assert isinstance(third, Answered)
            assert flight.keys is not None
            assert {a, _sms(a, "1").request.idempotency_key} <= flight.keys
            assert not second.done()
            gate.held[a].set()
            [r1], [r2] = await _within(first), await _within(second)
            assert isinstance(r1, Answered) and isinstance(r2, Answered)
            assert owner._flights == [] and owner._busy == set()
            assert await _balance(owner, a) == await _db_balance(pg_dsn, a) < BALANCE
            assert await _audit(pg_dsn) == []
        finally:
            await owner.shutdown()

    aio.run(scenario())


def test_a_failed_commit_beside_one_in_flight_acknowledges_nothing_of_it(
    pg_dsn: str, aio: asyncio.Runner
) -> None:
    async def scenario() -> None:
        owner, gate = await _start(pg_dsn)
        try:
            a, b = _same_vshard_pair()
            await _provision(
                owner,
                ProvisionRequest(a, "payg", initial_balance_micros=BALANCE),
                ProvisionRequest(b, "payg", initial_balance_micros=BALANCE),
            )
            gate.hold(a)
            gate.hold(b)
            gate.fail.add(a)
            failing = _submit(owner, _sms(a, "1"))
            await _within(gate.waiting[a].wait())
            standing = _submit(owner, _sms(b, "2"))
            await _within(gate.waiting[b].wait())  # both in flight
            gate.held[a].set()  # a's commit fails first, b's is still in flight
            [ra] = await _within(failing)
            assert isinstance(ra, Unavailable), ra
            assert not standing.done()
            late = _submit(owner, _sms(b, "3"))  # arrives while the owner recovers
            gate.held[b].set()
            [rb] = await _within(standing)
            assert isinstance(rb, Answered), rb
            [rl] = await _within(late)
            assert isinstance(rl, Answered), rl
            keys = await _journal_keys(pg_dsn)
            assert _sms(a, "1").request.idempotency_key not in keys
            assert {_sms(b, k).request.idempotency_key for k in "23"} <= keys
            # Memory equals the database: a untouched, b debited twice, conservation holds.
            assert await _balance(owner, a) == await _db_balance(pg_dsn, a) == BALANCE
            assert await _balance(owner, b) == await _db_balance(pg_dsn, b) < BALANCE
            assert await _audit(pg_dsn) == []
            # The failed request, retried with the same key, is applied exactly once.
            gate.fail.clear()
            [again] = await owner.submit([_sms(a, "1")])
            assert isinstance(again, Answered)
            assert await _balance(owner, a) == await _db_balance(pg_dsn, a) < BALANCE
            assert await _audit(pg_dsn) == []
        finally:
            await owner.shutdown()

    aio.run(scenario())


def test_a_takeover_fences_every_commit_in_flight(pg_dsn: str, aio: asyncio.Runner) -> None:
    async def scenario() -> None:
        owner, gate = await _start(pg_dsn)
        try:
            a, b = _same_vshard_pair()
            await _provision(
                owner,
                ProvisionRequest(a, "payg", initial_balance_micros=BALANCE),
                ProvisionRequest(b, "payg", initial_balance_micros=BALANCE),
            )
            gate.hold(a)
            gate.hold(b)
            first = _submit(owner, _sms(a, "1"))
            await _within(gate.waiting[a].wait())
            second = _submit(owner, _sms(b, "2"))
            await _within(gate.waiting[b].wait())
            async with Store(pg_dsn, min_size=1, max_size=1) as other:
                await other.take_over([vshard_of(a, VSHARDS)], "billing-owner-9")
            gate.held[a].set()
            gate.held[b].set()
            [ra], [rb] = await _within(first), await _within(second)
            assert isinstance(ra, NotOwner) and isinstance(rb, NotOwner), (ra, rb)
            assert await _journal_keys(pg_dsn) == set()
            assert await _db_balance(pg_dsn, a) == await _db_balance(pg_dsn, b) == BALANCE
            assert await _audit(pg_dsn) == []
        finally:
            await owner.shutdown()

    aio.run(scenario())
