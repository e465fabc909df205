"""Rating rules, one at a time: increments, fees, minimum and maximum, tiers, rounding, prefixes,
zones, time-band splits (boundaries, midnight, weekend, holiday, DST, time zone), versions and
every error path."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml

from billing.protocol import ServiceKind
from billing.rating import RatedItem, Rating, RatingError, UsageEvent, destination_group, rate
from billing.tariff import Plan, load_plan

VOICE, SMS, DATA, CONTENT = (
    ServiceKind.VOICE,
    ServiceKind.SMS,
    ServiceKind.DATA,
    ServiceKind.CONTENT,
)
# Thursday 2026-11-26, Europe/Paris is UTC+1: 10:00 local is peak, 21:00 local is off-peak.
PEAK = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
OFFPEAK = datetime(2026, 11, 26, 20, 0, tzinfo=UTC)


def voice_rate(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"id": "voice", "service": "voice", "rate_unit": 60, "price": "0.06"}
    return {**base, **kw}


def make_plan(
    rates: list[dict[str, Any]],
    *,
    tz: str = "Europe/Paris",
    bands: dict[str, Any] | None = None,
    holidays: list[str] | None = None,
    later: list[dict[str, Any]] | None = None,
) -> Plan:
    """A plan with voice (100), SMS (200), data (10, 20), content (300) and the given rates."""
    version: dict[str, Any] = {
        "version": 1,
        "effective_from": "2026-01-01T00:00:00+00:00",
        "currency": "EUR",
        "payment_mode": "prepaid",
        "consumption_order": ["prepaid"],
        "timezone": tz,
        "home_plmns": ["20801"],
        "holidays": holidays or [],
        "time_bands": bands
        or {
            "default": "offpeak",
            "bands": {
                "peak": [
                    {"days": ["mon", "tue", "wed", "thu", "fri"], "from": "08:00", "to": "20:00"}
                ]
            },
        },
        "destination_groups": {"national": ["33"], "mobile": ["336", "3370"], "uk": ["44"]},
        "roaming_zones": {"eu": ["262", "23415"], "world": ["*"]},
        "services": [
            {
                "service": "voice",
                "rating_groups": [100],
                "unit": "time_s",
                "default_quota": 300,
                "validity_time_s": 600,
            },
            {
                "service": "sms",
                "rating_groups": [200],
                "unit": "service_units",
                "default_quota": 1,
                "validity_time_s": 600,
                "credit_control": "free",
            },
            {
                "service": "data",
                "rating_groups": [10, 20],
                "unit": "total_octets",
                "default_quota": 1_000_000,
                "validity_time_s": 900,
                "credit_control": "free",
            },
            {
                "service": "content",
                "rating_groups": [300],
                "unit": "money_micros",
                "default_quota": 1_000_000,
                "validity_time_s": 900,
                "credit_control": "free",
            },
        ],
        "rates": rates,
    }
    d = {"plan_id": "t", "name": "Test", "versions": [version, *(later or [])]}
    return load_plan(yaml.safe_dump(d, sort_keys=False), source="test.yaml")


def voice(units: int, start: datetime = PEAK, dest: str | None = "33123", **kw: Any) -> UsageEvent:
    return UsageEvent(VOICE, units, start, 100, dest, **kw)


def cost(plan: Plan, usage: UsageEvent, **kw: Any) -> int:
    rating = rate(usage, plan, **kw)
    assert rating.cost_micros == sum(i.amount_micros for i in rating.items)
    assert rating.cost_micros >= 0
    return rating.cost_micros


# --- increments ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "step", "units", "charged"),
    [
        (60, 60, 1, 60),
        (60, 60, 60, 60),
        (60, 60, 61, 120),
        (60, 60, 120, 120),
        (60, 60, 121, 180),
        (30, 6, 1, 30),
        (30, 6, 30, 30),
        (30, 6, 31, 36),
        (30, 6, 36, 36),
        (30, 6, 37, 42),
        (1, 1, 1, 1),
        (1, 1, 61, 61),
        (60, 1, 59, 60),
        (60, 1, 61, 61),
    ],
)
def test_voice_increments(first: int, step: int, units: int, charged: int) -> None:
    plan = make_plan([voice_rate(initial_increment=first, subsequent_increment=step)])
    rating = rate(voice(units), plan)
    assert rating.items == (RatedItem("voice", "peak", units, charged, charged * 1000, "up"),)
    assert rating.charged_units == charged


@pytest.mark.parametrize(
    ("octets", "charged"),
    [(1, 1024), (1024, 1024), (1025, 2048), (1_048_576, 1_048_576), (1_048_577, 1_049_600)],
)
def test_data_blocks(octets: int, charged: int) -> None:
    plan = make_plan(
        [
            voice_rate(),
            {
                "id": "data",
                "service": "data",
                "rate_unit": 1_048_576,
                "price": "1.048576",
                "initial_increment": 1024,
                "subsequent_increment": 1024,
            },
        ]
    )
    rating = rate(UsageEvent(DATA, octets, PEAK, 10), plan)
    assert rating.charged_units == charged
    assert rating.cost_micros == charged  # 1.048576 per MiB = 1 micro per octet


def test_zero_units_cost_nothing_not_even_connect_fee_or_minimum() -> None:
    plan = make_plan([voice_rate(connect_fee="0.10", minimum_charge="0.50")])
    rating = rate(voice(0), plan)
    assert rating.cost_micros == 0 and rating.items == ()


def test_negative_units_are_rejected() -> None:
    with pytest.raises(RatingError) as info:
        rate(voice(-1), make_plan([voice_rate()]))
    assert info.value.field == "units"


# --- fees, minimum, maximum ------------------------------------------------------------------


def test_connect_fee_is_added_once_as_its_own_item() -> None:
    plan = make_plan(
        [voice_rate(connect_fee="0.10", initial_increment=60, subsequent_increment=60)]
    )
    rating = rate(voice(61), plan)
    assert rating.cost_micros == 100_000 + 120_000
    assert rating.items[0] == RatedItem("voice", "peak", 0, 0, 100_000, "none", "connect fee")


def test_minimum_charge_raises_short_usage_only() -> None:
    plan = make_plan([voice_rate(minimum_charge="0.05")])
    short = rate(voice(10), plan)
    assert short.cost_micros == 50_000
    assert short.items[-1] == RatedItem("voice", "peak", 0, 0, 40_000, "none", "minimum charge")
    assert cost(plan, voice(50)) == 50_000
    assert cost(plan, voice(51)) == 51_000
    assert "minimum charge" not in [i.note for i in rate(voice(51), plan).items]


def test_minimum_charge_includes_connect_fee() -> None:
    plan = make_plan([voice_rate(connect_fee="0.02", minimum_charge="0.05")])
    assert cost(plan, voice(10)) == 50_000
    assert cost(plan, voice(40)) == 60_000


def test_max_cost_caps_an_event_with_a_negative_adjustment() -> None:
    plan = make_plan([voice_rate(connect_fee="0.50", max_cost="2.00")])
    capped = rate(voice(3600), plan)
    assert capped.cost_micros == 2_000_000
    assert capped.items[-1].note == "max cost cap"
    assert capped.items[-1].amount_micros == 2_000_000 - (500_000 + 3_600_000)
    assert cost(plan, voice(1500)) == 2_000_000
    assert cost(plan, voice(1499)) == 1_999_000
    assert cost(plan, voice(1)) == 501_000


# --- tiers -----------------------------------------------------------------------------------


def tier_plan() -> Plan:
    return make_plan(
        [
            voice_rate(),
            {
                "id": "data",
                "service": "data",
                "rate_unit": 1000,
                "price": "0.010",
                "tiers": [{"from": 5000, "price": "0.004"}, {"from": 8000, "price": "0"}],
            },
        ]
    )


def data(units: int, rg: int = 10, start: datetime = PEAK, **kw: Any) -> UsageEvent:
    return UsageEvent(DATA, units, start, rg, **kw)


def test_tier_below_first_boundary() -> None:
    assert cost(tier_plan(), data(1000), cycle_units_before=0) == 10_000
    assert cost(tier_plan(), data(1000), cycle_units_before=4000) == 10_000


def test_usage_spanning_tiers_is_split_at_each_boundary() -> None:
    rating = rate(data(5000), tier_plan(), cycle_units_before=4000)
    assert [(i.charged_units, i.amount_micros, i.note) for i in rating.items] == [
        (1000, 10_000, "tier 0"),
        (3000, 12_000, "tier 1"),
        (1000, 0, "tier 2"),
    ]
    assert rating.cost_micros == 22_000


def test_usage_beyond_last_tier_uses_it() -> None:
    assert cost(tier_plan(), data(10_000), cycle_units_before=9000) == 0
    assert cost(tier_plan(), data(1000), cycle_units_before=5000) == 4000


def test_negative_cycle_position_is_rejected() -> None:
    with pytest.raises(RatingError) as info:
        rate(data(1), tier_plan(), cycle_units_before=-1)
    assert info.value.field == "cycle_units_before"


# --- rounding --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rounding", "units", "expected"),
    [
        ("up", 1, 2),
        ("down", 1, 1),
        ("half_up", 1, 2),
        ("half_even", 1, 2),
        ("up", 3, 5),
        ("down", 3, 4),
        ("half_up", 3, 5),
        ("half_even", 3, 4),
        ("up", 2, 3),
        ("down", 2, 3),
        ("half_up", 2, 3),
        ("half_even", 2, 3),
    ],
)
def test_each_rounding_mode(rounding: str, units: int, expected: int) -> None:
    # 0.000003 per 2 units: 1.5 micros per unit, so odd unit counts end in a half micro.
    plan = make_plan([voice_rate(rate_unit=2, price="0.000003", rounding=rounding)])
    rating = rate(voice(units), plan)
    assert rating.cost_micros == expected
    assert rating.items[0].rounding == rounding


def test_rounding_applies_once_to_the_whole_usage_across_parts() -> None:
    # 1/3 micro per unit: three tier pieces of 1 unit each would round up to 3 micros each way
    # if rounded per part; rounded once, 3 units cost exactly 1.
    plan = make_plan(
        [
            voice_rate(),
            {
                "id": "data",
                "service": "data",
                "rate_unit": 3,
                "price": "0.000001",
                "tiers": [{"from": 1, "price": "0.000001"}, {"from": 2, "price": "0.000001"}],
            },
        ]
    )
    rating = rate(data(3), plan)
    assert rating.cost_micros == 1
    assert [i.amount_micros for i in rating.items] == [1, 0, 0]


# --- destinations and zones ------------------------------------------------------------------


def dest_plan() -> Plan:
    return make_plan(
        [
            voice_rate(id="roam-eu", zones=["eu"], price="0.12"),
            voice_rate(id="roam-world", zones=["world"], price="1.20"),
            voice_rate(id="mobile", destination_groups=["mobile"], price="0.09"),
            voice_rate(id="uk", destination_groups=["uk"], price="0.30"),
            voice_rate(id="national", destination_groups=["national"], price="0.06"),
        ]
    )


@pytest.mark.parametrize(
    ("dest", "group", "rate_id"),
    [
        ("33123456", "national", "national"),
        ("33612345", "mobile", "mobile"),
        ("+33612345", "mobile", "mobile"),
        ("3370123", "mobile", "mobile"),
        ("3371123", "national", "national"),
        ("33", "national", "national"),
        ("3", None, None),
        ("4420", "uk", "uk"),
        ("999", None, None),
    ],
)
def test_longest_prefix_wins(dest: str, group: str | None, rate_id: str | None) -> None:
    plan = dest_plan()
    assert destination_group(plan.versions[0], dest) == group
    if rate_id is None:
        with pytest.raises(RatingError) as info:
            rate(voice(60, dest=dest), plan)
        assert info.value.field == "destination"
        assert repr(dest) in str(info.value) and "'home'" in str(info.value)
    else:
        rating = rate(voice(60, dest=dest), plan)
        assert rating.items[0].rate_id == rate_id and rating.destination_group == group


@pytest.mark.parametrize(
    ("plmn", "zone", "rate_id"),
    [
        (None, "home", "national"),
        ("20801", "home", "national"),
        ("26201", "eu", "roam-eu"),
        ("262-02", "eu", "roam-eu"),
        ("23415", "eu", "roam-eu"),
        ("23410", "world", "roam-world"),
        ("310260", "world", "roam-world"),
    ],
)
def test_roaming_zone_by_visited_network(plmn: str | None, zone: str, rate_id: str) -> None:
    rating = rate(voice(60, visited_plmn=plmn), dest_plan())
    assert (rating.zone, rating.items[0].rate_id) == (zone, rate_id)


def test_visited_network_in_no_zone_is_a_rating_error() -> None:
    plan = make_plan([voice_rate()])
    version = plan.versions[0]
    object.__getattribute__(version, "roaming_zones").pop("*")
    with pytest.raises(RatingError) as info:
        rate(voice(60, visited_plmn="31026"), plan)
    assert info.value.field == "visited_plmn" and "'31026'" in str(info.value)


def test_rate_without_destination_groups_matches_usage_without_destination() -> None:
    plan = make_plan([voice_rate(id="mobile", destination_groups=["mobile"]), voice_rate(id="any")])
    assert rate(voice(60, dest=None), plan).items[0].rate_id == "any"
    assert rate(voice(60, dest="336"), plan).items[0].rate_id == "mobile"


# --- services and errors ---------------------------------------------------------------------


def test_unknown_rating_group_names_the_group_and_plan() -> None:
    with pytest.raises(RatingError) as info:
        rate(UsageEvent(VOICE, 60, PEAK, 777), make_plan([voice_rate()]))
    assert info.value.field == "rating_group"
    assert "777" in str(info.value) and "'t'" in str(info.value)


def test_rating_group_of_another_service_is_rejected() -> None:
    with pytest.raises(RatingError) as info:
        rate(UsageEvent(VOICE, 60, PEAK, 10), make_plan([voice_rate()]))
    assert info.value.field == "service" and "data" in str(info.value)


def test_service_without_rate_is_a_rating_error() -> None:
    with pytest.raises(RatingError) as info:
        rate(UsageEvent(SMS, 1, PEAK, 200), make_plan([voice_rate()]))
    assert info.value.field == "destination" and "no sms rate" in str(info.value)


def test_naive_start_is_rejected() -> None:
    with pytest.raises(RatingError) as info:
        rate(voice(60, start=datetime(2026, 11, 26, 9)), make_plan([voice_rate()]))
    assert info.value.field == "start"


def test_usage_without_rating_group_uses_the_service_terms() -> None:
    rating = rate(UsageEvent(VOICE, 61, PEAK, None, "33"), make_plan([voice_rate()]))
    assert rating.cost_micros == 61_000


def test_sms_and_content_money_units() -> None:
    plan = make_plan(
        [
            voice_rate(),
            {"id": "sms", "service": "sms", "rate_unit": 1, "price": "0.05"},
            {"id": "content", "service": "content", "rate_unit": 1_000_000, "price": "1"},
        ]
    )
    assert cost(plan, UsageEvent(SMS, 3, PEAK, 200, "336")) == 150_000
    assert cost(plan, UsageEvent(CONTENT, 2_500_000, PEAK, 300)) == 2_500_000


def test_overlong_time_usage_is_rejected() -> None:
    with pytest.raises(RatingError) as info:
        rate(voice(32 * 86_400), make_plan([voice_rate()]))
    assert info.value.field == "units"


# --- time bands ------------------------------------------------------------------------------


def banded(first: int = 1, step: int = 1, **kw: Any) -> Plan:
    # Peak 0.12/min = 2000 micros/s; off-peak 0.06/min = 1000 micros/s.
    return make_plan(
        [
            voice_rate(
                price={"peak": "0.12", "offpeak": "0.06"},
                initial_increment=first,
                subsequent_increment=step,
            )
        ],
        **kw,
    )


def parts(rating: Rating) -> list[tuple[str, int, int]]:
    return [(i.band, i.units, i.charged_units) for i in rating.items]


def paris(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC) - timedelta(hours=1)  # winter: Paris = UTC+1


def test_band_by_local_time() -> None:
    plan = banded()
    assert parts(rate(voice(60, start=paris(2026, 11, 26, 7, 59, 0)), plan)) == [
        ("offpeak", 60, 60)
    ]
    assert parts(rate(voice(60, start=paris(2026, 11, 26, 8, 0, 0)), plan)) == [("peak", 60, 60)]
    assert parts(rate(voice(60, start=paris(2026, 11, 26, 19, 59, 0)), plan)) == [("peak", 60, 60)]
    assert parts(rate(voice(60, start=paris(2026, 11, 26, 20, 0, 0)), plan)) == [
        ("offpeak", 60, 60)
    ]


def test_split_at_band_boundary_with_per_second_increments() -> None:
    rating = rate(voice(90, start=paris(2026, 11, 26, 19, 59, 30)), banded())
    assert parts(rating) == [("peak", 30, 30), ("offpeak", 60, 60)]
    assert rating.cost_micros == 30 * 2000 + 60 * 1000


def test_split_slot_belongs_to_the_band_it_starts_in() -> None:
    # 60/60: the boundary falls 30 s into the first minute, which stays peak.
    rating = rate(voice(90, start=paris(2026, 11, 26, 19, 59, 30)), banded(60, 60))
    assert parts(rating) == [("peak", 60, 60), ("offpeak", 30, 60)]
    assert rating.cost_micros == 120_000 + 60_000
    # Whole-minute usage ending exactly at the boundary is not split.
    assert parts(rate(voice(60, start=paris(2026, 11, 26, 19, 59, 0)), banded(60, 60))) == [
        ("peak", 60, 60)
    ]


def test_split_into_peak_in_the_morning_with_30_6() -> None:
    rating = rate(voice(50, start=paris(2026, 11, 26, 7, 59, 50)), banded(30, 6))
    assert parts(rating) == [("offpeak", 30, 30), ("peak", 20, 24)]
    assert rating.cost_micros == 30 * 1000 + 24 * 2000


def test_weekend_has_no_peak_and_monday_morning_splits() -> None:
    plan = banded()
    saturday_noon = paris(2026, 11, 28, 12, 0, 0)
    assert parts(rate(voice(600, start=saturday_noon), plan)) == [("offpeak", 600, 600)]
    friday_evening = paris(2026, 11, 27, 19, 0, 0)
    assert parts(rate(voice(7200, start=friday_evening), plan)) == [
        ("peak", 3600, 3600),
        ("offpeak", 3600, 3600),
    ]
    monday = paris(2026, 11, 30, 7, 59, 0)
    assert parts(rate(voice(120, start=monday), plan)) == [("offpeak", 60, 60), ("peak", 60, 60)]


def test_midnight_split_between_different_bands() -> None:
    bands = {
        "default": "day",
        "bands": {
            "night": [
                {
                    "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
                    "from": "00:00",
                    "to": "06:00",
                }
            ]
        },
    }
    plan = make_plan([voice_rate(price={"day": "0.06", "night": "0.03"})], bands=bands)
    rating = rate(voice(120, start=paris(2026, 11, 26, 23, 59, 0)), plan)
    assert parts(rating) == [("day", 60, 60), ("night", 60, 60)]
    assert rating.cost_micros == 60_000 + 30_000


def test_midnight_within_one_band_is_not_a_split() -> None:
    rating = rate(voice(7200, start=paris(2026, 11, 26, 23, 0, 0)), banded())
    assert parts(rating) == [("offpeak", 7200, 7200)]


def test_holiday_is_off_peak_all_day() -> None:
    plan = banded(holidays=["2026-12-25"])
    assert rate(voice(60, start=paris(2026, 12, 24, 10, 0, 0)), plan).items[0].band == "peak"
    assert rate(voice(60, start=paris(2026, 12, 25, 10, 0, 0)), plan).items[0].band == "offpeak"
    across = rate(voice(120, start=paris(2026, 12, 25, 23, 59, 0)), plan)  # into Saturday
    assert parts(across) == [("offpeak", 120, 120)]
    into = rate(voice(120, start=paris(2026, 12, 24, 19, 59, 0)), plan)
    assert parts(into) == [("peak", 60, 60), ("offpeak", 60, 60)]


def test_holiday_windows_apply_on_holidays_only() -> None:
    bands = {
        "default": "offpeak",
        "bands": {
            "peak": [{"days": ["mon", "tue", "wed", "thu", "fri"], "from": "08:00", "to": "20:00"}],
            "festive": [{"days": ["holiday"], "from": "10:00", "to": "12:00"}],
        },
    }
    plan = make_plan(
        [voice_rate(price={"peak": "0.12", "offpeak": "0.06", "festive": "0"})],
        bands=bands,
        holidays=["2026-12-25"],
    )
    assert rate(voice(60, start=paris(2026, 12, 25, 11, 0, 0)), plan).cost_micros == 0
    assert rate(voice(60, start=paris(2026, 12, 25, 9, 0, 0)), plan).items[0].band == "offpeak"
    assert rate(voice(60, start=paris(2026, 12, 24, 11, 0, 0)), plan).items[0].band == "peak"


def test_time_zone_decides_the_band() -> None:
    instant = datetime(2026, 11, 26, 14, 0, tzinfo=UTC)  # 15:00 Paris, 09:00 New York, 23:00 Tokyo
    assert rate(voice(60, start=instant), banded()).items[0].band == "peak"
    assert rate(voice(60, start=instant), banded(tz="America/New_York")).items[0].band == "peak"
    assert rate(voice(60, start=instant), banded(tz="Asia/Tokyo")).items[0].band == "offpeak"
    early = datetime(2026, 11, 26, 12, 30, tzinfo=UTC)  # 07:30 New York
    assert rate(voice(60, start=early), banded(tz="America/New_York")).items[0].band == "offpeak"


def dst_plan() -> Plan:
    bands = {
        "default": "day",
        "bands": {"night": [{"days": ["sun"], "from": "00:00", "to": "02:30"}]},
    }
    return make_plan([voice_rate(price={"day": "0.06", "night": "0.03"})], bands=bands)


def test_dst_spring_forward_boundary_inside_the_gap() -> None:
    # 2026-03-29: 02:00 CET jumps to 03:00 CEST at 01:00Z; 02:30 local never happens, so night
    # ends at the jump.
    plan = dst_plan()
    start = datetime(2026, 3, 29, 0, 30, tzinfo=UTC)  # 01:30 CET
    rating = rate(voice(3600, start=start), plan)
    assert parts(rating) == [("night", 1800, 1800), ("day", 1800, 1800)]
    fresh = dst_plan()
    assert fresh.versions[0].bands.band_at(datetime(2026, 3, 29, 1, 0, tzinfo=UTC)) == "day"
    assert fresh.versions[0].bands.band_at(datetime(2026, 3, 29, 0, 59, 59, tzinfo=UTC)) == "night"


def test_dst_fall_back_repeats_the_hour() -> None:
    # 2026-10-25: 03:00 CEST falls back to 02:00 CET at 01:00Z; 02:00-02:30 happens twice.
    plan = dst_plan()
    start = datetime(2026, 10, 25, 0, 20, tzinfo=UTC)  # 02:20 CEST
    rating = rate(voice(3600, start=start), plan)
    assert parts(rating) == [("night", 600, 600), ("day", 1800, 1800), ("night", 1200, 1200)]
    assert rating.cost_micros == 600 * 500 + 1800 * 1000 + 1200 * 500
    table = dst_plan().versions[0].bands
    at = datetime(2026, 10, 25, 1, 29, 59, tzinfo=UTC)  # 02:29:59 CET, second pass
    assert table.band_at(at) == "night"
    assert table.band_at(at + timedelta(seconds=1)) == "day"


def test_band_lookup_is_the_same_with_a_warm_or_cold_cache() -> None:
    plan = dst_plan()
    table = plan.versions[0].bands
    base = datetime(2026, 10, 24, 22, 0, tzinfo=UTC)
    warm = [table.band_at(base + timedelta(minutes=7 * i)) for i in range(200)]
    cold = [
        dst_plan().versions[0].bands.band_at(base + timedelta(minutes=7 * i)) for i in range(200)
    ]
    assert warm == cold
    backwards = [table.band_at(base + timedelta(minutes=7 * i)) for i in reversed(range(200))]
    assert backwards == list(reversed(cold))


# --- versions --------------------------------------------------------------------------------


def versioned() -> Plan:
    return make_plan(
        [voice_rate()],
        later=[
            {
                "version": 2,
                "effective_from": "2026-06-01T00:00:00+02:00",
                "rates": [voice_rate(price="0.12")],
            },
        ],
    )


def test_rating_uses_the_version_effective_at_the_usage_start() -> None:
    plan = versioned()
    before = datetime(2026, 5, 31, 21, 59, 59, tzinfo=UTC)
    after = datetime(2026, 5, 31, 22, 0, tzinfo=UTC)
    assert rate(voice(60, start=before), plan).plan_version == 1
    assert cost(plan, voice(60, start=before)) == 60_000
    # The whole usage is rated under the version at its start, even when it runs past a change.
    assert cost(plan, voice(120, start=before)) == 120_000
    assert rate(voice(60, start=after), plan).plan_version == 2
    assert cost(plan, voice(60, start=after)) == 120_000


def test_at_overrides_which_version_applies() -> None:
    plan = versioned()
    early = datetime(2026, 2, 1, tzinfo=UTC)
    assert cost(plan, voice(60, start=early), at=datetime(2026, 7, 1, tzinfo=UTC)) == 120_000


def test_usage_before_the_first_version_is_a_rating_error() -> None:
    with pytest.raises(RatingError) as info:
        rate(voice(60, start=datetime(2025, 12, 31, tzinfo=UTC)), versioned())
    assert info.value.field == "at" and "no version effective" in str(info.value)
