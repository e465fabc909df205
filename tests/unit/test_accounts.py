"""Accounts and buckets: provisioning, top-ups / adjustments / refunds, balance views, expiry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from billing.accounts import ChargingError, expire_buckets
from billing.charging import apply_balance, balance_view, provision_subscriber
from billing.ledger import audit
from billing.protocol import BalanceCommand, PaymentMode
from billing.scenario import Scenario, entry
from billing.state import EntryKind, ShardState
from billing.tariff import builtin_catalog, load_plan, template_text

NOW = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
EUR = 1_000_000
CATALOG = builtin_catalog()


@pytest.fixture
def sc() -> Scenario:
    return Scenario(catalog=CATALOG, now=NOW)


def provision(state: ShardState, subscriber_id: str = "alice", **kw: object) -> None:
    args: dict[str, object] = {
        "subscriber_id": subscriber_id,
        "vshard": 3,
        "plan": CATALOG.get("payg"),
        "payment_mode": None,
        "initial_balance_micros": EUR,
        "credit_limit_micros": 0,
        "currency": None,
        "now": NOW,
    }
    args.update(kw)
    provision_subscriber(state, **args)  # type: ignore[arg-type]


def test_prepaid_without_bundles_gets_an_account_and_no_bucket() -> None:
    state = ShardState()
    provision(state)
    acc = state.accounts["alice"]
    assert (acc.payment_mode, acc.currency, acc.balance_micros, acc.vshard) == (
        PaymentMode.PREPAID,
        "EUR",
        EUR,
        3,
    )
    assert state.buckets == {} and state.buckets_by_account == {}
    changes = state.take_changes()
    assert [(e.kind, e.amount_micros, e.idempotency_key) for e in changes.journal] == [
        (EntryKind.OPENING, EUR, "open:alice")
    ]
    assert set(changes.subscribers) == {"alice"} and set(changes.accounts) == {"alice"}


def test_bundles_become_buckets_with_grant_lines_and_expiry() -> None:
    state = ShardState()
    provision(
        state,
        plan=CATALOG.get("postpaid-monthly"),
        initial_balance_micros=0,
        credit_limit_micros=50 * EUR,
    )
    buckets = {b.bundle_id: b for b in state.buckets.values()}
    assert set(buckets) == {"minutes-500", "sms-500", "data-20gb"}
    assert buckets["sms-500"].units == 500
    assert buckets["sms-500"].expires_at == NOW + timedelta(days=30)
    assert buckets["minutes-500"].destination_groups == ("national", "national-mobile")
    grants = [e for e in state.take_changes().journal if e.kind is EntryKind.BUCKET_GRANT]
    assert sorted(e.units for e in grants) == [500, 30_000, 21_474_836_480]


def test_shared_account_is_joined_not_duplicated() -> None:
    state = ShardState()
    plan = CATALOG.get("iot-pool")
    provision(state, "dev-1", plan=plan, initial_balance_micros=0, account_id="fleet")
    provision(state, "dev-2", plan=plan, initial_balance_micros=0, account_id="fleet")
    assert set(state.accounts) == {"fleet"}
    assert len(state.buckets) == 1
    assert state.subscribers["dev-2"].account_id == "fleet"


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"subscriber_id": ""}, "subscriber_id"),
        ({"vshard": -1}, "vshard"),
        ({"initial_balance_micros": -1}, "initial_balance_micros"),
        ({"credit_limit_micros": 5}, "credit_limit_micros"),  # prepaid has no credit
        ({"credit_limit_micros": -5, "payment_mode": PaymentMode.POSTPAID}, "credit_limit_micros"),
        ({"now": datetime(2026, 3, 2)}, "now"),
        ({"account_id": ""}, "account_id"),
    ],
)
def test_bad_provisioning_names_the_field_and_changes_nothing(
    kw: dict[str, object], field: str
) -> None:
    state = ShardState()
    with pytest.raises(ChargingError) as err:
        provision(state, **kw)
    assert err.value.field == field
    assert state.accounts == {} and state.subscribers == {} and state.pending.is_empty()


def test_duplicate_subscriber_and_bad_join_are_refused() -> None:
    state = ShardState()
    provision(state)
    with pytest.raises(ChargingError, match="already exists"):
        provision(state)
    provision(state, "fam-1", account_id="family")
    with pytest.raises(ChargingError, match="balance and credit limit"):
        provision(state, "fam-2", account_id="family")
    with pytest.raises(ChargingError, match="currency"):
        provision(state, "fam-3", account_id="family", initial_balance_micros=0, currency="USD")
    with pytest.raises(ChargingError, match="vshard"):
        provision(state, "fam-4", account_id="family", initial_balance_micros=0, vshard=9)
    with pytest.raises(ChargingError, match="account 'family' already exists"):
        provision(state, "family")  # an own account named like an existing shared one


def _cmd(kind: str, amount: int, key: str, subscriber: str = "alice") -> BalanceCommand:
    return BalanceCommand(
        kind=kind, subscriber_id=subscriber, amount_micros=amount, idempotency_key=key
    )


@pytest.mark.parametrize(
    ("kind", "amount", "entry_kind"),
    [
        ("topup", 5 * EUR, EntryKind.TOPUP),
        ("refund", 300_000, EntryKind.REFUND),
        ("adjustment", 200_000, EntryKind.ADJUSTMENT),
        ("adjustment", -400_000, EntryKind.ADJUSTMENT),
    ],
)
def test_balance_commands_move_money_with_a_journal_line(
    kind: str, amount: int, entry_kind: EntryKind
) -> None:
    state = ShardState()
    provision(state)
    state.take_changes()
    result = apply_balance(state, _cmd(kind, amount, "k1"), now=NOW)
    assert result.balance_after_micros == EUR + amount == state.accounts["alice"].balance_micros
    assert result.amount_micros == amount and result.account_id == "alice"
    changes = state.take_changes()
    (line,) = changes.journal
    assert (line.kind, line.amount_micros, line.idempotency_key, line.line) == (
        entry_kind,
        amount,
        "k1",
        0,
    )
    assert changes.balance_results == {"k1": (3, result)}


def test_repeated_key_returns_the_original_result_and_moves_nothing() -> None:
    state = ShardState()
    provision(state)
    first = apply_balance(state, _cmd("topup", EUR, "k1"), now=NOW)
    state.take_changes()
    assert apply_balance(state, _cmd("topup", EUR, "k1"), now=NOW) is first
    assert state.accounts["alice"].balance_micros == 2 * EUR
    assert state.take_changes().is_empty()


@pytest.mark.parametrize(
    "other",
    [_cmd("topup", 2 * EUR, "k1"), _cmd("refund", EUR, "k1"), _cmd("topup", EUR, "k1", "bob")],
)
def test_key_reused_with_different_content_is_an_error_naming_the_key(
    other: BalanceCommand,
) -> None:
    state = ShardState()
    provision(state)
    provision(state, "bob")
    apply_balance(state, _cmd("topup", EUR, "k1"), now=NOW)
    with pytest.raises(ChargingError, match="'k1'") as err:
        apply_balance(state, other, now=NOW)
    assert err.value.field == "idempotency_key"
    assert state.accounts["alice"].balance_micros == 2 * EUR


@pytest.mark.parametrize(
    ("command", "field"),
    [
        (_cmd("gift", EUR, "k"), "kind"),
        (_cmd("topup", 0, "k"), "amount_micros"),
        (_cmd("topup", -5, "k"), "amount_micros"),
        (_cmd("refund", -5, "k"), "amount_micros"),
        (_cmd("adjustment", 0, "k"), "amount_micros"),
        (_cmd("topup", 10**15 + 1, "k"), "amount_micros"),
        (_cmd("topup", EUR, ""), "idempotency_key"),
        (_cmd("topup", EUR, "k", "ghost"), "subscriber_id"),
        (_cmd("adjustment", -EUR - 1, "k"), "amount_micros"),
    ],
)
def test_bad_balance_commands_are_refused(command: BalanceCommand, field: str) -> None:
    state = ShardState()
    provision(state)
    state.take_changes()
    with pytest.raises(ChargingError) as err:
        apply_balance(state, command, now=NOW)
    assert err.value.field == field
    assert state.accounts["alice"].balance_micros == EUR
    assert state.take_changes().is_empty() and state.balance_results == {}


def test_negative_adjustment_cannot_take_held_money(sc: Scenario) -> None:
    sc.subscriber("alice", "payg", balance=EUR)
    sc.initial("s1", "alice", entry(100, request=0))  # holds 0.50
    with pytest.raises(ChargingError, match="available"):
        apply_balance(sc.state, _cmd("adjustment", -600_000, "k"), now=NOW)
    apply_balance(sc.state, _cmd("adjustment", -500_000, "k"), now=NOW)
    sc.collect()
    assert audit(sc.state, sc.journal) == []


def test_postpaid_adjustment_may_use_credit() -> None:
    state = ShardState()
    provision(
        state,
        initial_balance_micros=0,
        credit_limit_micros=EUR,
        payment_mode=PaymentMode.POSTPAID,
    )
    apply_balance(state, _cmd("adjustment", -EUR, "k"), now=NOW)
    assert state.accounts["alice"].balance_micros == -EUR


def test_balance_view_shows_holds_credit_and_usable_buckets(sc: Scenario) -> None:
    sc.subscriber("bob", "postpaid-monthly", balance=0, credit_limit=2 * EUR)
    sc.initial("s1", "bob", entry(200, request=5))
    view = balance_view(sc.state, "bob", now=sc.now)
    assert (view.balance_micros, view.credit_limit_micros, view.available_micros) == (
        0,
        2 * EUR,
        2 * EUR,
    )
    sms = next(b for b in view.buckets if b.bundle_id == "sms-500")
    assert (sms.units, sms.reserved_units, sms.available_units, sms.usable) == (500, 5, 495, True)
    later = balance_view(sc.state, "bob", now=sc.now + timedelta(days=31))
    assert all(not b.usable and b.available_units == 0 for b in later.buckets)
    with pytest.raises(ChargingError):
        balance_view(sc.state, "ghost", now=sc.now)


def test_expire_buckets_removes_expired_units_with_journal_lines(sc: Scenario) -> None:
    sc.subscriber("bob", "postpaid-monthly", credit_limit=EUR)
    sc.initial("s1", "bob", entry(200, request=5))  # holds SMS units
    assert expire_buckets(sc.state, now=sc.now + timedelta(days=29)) == []
    expired = expire_buckets(sc.state, now=sc.now + timedelta(days=30))
    assert len(expired) == 2  # the SMS bucket still holds units for the session
    sc.collect()
    assert [e.kind for e in sc.journal[-2:]] == [EntryKind.BUCKET_EXPIRY] * 2
    assert audit(sc.state, sc.journal) == []
    sc.terminate("s1", 1, "bob", entry(200, used=5))
    assert len(expire_buckets(sc.state, now=sc.now + timedelta(days=30))) == 1
    sc.collect()
    assert sc.state.buckets == {} and sc.state.buckets_by_account == {}


def test_buckets_are_consumed_by_priority_whatever_the_index_order() -> None:
    text = template_text("postpaid-monthly").replace("plan_id: postpaid-monthly", "plan_id: pm-x")
    text = text.replace(
        "      - {id: sms-500, service: sms, units: 500, validity_days: 30, priority: 10}",
        "      - {id: sms-500, service: sms, units: 500, validity_days: 30, priority: 10}\n"
        "      - {id: sms-promo, service: sms, units: 3, validity_days: 7, priority: 5}",
    )
    catalog = CATALOG.with_plan(load_plan(text, source="pm-x"))
    sc = Scenario(catalog=catalog, now=NOW)
    sc.subscriber("bob", "pm-x", credit_limit=EUR)
    sc.state.buckets_by_account["bob"].reverse()  # as a loader might list them
    by_bundle = {b.bundle_id: b for b in sc.state.buckets.values()}
    sc.initial("s1", "bob", entry(200, request=5))
    assert by_bundle["sms-promo"].reserved_units == 3
    assert by_bundle["sms-500"].reserved_units == 2
    sc.terminate("s1", 1, "bob", entry(200, used=4))
    assert (by_bundle["sms-promo"].units, by_bundle["sms-500"].units) == (0, 499)
    assert audit(sc.state, sc.journal) == []


def test_balance_results_are_pruned_with_the_answers(sc: Scenario) -> None:
    from billing.charging import prune_answers

    sc.subscriber("alice", "payg", balance=EUR)
    apply_balance(sc.state, _cmd("topup", EUR, "k-old"), now=sc.now)
    horizon = sc.advance(60)
    apply_balance(sc.state, _cmd("topup", EUR, "k-new"), now=sc.now)
    assert prune_answers(sc.state, horizon) == 1
    assert set(sc.state.balance_results) == {"k-new"}
