"""The hot-path memos of billing.quota agree exactly with the rating functions they stand for."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from billing.protocol import PaymentMode, ServiceKind
from billing.quota import funds_for, tariff_switch, worst_price
from billing.rating import UsageEvent, next_tariff_switch, reservation_price
from billing.state import Account, ShardState
from billing.tariff import builtin_catalog

CATALOG = builtin_catalog()
START = datetime(2026, 6, 26, 0, 0, tzinfo=UTC)  # a week that includes payg's v2 (1 July)
SERVICES = {100: ServiceKind.VOICE, 200: ServiceKind.SMS, 10: ServiceKind.DATA}

queries = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=2 * 86_400),  # start offset, s
        st.integers(min_value=1, max_value=4 * 3600),  # window, s
        st.sampled_from(sorted(SERVICES)),
        st.sampled_from([1, 60, 300, 7200]),  # units: few values, so the memo is hit
    ),
    min_size=1,
    max_size=40,
)


@settings(derandomize=True, max_examples=80, deadline=None)
@given(plan_id=st.sampled_from(["payg", "postpaid-monthly", "hybrid", "iot-pool"]), qs=queries)
def test_memoised_switch_and_price_equal_the_rating_functions(
    plan_id: str, qs: list[tuple[int, int, int, int]]
) -> None:
    plan = CATALOG.get(plan_id)
    state = ShardState()
    account = Account(plan_id, 0, PaymentMode.PREPAID, "EUR", plan_id, 0, 0, 0, START)
    # Queries in time order, as an owner's clock moves, with repeats of the same instant.
    for offset, window, rg, units in sorted(qs):
        start = START + timedelta(seconds=offset)
        until = start + timedelta(seconds=window)
        service = SERVICES[rg]
        assert tariff_switch(plan, service, start, until) == next_tariff_switch(
            plan, service, start, until
        )
        version = plan.version_at(start)
        funds = funds_for(state, "k", account, plan, version, "33140000000", None)
        terms = version.service_terms(rg, None)
        expected = reservation_price(
            UsageEvent(service, units, start, rg, "33140000000"), plan, at=start
        )
        assert worst_price(funds, terms, rg, units, start) == expected
        assert worst_price(funds, terms, rg, units, start) == expected  # from the memo


def test_price_memo_is_not_used_when_a_dearer_band_starts_inside_the_window() -> None:
    plan = CATALOG.get("payg")  # voice: 0.05/min off-peak, 0.10/min peak from 08:00 Paris
    state = ShardState()
    account = Account("a", 0, PaymentMode.PREPAID, "EUR", "payg", 0, 0, 0, START)
    early = datetime(2026, 3, 2, 5, 0, tzinfo=UTC)  # 06:00 Paris, Monday
    late = datetime(2026, 3, 2, 6, 55, tzinfo=UTC)  # 07:55 Paris: the window reaches 08:00
    version = plan.version_at(early)
    terms = version.service_terms(100, None)
    funds = funds_for(state, "k", account, plan, version, "33140000000", None)
    assert worst_price(funds, terms, 100, 300, early) == 250_000  # 5 min off-peak
    assert worst_price(funds, terms, 100, 300, late) == 500_000  # 5 min peak
    assert worst_price(funds, terms, 100, 300, early + timedelta(minutes=1)) == 250_000
