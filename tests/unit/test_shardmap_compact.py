"""The owner's compact subscriber/account storage (actors/compact.py): packing is lossless, the
mappings behave like dicts for the domain, and the domain works unchanged on top of them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.compact import PACKING_ENABLED, Directory
from billing.accounts import apply_balance, balance_view, provision_subscriber
from billing.ledger import audit
from billing.protocol import BalanceCommand, PaymentMode, ServiceKind
from billing.state import Account, Bucket, Subscriber
from billing.tariff import builtin_catalog

NOW = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
ids = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=20)
micros = st.integers(min_value=-(2**62), max_value=2**62)
times = st.datetimes(
    min_value=datetime(1990, 1, 1), max_value=datetime(2090, 1, 1), timezones=st.just(UTC)
)


def test_packing_knows_every_field_of_the_records() -> None:
    # Fails when a field is added to Subscriber/Account/Bucket: teach actors/compact.py about it
    # (until then the owner keeps everything unpacked, which is correct but bigger).
    assert PACKING_ENABLED


@settings(derandomize=True, max_examples=200)
@given(
    key=ids,
    other=st.one_of(st.none(), ids),
    vshard=st.integers(0, 2**20),
    mode=st.sampled_from(list(PaymentMode)),
    balance=micros,
    credit=micros,
    created=times,
    counters=st.dictionaries(st.text(max_size=8), st.integers(0, 2**70), max_size=3),
    simple=st.booleans(),
)
def test_freeze_and_hydrate_are_lossless(
    key: str,
    other: str | None,
    vshard: int,
    mode: PaymentMode,
    balance: int,
    credit: int,
    created: datetime,
    counters: dict[str, int],
    simple: bool,
) -> None:
    d = Directory()
    account_id = other if other is not None and other != key else key
    sub = Subscriber(
        key, vshard, account_id, vshard + 1 if account_id != key else vshard, "plan-x", created
    )
    acc_plan, acc_created = ("plan-x", created) if simple else ("plan-y", created + timedelta(1))
    acc = Account(
        key, vshard, mode, "EUR", acc_plan, balance, credit, 0, acc_created, dict(counters)
    )
    d.subscribers[key] = sub
    if account_id == key:
        d.accounts[key] = acc
    assert d.freeze([key]) == 1
    assert key in d.cold and not d.hot_subscribers and not d.hot_accounts
    assert key in d.subscribers and (key in d.accounts) == (account_id == key)
    assert d.subscribers[key] == sub
    if account_id == key:
        assert d.accounts[key] == acc
    assert len(d.subscribers) == 1 and len(d.accounts) == (1 if account_id == key else 0)


def test_reserved_accounts_and_guests_stay_hot() -> None:
    d = Directory()
    d.subscribers["a"] = Subscriber("a", 1, "a", 1, "p", NOW)
    d.accounts["a"] = Account("a", 1, PaymentMode.PREPAID, "EUR", "p", 10, 0, 5, NOW)
    d.subscribers["g"] = Subscriber("g", 2, "fam", 3, "p", NOW)
    assert d.freeze(["a", "g"], keep={"g"}) == 0
    d.accounts["a"].reserved_micros = 0
    assert d.freeze(["a", "g"], keep={"g"}) == 1
    assert set(d.hot_subscribers) == {"g"}
    d.drop_vshards({1})
    assert "a" not in d.subscribers and "a" not in d.accounts and len(d.accounts) == 0


@settings(derandomize=True, max_examples=100)
@given(
    units=st.lists(st.integers(0, 2**62), min_size=1, max_size=4),
    expires=st.lists(st.one_of(st.none(), times), min_size=4, max_size=4),
    own_ids=st.lists(st.booleans(), min_size=4, max_size=4),
)
def test_buckets_pack_losslessly(
    units: list[int], expires: list[datetime | None], own_ids: list[bool]
) -> None:
    d = Directory()
    d.subscribers["k"] = Subscriber("k", 3, "k", 3, "p", NOW)
    d.accounts["k"] = Account("k", 3, PaymentMode.POSTPAID, "EUR", "p", -5, 100, 0, NOW)
    buckets = [
        Bucket(
            bucket_id=f"k/b{i}@x" if own_ids[i] else f"other-{i}",
            account_id="k",
            vshard=3,
            bundle_id=f"b{i % 2}",
            service=list(ServiceKind)[i % 4],
            destination_groups=("national",) if i % 2 else (),
            rating_groups=(10, 20) if i % 2 else (),
            units=u,
            reserved_units=0,
            priority=i,
            valid_from=NOW,
            expires_at=expires[i],
        )
        for i, u in enumerate(units)
    ]
    for b in buckets:
        d.buckets[b.bucket_id] = b
    d.buckets_by_account["k"] = [b.bucket_id for b in buckets]
    assert d.freeze(["k"]) == 1
    assert not d.buckets and not d.buckets_by_account
    assert d.accounts["k"].balance_micros == -5
    assert d.buckets_by_account["k"] == [b.bucket_id for b in buckets]
    assert [d.buckets[b.bucket_id] for b in buckets] == buckets


def test_reserved_bucket_stays_hot() -> None:
    d = Directory()
    d.subscribers["k"] = Subscriber("k", 3, "k", 3, "p", NOW)
    d.accounts["k"] = Account("k", 3, PaymentMode.POSTPAID, "EUR", "p", 0, 0, 0, NOW)
    bucket = Bucket("k/b", "k", 3, "b", ServiceKind.SMS, (), (), 10, 1, 1, NOW, None)
    d.buckets["k/b"] = bucket
    d.buckets_by_account["k"] = ["k/b"]
    assert d.freeze(["k"]) == 0
    bucket.reserved_units = 0
    assert d.freeze(["k"]) == 1
    d.drop_vshards({3})
    assert not d.cold and "k" not in d.subscribers


@pytest.mark.parametrize("plan_id", ["payg", "postpaid-monthly", "hybrid"])
def test_domain_runs_on_compact_state(plan_id: str) -> None:
    plan = builtin_catalog().get(plan_id)
    d = Directory()
    state = d.new_state()
    for i in range(50):
        provision_subscriber(
            state,
            subscriber_id=f"s{i}",
            vshard=i % 4,
            plan=plan,
            payment_mode=None,
            initial_balance_micros=1_000_000 * i,
            credit_limit_micros=0 if plan_id == "payg" else 5_000_000,
            currency=None,
            now=NOW,
        )
    journal = list(state.take_changes().journal)
    hot_buckets = dict(d.buckets)
    assert d.freeze(list(d.hot_subscribers)) == 50
    assert not d.buckets
    for key in d.subscribers:  # hydrating every record gives back the very same buckets
        assert d.subscribers[key].subscriber_id == key
    assert d.buckets == hot_buckets
    assert d.freeze(list(d.hot_subscribers)) == 50
    result = apply_balance(
        state, BalanceCommand("topup", "s7", 5, "k1"), now=NOW + timedelta(seconds=1)
    )
    assert result.balance_after_micros == 7_000_005
    journal += state.take_changes().journal
    d.freeze(["s7"])
    view = balance_view(state, "s7", now=NOW)
    assert view.balance_micros == 7_000_005
    assert len(view.buckets) == len(plan.version_at(NOW).bundles)
    assert audit(state, journal) == []


@pytest.mark.parametrize("value", [0, 2**63 - 1, 2**64 + 1, 10**30 + 7])
def test_usage_counters_round_trip_as_exact_ints(value: int) -> None:
    from actors.compact import _dump_counters, _load_counters

    back = _load_counters(_dump_counters({"voice": value, "data": 1}))
    assert back == {"voice": value, "data": 1}
    assert all(type(v) is int for v in back.values())  # never a float, even beyond 64 bits
