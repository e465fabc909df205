"""Event charging: DIRECT_DEBITING, REFUND_ACCOUNT, CHECK_BALANCE, PRICE_ENQUIRY."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from billing.ledger import audit
from billing.protocol import (
    CheckBalanceResult,
    PaymentMode,
    RequestedAction,
    ResultCode,
    ServiceUsage,
    Units,
)
from billing.scenario import Scenario, entry
from billing.state import EntryKind
from billing.tariff import builtin_catalog, load_plan, template_text

PEAK = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
EUR = 1_000_000
DEBIT = RequestedAction.DIRECT_DEBITING
REFUND = RequestedAction.REFUND_ACCOUNT
CHECK = RequestedAction.CHECK_BALANCE
PRICE = RequestedAction.PRICE_ENQUIRY


@pytest.fixture
def sc() -> Scenario:
    return Scenario(catalog=builtin_catalog(), now=PEAK)


def balance(sc: Scenario, subscriber_id: str) -> tuple[int, int]:
    acc = sc.state.accounts[sc.state.subscribers[subscriber_id].account_id]
    return acc.balance_micros, acc.reserved_micros


def test_direct_debit_charges_the_event_price(sc: Scenario) -> None:
    sc.subscriber("alice", "payg", balance=EUR)
    answer = sc.event("e1", "alice", DEBIT, entry(200, request=3))
    assert answer.result_code is ResultCode.SUCCESS
    assert answer.cost_micros == 150_000
    assert answer.services[0].granted == Units(service_units=3)
    assert balance(sc, "alice") == (850_000, 0)
    assert [e.kind for e in sc.journal][-1] is EntryKind.DEBIT
    assert sc.journal[-1].idempotency_key == "cc:e1#0"
    assert audit(sc.state, sc.journal) == []


def test_direct_debit_with_empty_request_debits_the_default_quota(sc: Scenario) -> None:
    sc.subscriber("alice", "payg", balance=EUR)
    assert sc.event("e1", "alice", DEBIT, entry(200, request=0)).cost_micros == 50_000


def test_direct_debit_of_used_units(sc: Scenario) -> None:
    sc.subscriber("alice", "payg", balance=EUR)
    assert sc.event("e1", "alice", DEBIT, entry(300, used=1)).cost_micros == 500_000


def test_direct_debit_is_all_or_nothing(sc: Scenario) -> None:
    sc.subscriber("alice", "payg", balance=100_000)
    answer = sc.event("e1", "alice", DEBIT, entry(200, request=3))
    assert answer.result_code is ResultCode.CREDIT_LIMIT_REACHED
    assert "available" in answer.error_message
    assert balance(sc, "alice") == (100_000, 0)


def test_direct_debit_cannot_spend_session_holds(sc: Scenario) -> None:
    sc.subscriber("alice", "payg", balance=550_000)
    sc.initial("s1", "alice", entry(100, request=0))  # holds 0.50
    assert sc.event("e1", "alice", DEBIT, entry(200, request=2)).result_code is (
        ResultCode.CREDIT_LIMIT_REACHED
    )
    assert sc.event("e2", "alice", DEBIT, entry(200, request=1)).result_code is ResultCode.SUCCESS
    assert balance(sc, "alice") == (500_000, 500_000)


def test_direct_debit_uses_bundles_first(sc: Scenario) -> None:
    sc.subscriber("bob", "postpaid-monthly", credit_limit=EUR)
    answer = sc.event("e1", "bob", DEBIT, entry(200, request=2))
    assert answer.result_code is ResultCode.SUCCESS and answer.cost_micros == 0
    (sms,) = [b for b in sc.state.buckets.values() if b.bundle_id == "sms-500"]
    assert sms.units == 498
    assert balance(sc, "bob") == (0, 0)


def test_repeated_event_returns_the_original_answer(sc: Scenario) -> None:
    sc.subscriber("alice", "payg", balance=EUR)
    first = sc.event("e1", "alice", DEBIT, entry(200, request=1))
    again = sc.event("e1", "alice", DEBIT, entry(200, request=1))
    assert again is first
    assert balance(sc, "alice") == (950_000, 0)
    other = sc.event("e1", "alice", DEBIT, entry(200, request=1), number=1)
    assert other is not first and balance(sc, "alice") == (900_000, 0)


def test_rated_only_direct_debit_prices_without_moving_money(sc: Scenario) -> None:
    sc.subscriber("rita", "payg", payment_mode=PaymentMode.RATED_ONLY)
    answer = sc.event("e1", "rita", DEBIT, entry(200, request=4))
    assert answer.result_code is ResultCode.SUCCESS and answer.cost_micros == 200_000
    assert balance(sc, "rita") == (0, 0)
    assert [e.kind for e in sc.journal] == [EntryKind.OPENING]


def test_refund_of_an_amount(sc: Scenario) -> None:
    sc.subscriber("alice", "payg", balance=EUR)
    refund = ServiceUsage(rating_group=300, requested=Units(money_micros=250_000))
    answer = sc.event("r1", "alice", REFUND, refund)
    assert answer.result_code is ResultCode.SUCCESS
    assert answer.services[0].granted == Units(money_micros=250_000)
    assert balance(sc, "alice") == (1_250_000, 0)
    assert sc.journal[-1].kind is EntryKind.REFUND
    assert sc.event("r1", "alice", REFUND, refund) is answer
    assert balance(sc, "alice") == (1_250_000, 0)


def test_refund_of_the_price_of_a_described_service(sc: Scenario) -> None:
    sc.subscriber("alice", "payg", balance=EUR)
    sc.event("r1", "alice", REFUND, entry(200, request=2))
    assert balance(sc, "alice") == (1_100_000, 0)


def test_refund_above_the_bound_is_5004(sc: Scenario) -> None:
    sc.subscriber("alice", "payg", balance=EUR)
    refund = ServiceUsage(rating_group=300, requested=Units(money_micros=10**15 + 1))
    answer = sc.event("r1", "alice", REFUND, refund)
    assert answer.result_code is ResultCode.INVALID_AVP_VALUE
    assert "money_micros" in answer.error_message
    assert balance(sc, "alice") == (EUR, 0)


@pytest.mark.parametrize(
    ("funds", "wanted", "expected"),
    [
        (EUR, 10, CheckBalanceResult.ENOUGH_CREDIT),  # 0.50
        (500_000, 10, CheckBalanceResult.ENOUGH_CREDIT),
        (499_999, 10, CheckBalanceResult.NO_CREDIT),
    ],
)
def test_check_balance_answers_and_reserves_nothing(
    sc: Scenario, funds: int, wanted: int, expected: CheckBalanceResult
) -> None:
    sc.subscriber("alice", "payg", balance=funds)
    answer = sc.event("c1", "alice", CHECK, entry(200, request=wanted))
    assert answer.result_code is ResultCode.SUCCESS
    assert answer.check_balance_result is expected
    assert balance(sc, "alice") == (funds, 0)
    assert sc.state.sessions == {}


def test_check_balance_counts_every_entry_against_one_budget(sc: Scenario) -> None:
    sc.subscriber("alice", "payg", balance=EUR)
    answer = sc.event("c1", "alice", CHECK, entry(200, request=10), entry(300, request=1))
    assert answer.check_balance_result is CheckBalanceResult.ENOUGH_CREDIT
    answer = sc.event("c2", "alice", CHECK, entry(200, request=11), entry(300, request=1))
    assert answer.check_balance_result is CheckBalanceResult.NO_CREDIT


def test_check_balance_with_bundles_and_without_entries(sc: Scenario) -> None:
    sc.subscriber("bob", "postpaid-monthly")
    answer = sc.event("c1", "bob", CHECK, entry(200, request=500))
    assert answer.check_balance_result is CheckBalanceResult.ENOUGH_CREDIT
    answer = sc.event("c2", "bob", CHECK, entry(200, request=501))
    assert answer.check_balance_result is CheckBalanceResult.NO_CREDIT
    assert sc.event("c3", "bob", CHECK).check_balance_result is CheckBalanceResult.NO_CREDIT
    sc.subscriber("alice", "payg", balance=1)
    assert sc.event("c4", "alice", CHECK).check_balance_result is CheckBalanceResult.ENOUGH_CREDIT


def test_price_enquiry_returns_the_cost_and_touches_nothing(sc: Scenario) -> None:
    sc.subscriber("alice", "payg", balance=0)
    answer = sc.event("p1", "alice", PRICE, entry(100, request=90))
    assert answer.result_code is ResultCode.SUCCESS
    assert answer.cost_micros == 200_000  # 2 started minutes at peak
    assert balance(sc, "alice") == (0, 0)
    assert [e.kind for e in sc.journal] == [EntryKind.OPENING]


def test_event_entry_without_units_is_5005(sc: Scenario) -> None:
    sc.subscriber("alice", "payg", balance=EUR)
    answer = sc.event("e1", "alice", DEBIT, ServiceUsage(rating_group=200))
    assert answer.result_code is ResultCode.MISSING_AVP
    assert "services[0]" in answer.error_message
    assert balance(sc, "alice") == (EUR, 0)


def test_event_for_unknown_rating_group_is_5031(sc: Scenario) -> None:
    sc.subscriber("alice", "payg", balance=EUR)
    answer = sc.event("e1", "alice", DEBIT, entry(777, request=1))
    assert answer.result_code is ResultCode.RATING_FAILED
    assert "777" in answer.error_message


def test_event_for_unknown_subscriber_is_5030(sc: Scenario) -> None:
    assert sc.event("e1", "ghost", DEBIT, entry(200, request=1)).result_code is (
        ResultCode.USER_UNKNOWN
    )


def test_free_and_denied_events() -> None:
    text = template_text("payg").replace("plan_id: payg", "plan_id: payg-x")
    parts = text.split("credit_control: charged")
    text = "credit_control: charged".join(parts[:2]) + "credit_control: denied" + parts[2]
    text += "".join("credit_control: charged" + p for p in parts[3:4])
    text += "credit_control: free" + "credit_control: charged".join(parts[4:])
    catalog = builtin_catalog().with_plan(load_plan(text, source="payg-x"))
    sc = Scenario(catalog=catalog, now=PEAK)
    sc.subscriber("alice", "payg-x", balance=EUR)
    denied = sc.event("e1", "alice", DEBIT, entry(200, request=1))
    assert denied.result_code is ResultCode.END_USER_SERVICE_DENIED
    free = sc.event("e2", "alice", DEBIT, entry(300, request=1))
    assert free.result_code is ResultCode.CREDIT_CONTROL_NOT_APPLICABLE
    assert balance(sc, "alice") == (EUR, 0)
    check = sc.event("e3", "alice", CHECK, entry(200, request=1))
    assert check.check_balance_result is CheckBalanceResult.NO_CREDIT


def test_volume_tiers_count_the_calendar_month_of_the_usage(sc: Scenario) -> None:
    sc.subscriber("bob", "postpaid-monthly", credit_limit=1000 * EUR)
    sc.advance(31 * 86_400)  # 2 April: the bundles have expired, data is paid per MiB
    gib = 1 << 30
    first = sc.event("e1", "bob", DEBIT, entry(10, request=10 * gib))
    assert first.cost_micros == 10240 * 20_000  # the first 10 GiB of the month at 0.02/MiB
    second = sc.event("e2", "bob", DEBIT, entry(10, request=gib))
    assert second.cost_micros == 1024 * 10_000  # beyond 10 GiB: 0.01/MiB
    account = sc.state.accounts["bob"]
    assert account.usage_counters == {"data:2026-04": 11 * gib}
    sc.advance(30 * 86_400)  # May: the tiers start again, April's counter is dropped
    third = sc.event("e3", "bob", DEBIT, entry(10, request=gib))
    assert third.cost_micros == 1024 * 20_000
    assert account.usage_counters == {"data:2026-05": gib}
