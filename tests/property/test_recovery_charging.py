"""Recovery under the real charging domain: crash anywhere, reload, the state is as committed.

Hypothesis drives ``billing.charging.handle`` (sessions, events, top-ups, orphan release, bucket
expiry) for subscribers on three vshards; after each batch of steps the owner's ``pending``
changes are committed through the store. At random points the owner "crashes": its uncommitted
steps are lost (their answers were never sent), a new owner takes the vshards over and loads
them, and the loaded state must equal the state as of the last commit; the new owner then goes
on charging from it. At the end the SQL audit finds the journal reproducing every balance.
"""

from __future__ import annotations

import asyncio
import copy
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing.charging import apply_balance, expire_buckets, handle, provision_subscriber
from billing.ledger import audit
from billing.protocol import BalanceCommand, RequestedAction, RequestType
from billing.scenario import entry
from billing.state import JournalEntry, ShardState
from billing.tariff import builtin_catalog
from sharding.store import Store

pytestmark = pytest.mark.integration

CATALOG = builtin_catalog()
START = datetime(2026, 3, 2, 6, 0, tzinfo=UTC)
EUR = 1_000_000
VSHARDS = [0, 1, 2]
PLANS = ["payg", "postpaid-monthly", "hybrid", "iot-pool"]
RATING_GROUPS = [100, 200, 10, 300]

step = st.tuples(
    st.sampled_from(["initial", "update", "terminate", "event", "topup", "wait", "repeat"]),
    st.integers(min_value=0, max_value=5),
    st.sampled_from(RATING_GROUPS),
    st.integers(min_value=0, max_value=2000),
    st.booleans(),
    st.integers(min_value=0, max_value=9),  # 0: the owner crashes after this step
)


def quantity(rating_group: int, n: int) -> int:
    return n * 100_000 if rating_group == 10 else (n if rating_group == 100 else n % 7)


def comparable(state: ShardState) -> ShardState:
    """Everything but the answer log's times (the database records commit times)."""
    out = copy.copy(state)
    out.answer_log = type(state.answer_log)()
    return out


def provision(state: ShardState, plans: list[str], balances: list[int]) -> None:
    for i, (plan, balance) in enumerate(zip(plans, balances, strict=True)):
        prepaid = plan in ("payg", "hybrid")
        joining = plan == "iot-pool" and "shared" in state.accounts
        provision_subscriber(
            state,
            subscriber_id=f"sub{i}",
            vshard=i % len(VSHARDS),
            plan=CATALOG.get(plan),
            payment_mode=None,
            initial_balance_micros=balance if prepaid else 0,
            credit_limit_micros=balance if plan != "payg" and not joining else 0,
            currency=None,
            now=START,
            account_id="shared" if plan == "iot-pool" else None,
            account_vshard=state.accounts["shared"].vshard if joining else None,
        )


async def drive(
    dsn: str, plans: list[str], balances: list[int], steps: list[tuple[object, ...]]
) -> None:
    async with Store(dsn) as store:
        epochs = await store.take_over(VSHARDS, "owner-0")
        state, now = ShardState(), START
        provision(state, plans, balances)
        journal: list[JournalEntry] = []

        async def flush() -> ShardState:
            expire_buckets(state, now=now)  # the owner sweeps before each commit
            changes = state.take_changes()
            await store.commit(changes, epochs)
            journal.extend(changes.journal)
            return copy.deepcopy(state)

        committed = await flush()
        numbers: dict[str, int] = {}
        sent = []
        owners = 0
        for index, (action, who, rg, n, flag, crash) in enumerate(steps):
            sub = f"sub{int(who) % len(plans)}"
            sid = f"{sub}-s{who}"
            amount = quantity(rg, n)
            request = None
            if action == "initial" and sid not in numbers:
                numbers[sid] = 0
                request = _request(RequestType.INITIAL, sid, 0, sub, now, entry(rg, request=amount))
            elif action in ("update", "terminate") and sid in numbers:
                numbers[sid] += 1
                kind = RequestType.UPDATE if action == "update" else RequestType.TERMINATION
                ask = amount if flag and action == "update" else None
                request = _request(
                    kind, sid, numbers[sid], sub, now, entry(rg, used=amount, request=ask)
                )
                if action == "terminate":
                    numbers.pop(sid)
            elif action == "event":
                what = RequestedAction.DIRECT_DEBITING if flag else RequestedAction.CHECK_BALANCE
                request = _request(
                    RequestType.EVENT, f"ev{index}", 0, sub, now, entry(rg, request=max(amount, 1)),
                    action=what,
                )  # fmt: skip
            elif action == "topup":
                apply_balance(
                    state, BalanceCommand("topup", sub, amount + 1, f"top{index}"), now=now
                )
            elif action == "wait":
                now += timedelta(seconds=int(n) * 97)
            elif action == "repeat" and sent:
                request = sent[int(n) % len(sent)]
            if request is not None:
                handle(state, request, now=now, catalog=CATALOG)
                sent.append(request)
            if index % 3 == 2:
                committed = await flush()
            if crash == 0:
                # The owner dies: what it did since the last commit is lost, never answered.
                owners += 1
                epochs = await store.take_over(VSHARDS, f"owner-{owners}")
                state = ShardState()
                await store.load(VSHARDS, state, now=now)
                assert comparable(state) == comparable(committed)
                assert sorted(k for _, k in state.answer_log) == sorted(committed.answers)
        await flush()
        assert await store.audit() == []
        assert audit(state, journal) == []


def _request(kind, session_id, number, subscriber_id, now, *services, action=None):
    from billing.protocol import CreditControlRequest

    return CreditControlRequest(
        session_id=session_id,
        request_type=kind,
        request_number=number,
        subscriber_id=subscriber_id,
        event_time=now,
        services=services,
        requested_action=action,
        destination="33140000000",
    )


def wipe(dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "TRUNCATE shard_leases, subscribers, accounts, buckets, sessions, journal, answers"
        )


@settings(
    derandomize=True,
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    plans=st.lists(st.sampled_from(PLANS), min_size=1, max_size=4),
    balances=st.lists(st.integers(min_value=0, max_value=3 * EUR), min_size=4, max_size=4),
    steps=st.lists(step, max_size=40),
)
def test_recovery_under_charging_equals_last_commit(
    store: Store, pg_dsn: str, plans: list[str], balances: list[int], steps: list
) -> None:
    wipe(pg_dsn)
    asyncio.run(drive(pg_dsn, plans, balances[: len(plans)], steps))
