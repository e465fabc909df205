"""Worst-case pricing for grants (reservation_price), its exact inverse (affordable_units) and
tariff switch times (next_tariff_switch)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml

from billing.protocol import ServiceKind
from billing.rating import (
    RatingError,
    UsageEvent,
    affordable_units,
    next_tariff_switch,
    rate,
    reservation_price,
)
from billing.tariff import Plan, builtin_catalog, load_plan

VOICE, DATA = ServiceKind.VOICE, ServiceKind.DATA


def paris(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC) - timedelta(hours=1)  # winter: Paris = UTC+1


def make_plan(
    voice_price: Any = None,
    data_price: Any = "0.01",
    *,
    later: list[dict[str, Any]] | None = None,
    data_tiers: list[dict[str, Any]] | None = None,
    **voice_kw: Any,
) -> Plan:
    voice_rate = {
        "id": "voice",
        "service": "voice",
        "rate_unit": 60,
        "price": voice_price or {"peak": "0.12", "offpeak": "0.06"},
        **voice_kw,
    }
    version = {
        "version": 1,
        "effective_from": "2026-01-01T00:00:00+00:00",
        "currency": "EUR",
        "payment_mode": "prepaid",
        "consumption_order": ["prepaid"],
        "timezone": "Europe/Paris",
        "time_bands": {
            "default": "offpeak",
            "bands": {
                "peak": [
                    {"days": ["mon", "tue", "wed", "thu", "fri"], "from": "08:00", "to": "20:00"}
                ]
            },
        },
        "services": [
            {
                "service": "voice",
                "rating_groups": [100],
                "unit": "time_s",
                "default_quota": 300,
                "validity_time_s": 600,
            },
            {
                "service": "data",
                "rating_groups": [10],
                "unit": "total_octets",
                "default_quota": 1_000_000,
                "validity_time_s": 900,
            },
        ],
        "rates": [
            voice_rate,
            {
                "id": "data",
                "service": "data",
                "rate_unit": 1000,
                "price": data_price,
                "tiers": data_tiers or [],
            },
        ],
    }
    d = {"plan_id": "r", "name": "Reserve", "versions": [version, *(later or [])]}
    return load_plan(yaml.safe_dump(d, sort_keys=False), source="reserve.yaml")


def voice(units: int, start: datetime) -> UsageEvent:
    return UsageEvent(VOICE, units, start, 100)


def test_reservation_equals_rate_when_nothing_can_change() -> None:
    plan = make_plan()
    usage = voice(300, paris(2026, 11, 26, 10, 0, 0))
    assert reservation_price(usage, plan) == rate(usage, plan).cost_micros == 600_000


def test_reservation_takes_the_peak_price_when_the_window_reaches_peak() -> None:
    plan = make_plan()
    # 07:50 off-peak; validity 600 s reaches 08:00 peak.
    usage = voice(60, paris(2026, 11, 26, 7, 50, 0))
    assert rate(usage, plan).cost_micros == 60_000
    assert reservation_price(usage, plan) == 120_000
    # Usage may start until validity ends (+600 s); its last second starts 59 s later.
    assert reservation_price(voice(60, paris(2026, 11, 26, 7, 49, 1)), plan) == 120_000
    assert reservation_price(voice(60, paris(2026, 11, 26, 7, 49, 0)), plan) == 60_000
    assert reservation_price(voice(60, paris(2026, 11, 26, 7, 38, 0)), plan) == 60_000


def test_reservation_of_untimed_usage_looks_at_the_validity_window_only() -> None:
    plan = make_plan(data_price={"peak": "0.02", "offpeak": "0.01"})
    near = UsageEvent(DATA, 10_000, paris(2026, 11, 26, 7, 50, 0), 10)
    edge = UsageEvent(DATA, 10_000, paris(2026, 11, 26, 7, 45, 0), 10)  # validity ends at 08:00
    far = UsageEvent(DATA, 10_000, paris(2026, 11, 26, 7, 44, 59), 10)
    assert reservation_price(near, plan) == 200_000
    assert reservation_price(edge, plan) == 200_000
    assert reservation_price(far, plan) == 100_000


def test_reservation_includes_fee_minimum_and_cap() -> None:
    plan = make_plan("0.06", connect_fee="0.10", minimum_charge="0.20", max_cost="1.00")
    start = paris(2026, 11, 26, 10, 0, 0)
    assert reservation_price(voice(1, start), plan) == 200_000
    assert reservation_price(voice(300, start), plan) == 400_000
    assert reservation_price(voice(3600, start), plan) == 1_000_000
    assert reservation_price(voice(0, start), plan) == 0


def test_reservation_takes_the_highest_tier() -> None:
    plan = make_plan(
        data_price="0.001",
        data_tiers=[{"from": 1000, "price": "0.004"}, {"from": 2000, "price": "0"}],
    )
    usage = UsageEvent(DATA, 5000, paris(2026, 11, 26, 10, 0, 0), 10)
    assert rate(usage, plan).cost_micros == 1000 * 1 + 1000 * 4
    assert reservation_price(usage, plan) == 5000 * 4


def test_reservation_covers_a_new_version_taking_effect_in_the_window() -> None:
    later = [
        {
            "version": 2,
            "effective_from": "2026-11-26T09:05:00+00:00",
            "rates": [
                {"id": "voice", "service": "voice", "rate_unit": 60, "price": "0.60"},
                {"id": "data", "service": "data", "rate_unit": 1000, "price": "0.01"},
            ],
        }
    ]
    plan = make_plan(later=later)
    usage = voice(60, datetime(2026, 11, 26, 9, 0, tzinfo=UTC))
    assert rate(usage, plan).cost_micros == 120_000
    assert reservation_price(usage, plan) == 600_000
    # A version taking effect after the validity window does not count.
    early = voice(60, datetime(2026, 11, 26, 8, 50, tzinfo=UTC))
    assert reservation_price(early, plan) == 120_000


def test_affordable_units_is_the_exact_inverse() -> None:
    plan = make_plan("0.06", initial_increment=60, subsequent_increment=60)
    start = paris(2026, 11, 26, 10, 0, 0)
    usage = voice(3600, start)
    assert affordable_units(usage, plan, 10_000_000) == 3600
    assert affordable_units(usage, plan, 0) == 0
    assert affordable_units(usage, plan, 59_999) == 0
    assert affordable_units(usage, plan, 60_000) == 60
    assert affordable_units(usage, plan, 179_999) == 120
    assert affordable_units(usage, plan, -5) == 0


def test_affordable_units_with_band_change_in_the_window() -> None:
    plan = make_plan(initial_increment=1, subsequent_increment=1)
    start = paris(2026, 11, 26, 7, 40, 0)  # off-peak; validity ends 07:50; peak from 08:00
    usage = voice(3600, start)
    budget = 600_000
    n = affordable_units(usage, plan, budget)
    assert reservation_price(voice(n, start), plan) <= budget
    assert reservation_price(voice(n + 1, start), plan) > budget
    # 600 s at off-peak would fit, but a window of 600 + 600 s reaches peak.
    assert n == 600 and reservation_price(voice(600, start), plan) == 600_000
    assert affordable_units(voice(300, start), plan, 0) == 0


def test_free_usage_is_always_affordable() -> None:
    plan = make_plan("0")
    assert affordable_units(voice(3600, paris(2026, 11, 26, 10, 0, 0)), plan, 0) == 3600


def test_reservation_errors_are_rating_errors() -> None:
    plan = make_plan()
    with pytest.raises(RatingError) as info:
        reservation_price(UsageEvent(VOICE, 60, paris(2026, 11, 26, 10, 0, 0), 999), plan)
    assert info.value.field == "rating_group"
    with pytest.raises(RatingError):
        affordable_units(UsageEvent(VOICE, 60, datetime(2020, 1, 1, tzinfo=UTC), 100), plan, 10)
    with pytest.raises(RatingError):
        reservation_price(voice(40 * 86_400, paris(2026, 11, 26, 10, 0, 0)), plan)


def test_next_tariff_switch_at_band_change() -> None:
    plan = make_plan()
    start = paris(2026, 11, 26, 19, 0, 0)
    assert next_tariff_switch(plan, VOICE, start, start + timedelta(hours=2)) == paris(
        2026, 11, 26, 20, 0, 0
    )
    assert next_tariff_switch(plan, VOICE, start, start + timedelta(minutes=60)) is None
    assert next_tariff_switch(plan, VOICE, start, start) is None


def test_next_tariff_switch_skips_midnight_and_weekend_in_one_band() -> None:
    plan = make_plan()
    friday_night = paris(2026, 11, 27, 21, 0, 0)
    assert next_tariff_switch(plan, VOICE, friday_night, friday_night + timedelta(days=4)) == paris(
        2026, 11, 30, 8, 0, 0
    )


def test_next_tariff_switch_ignores_bands_a_service_does_not_price() -> None:
    plan = make_plan()
    start = paris(2026, 11, 26, 19, 0, 0)
    assert next_tariff_switch(plan, DATA, start, start + timedelta(hours=2)) is None


def test_next_tariff_switch_at_version_change() -> None:
    later = [{"version": 2, "effective_from": "2026-11-26T18:30:00+00:00"}]
    plan = make_plan(later=later)
    start = paris(2026, 11, 26, 19, 0, 0)
    change = datetime(2026, 11, 26, 18, 30, tzinfo=UTC)
    assert next_tariff_switch(plan, DATA, start, start + timedelta(hours=2)) == change
    assert next_tariff_switch(plan, VOICE, start, start + timedelta(hours=2)) == change


def test_next_tariff_switch_uses_local_time_across_dst() -> None:
    plan = make_plan()
    # Friday 2026-03-27 20:00 Paris (CET) is 19:00Z; the next peak, Monday 2026-03-30 08:00, is
    # in summer time (CEST): 06:00Z.
    start = datetime(2026, 3, 27, 19, 30, tzinfo=UTC)
    assert next_tariff_switch(plan, VOICE, start, start + timedelta(days=4)) == datetime(
        2026, 3, 30, 6, 0, tzinfo=UTC
    )


def test_next_tariff_switch_skips_a_holiday_without_peak() -> None:
    payg = builtin_catalog().get("payg")
    # Thursday 2026-12-24 20:00 Paris -> Friday 25 is a holiday (no peak) -> Monday 28 08:00.
    start = datetime(2026, 12, 24, 19, 0, tzinfo=UTC)
    assert next_tariff_switch(payg, VOICE, start, start + timedelta(days=5)) == datetime(
        2026, 12, 28, 7, 0, tzinfo=UTC
    )


def test_rate_crosses_into_a_new_band_exactly_as_the_switch_says() -> None:
    plan = make_plan(initial_increment=1, subsequent_increment=1)
    start = paris(2026, 11, 26, 19, 58, 0)
    switch = next_tariff_switch(plan, VOICE, start, start + timedelta(hours=1))
    assert switch is not None
    before = int((switch - start).total_seconds())
    whole = rate(voice(300, start), plan)
    assert [(i.band, i.units) for i in whole.items] == [("peak", before), ("offpeak", 300 - before)]
