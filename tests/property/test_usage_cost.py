"""``rating.usage_cost`` (what charging uses) is exactly the total of ``rating.rate``: the same
cost and the same charged units, over generated tariffs (tiers, bands, fees, minimum, cap),
usages and times, and for the built-in templates."""

from __future__ import annotations

from datetime import datetime

from hypothesis import given
from hypothesis import strategies as st

from billing.protocol import ServiceKind
from billing.rating import RatingError, UsageEvent, rate, usage_cost
from billing.tariff import Plan, builtin_catalog
from tests.property.test_rating_properties import (
    SETTINGS,
    plans,
    services,
    starts,
    unit_counts,
    usage,
)

CATALOG = builtin_catalog()


@SETTINGS
@given(plans, services, unit_counts, starts, st.integers(0, 100_000))
def test_usage_cost_is_the_rating_total(
    plan: Plan, service: tuple[ServiceKind, int], units: int, start: datetime, before: int
) -> None:
    event = usage(service, units, start)
    rating = rate(event, plan, cycle_units_before=before)
    assert usage_cost(event, plan, cycle_units_before=before) == (
        rating.cost_micros,
        rating.charged_units,
    )


@SETTINGS
@given(
    st.sampled_from(["payg", "postpaid-monthly", "hybrid", "iot-pool"]),
    st.sampled_from(
        [
            (ServiceKind.VOICE, 100),
            (ServiceKind.SMS, 200),
            (ServiceKind.DATA, 10),
            (ServiceKind.CONTENT, 300),
            (ServiceKind.VOICE, 10),  # a data rating group: a RatingError for both
        ]
    ),
    st.sampled_from([0, 1, 59, 61, 3600, 5_000_000, 31 * 86_400 + 1]),
    starts,
    st.sampled_from([None, "33140000000", "+4930123", "1212555"]),
    st.sampled_from([None, "20801", "310-260", "99999"]),
    st.integers(0, 10**12),
)
def test_usage_cost_is_the_rating_total_for_the_templates(
    plan_id: str,
    service: tuple[ServiceKind, int],
    units: int,
    start: datetime,
    destination: str | None,
    visited: str | None,
    before: int,
) -> None:
    plan = CATALOG.get(plan_id)
    event = UsageEvent(service[0], units, start, service[1], destination, visited)
    try:
        rating = rate(event, plan, cycle_units_before=before)
    except RatingError as err:
        try:
            usage_cost(event, plan, cycle_units_before=before)
        except RatingError as again:
            assert str(again) == str(err)
            return
        raise AssertionError("usage_cost priced what rate refuses") from err
    assert usage_cost(event, plan, cycle_units_before=before) == (
        rating.cost_micros,
        rating.charged_units,
    )
