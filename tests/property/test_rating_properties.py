"""Invariants of the rating engine over generated tariffs, usages and times (hypothesis,
derandomized): prices are never negative and itemised exactly; price is monotone in units;
splittable tariffs cost the same split or whole; a reservation covers any placement of its units
in the window; affordable_units is the exact inverse of reservation_price."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing.protocol import ServiceKind
from billing.rating import UsageEvent, affordable_units, rate, reservation_price
from billing.tariff import Plan, load_plan

SETTINGS = settings(
    derandomize=True,
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
BANDS = ("offpeak", "peak", "night")
VALIDITY_S = 600
# Band boundaries (UTC) of the generated plans: peak starts/ends, the Sunday night band, the DST
# changes (Mar 29, Oct 25) and a holiday (Dec 25). Starts are drawn up to 5,000 s before them
# so that windows and usages cross them often, or anywhere in 2026.
BOUNDARIES = [
    datetime(2026, 11, 26, 7, 0, tzinfo=UTC),
    datetime(2026, 11, 27, 19, 0, tzinfo=UTC),
    datetime(2026, 11, 28, 23, 0, tzinfo=UTC),
    datetime(2026, 11, 29, 1, 30, tzinfo=UTC),
    datetime(2026, 3, 29, 1, 0, tzinfo=UTC),
    datetime(2026, 10, 25, 0, 30, tzinfo=UTC),
    datetime(2026, 10, 25, 1, 30, tzinfo=UTC),
    datetime(2026, 12, 24, 19, 0, tzinfo=UTC),
]
near_boundaries = st.builds(
    lambda b, s: b - timedelta(microseconds=s),
    st.sampled_from(BOUNDARIES),
    st.integers(0, 5_000_000_000),
)
starts = st.one_of(
    near_boundaries,
    st.datetimes(
        min_value=datetime(2026, 1, 2), max_value=datetime(2026, 12, 30), timezones=st.just(UTC)
    ),
    st.sampled_from(
        [
            datetime(2026, 3, 29, 0, 59, 30, tzinfo=UTC),
            datetime(2026, 10, 25, 0, 29, 50, tzinfo=UTC),
            datetime(2026, 10, 25, 0, 59, 59, 500_000, tzinfo=UTC),
            datetime(2026, 11, 27, 18, 59, 45, tzinfo=UTC),
            datetime(2026, 12, 24, 22, 59, 59, tzinfo=UTC),
        ]
    ),
)


def micros(n: int) -> str:
    return f"{n // 1_000_000}.{n % 1_000_000:06d}"


@st.composite
def prices(draw: st.DrawFn, multiple_of: int = 1) -> dict[str, str]:
    per_band = draw(st.lists(st.integers(0, 50_000), min_size=3, max_size=3))
    return {b: micros(p * multiple_of) for b, p in zip(BANDS, per_band, strict=True)}


@st.composite
def rate_specs(draw: st.DrawFn, splittable: bool = False) -> dict[str, Any]:
    unit = draw(st.sampled_from([1, 6, 60, 1000]))
    spec: dict[str, Any] = {
        "rate_unit": unit,
        "rounding": draw(st.sampled_from(["up", "down", "half_up", "half_even"])),
    }
    multiple = unit if splittable else 1
    spec["price"] = draw(prices(multiple))
    tiers = []
    at = 0
    for _ in range(draw(st.integers(0, 2))):
        at += draw(st.integers(1, 400))
        tiers.append({"from": at, "price": draw(prices(multiple))})
    spec["tiers"] = tiers
    if not splittable:
        spec["initial_increment"] = draw(st.sampled_from([1, 30, 60]))
        spec["subsequent_increment"] = draw(st.sampled_from([1, 6, 60]))
        spec["connect_fee"] = micros(draw(st.integers(0, 100_000)))
        minimum = draw(st.integers(0, 200_000))
        spec["minimum_charge"] = micros(minimum)
        if draw(st.booleans()):
            spec["max_cost"] = micros(minimum + draw(st.integers(0, 5_000_000)))
    return spec


def build(spec: dict[str, Any], later: tuple[datetime, dict[str, Any]] | None = None) -> Plan:
    version = {
        "version": 1,
        "effective_from": "2026-01-01T00:00:00+00:00",
        "currency": "EUR",
        "payment_mode": "prepaid",
        "consumption_order": ["prepaid"],
        "timezone": "Europe/Paris",
        "holidays": ["2026-12-25"],
        "time_bands": {
            "default": "offpeak",
            "bands": {
                "peak": [
                    {"days": ["mon", "tue", "wed", "thu", "fri"], "from": "08:00", "to": "20:00"}
                ],
                "night": [{"days": ["sun", "holiday"], "from": "00:00", "to": "02:30"}],
            },
        },
        "services": [
            {
                "service": "voice",
                "rating_groups": [100],
                "unit": "time_s",
                "default_quota": 300,
                "validity_time_s": VALIDITY_S,
            },
            {
                "service": "data",
                "rating_groups": [10],
                "unit": "total_octets",
                "default_quota": 1000,
                "validity_time_s": VALIDITY_S,
            },
        ],
        "rates": [
            {"id": "voice", "service": "voice", **spec},
            {"id": "data", "service": "data", **spec},
        ],
    }
    versions: list[dict[str, Any]] = [version]
    if later is not None:
        effective, spec2 = later
        versions.append(
            {
                "version": 2,
                "effective_from": effective.isoformat(),
                "rates": [
                    {"id": "voice", "service": "voice", **spec2},
                    {"id": "data", "service": "data", **spec2},
                ],
            }
        )
    doc = {"plan_id": "p", "name": "Generated", "versions": versions}
    return load_plan(yaml.safe_dump(doc, sort_keys=False), source="generated.yaml")


plans = rate_specs().map(build)
splittable_plans = rate_specs(splittable=True).map(build)
services = st.sampled_from([(ServiceKind.VOICE, 100), (ServiceKind.DATA, 10)])
unit_counts = st.integers(0, 4000)


def usage(service: tuple[ServiceKind, int], units: int, start: datetime) -> UsageEvent:
    return UsageEvent(service[0], units, start, service[1])


@SETTINGS
@given(plans, services, unit_counts, starts, st.integers(0, 1000))
def test_price_is_never_negative_and_items_sum_to_it(
    plan: Plan, service: tuple[ServiceKind, int], units: int, start: datetime, before: int
) -> None:
    rating = rate(usage(service, units, start), plan, cycle_units_before=before)
    assert rating.cost_micros >= 0
    assert rating.cost_micros == sum(i.amount_micros for i in rating.items)
    assert all(i.amount_micros >= 0 for i in rating.items if i.note != "max cost cap")
    assert sum(i.units for i in rating.items) == units


@SETTINGS
@given(plans, services, unit_counts, st.integers(0, 500), starts, st.integers(0, 1000))
def test_price_is_monotone_in_units(
    plan: Plan,
    service: tuple[ServiceKind, int],
    units: int,
    more: int,
    start: datetime,
    before: int,
) -> None:
    small = rate(usage(service, units, start), plan, cycle_units_before=before).cost_micros
    large = rate(usage(service, units + more, start), plan, cycle_units_before=before).cost_micros
    assert small <= large


@SETTINGS
@given(splittable_plans, services, unit_counts, unit_counts, starts, st.integers(0, 1000))
def test_splittable_usage_costs_the_same_split_or_whole(
    plan: Plan,
    service: tuple[ServiceKind, int],
    first: int,
    second: int,
    start: datetime,
    before: int,
) -> None:
    assert all(r.splittable for r in plan.versions[0].rates)
    whole = rate(usage(service, first + second, start), plan, cycle_units_before=before)
    # Time runs on for seconds; octets are all used at the usage start's band.
    later = start + timedelta(seconds=first) if service[0] is ServiceKind.VOICE else start
    head = rate(usage(service, first, start), plan, cycle_units_before=before)
    tail = rate(usage(service, second, later), plan, cycle_units_before=before + first)
    assert head.cost_micros + tail.cost_micros == whole.cost_micros


@SETTINGS
@given(
    plans,
    services,
    unit_counts,
    st.one_of(st.just(-1), st.integers(0, 4000)),
    st.one_of(st.just(VALIDITY_S * 1_000_000), st.integers(0, VALIDITY_S * 1_000_000)),
    starts,
    st.integers(0, 1000),
)
def test_reservation_covers_any_use_of_its_units_in_the_window(
    plan: Plan,
    service: tuple[ServiceKind, int],
    granted: int,
    used: int,
    delay_us: int,
    start: datetime,
    before: int,
) -> None:
    used = granted if used < 0 else min(used, granted)  # -1: all of it
    reserved = reservation_price(usage(service, granted, start), plan)
    later = start + timedelta(microseconds=delay_us)
    actual = rate(usage(service, used, later), plan, cycle_units_before=before)
    assert actual.cost_micros <= reserved


@SETTINGS
@given(plans, services, unit_counts, st.integers(0, 3_000_000), starts)
def test_affordable_units_is_the_largest_n_within_budget(
    plan: Plan, service: tuple[ServiceKind, int], units: int, budget: int, start: datetime
) -> None:
    n = affordable_units(usage(service, units, start), plan, budget)
    assert 0 <= n <= units
    assert reservation_price(usage(service, n, start), plan) <= budget
    if n < units:
        assert reservation_price(usage(service, n + 1, start), plan) > budget


@SETTINGS
@given(plans, services, unit_counts, st.integers(0, 500), starts)
def test_reservation_is_monotone_in_units(
    plan: Plan, service: tuple[ServiceKind, int], units: int, more: int, start: datetime
) -> None:
    small = reservation_price(usage(service, units, start), plan)
    assert small <= reservation_price(usage(service, units + more, start), plan)


@SETTINGS
@given(plans, st.integers(1, 4000), st.integers(0, 4000), st.sampled_from(BOUNDARIES))
def test_reservation_covers_voice_running_past_a_band_change_after_validity(
    plan: Plan, granted: int, into: int, boundary: datetime
) -> None:
    """The window of time units runs ``granted`` seconds past the validity: a band starting
    there must be priced in. The usage starts when the validity ends and crosses the boundary."""
    start = boundary - timedelta(seconds=VALIDITY_S + 1 + into % granted)
    voice = (ServiceKind.VOICE, 100)
    reserved = reservation_price(usage(voice, granted, start), plan)
    later = start + timedelta(seconds=VALIDITY_S)
    assert rate(usage(voice, granted, later), plan).cost_micros <= reserved


@SETTINGS
@given(
    rate_specs(),
    rate_specs(),
    services,
    st.integers(1, 4000),
    st.integers(-VALIDITY_S, 2 * VALIDITY_S),
    st.integers(0, VALIDITY_S),
    st.integers(0, 4000),
    starts,
)
def test_reservation_covers_a_new_version_taking_effect_in_the_window(
    spec1: dict[str, Any],
    spec2: dict[str, Any],
    service: tuple[ServiceKind, int],
    granted: int,
    change_s: int,
    delay_s: int,
    used: int,
    start: datetime,
) -> None:
    change = start + timedelta(seconds=change_s)
    if change <= datetime(2026, 1, 1, tzinfo=UTC):
        return
    plan = build(spec1, (change, spec2))
    reserved = reservation_price(usage(service, granted, start), plan)
    later = start + timedelta(seconds=delay_s)
    actual = rate(usage(service, min(used, granted), later), plan)
    assert actual.cost_micros <= reserved
