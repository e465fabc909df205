"""The compiled band table against a brute-force reading of the rules (band of the local wall
time), over time zones with DST (including Lord Howe's 30-minute shift), holidays and the
segment cache in any order of queries."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from billing._tariff_bands import DAY_NAMES, HOLIDAY, BandTable

ZONES = ["Europe/Paris", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata", "UTC"]
HOLIDAYS = frozenset({date(2026, 12, 25), date(2026, 4, 5), date(2026, 10, 4)})
WINDOWS = {
    "peak": ((0, 8 * 3600, 20 * 3600), (1, 8 * 3600, 20 * 3600), (4, 8 * 3600, 19 * 3600)),
    "night": tuple((d, 0, 2 * 3600 + 1800) for d in (6, HOLIDAY)),
    "late": ((5, 22 * 3600, 24 * 3600), (HOLIDAY, 23 * 3600, 23 * 3600 + 60)),
}
# Instants around the DST changes of the zones above, and anywhere in 2026.
DST_DAYS = [
    datetime(2026, 3, 8, tzinfo=UTC),
    datetime(2026, 3, 29, tzinfo=UTC),
    datetime(2026, 4, 4, 14, tzinfo=UTC),
    datetime(2026, 10, 3, 15, tzinfo=UTC),
    datetime(2026, 10, 25, tzinfo=UTC),
    datetime(2026, 11, 1, tzinfo=UTC),
]
TRANSITIONS = [
    datetime(2026, 3, 29, 1, 0, tzinfo=UTC),  # Paris
    datetime(2026, 10, 25, 1, 0, tzinfo=UTC),
    datetime(2026, 3, 8, 7, 0, tzinfo=UTC),  # New York
    datetime(2026, 11, 1, 6, 0, tzinfo=UTC),
    datetime(2026, 4, 4, 15, 0, tzinfo=UTC),  # Lord Howe, 30 minutes
    datetime(2026, 10, 3, 15, 30, tzinfo=UTC),
]
instants = st.one_of(
    st.builds(
        lambda t, s: t + timedelta(seconds=s),
        st.sampled_from(TRANSITIONS),
        st.integers(-4 * 3600, 4 * 3600),
    ),
    st.builds(
        lambda d, s: d + timedelta(microseconds=s),
        st.sampled_from(DST_DAYS),
        st.integers(0, 36 * 3600 * 1_000_000),
    ),
    st.datetimes(
        min_value=datetime(2026, 1, 1), max_value=datetime(2026, 12, 31), timezones=st.just(UTC)
    ),
)


def reference(tz: ZoneInfo, at: datetime) -> str:
    local = at.astimezone(tz)
    day = HOLIDAY if local.date() in HOLIDAYS else local.weekday()
    sec = local.hour * 3600 + local.minute * 60 + local.second
    for band, spans in WINDOWS.items():
        if any(d == day and lo <= sec < hi for d, lo, hi in spans):
            return band
    return "offpeak"


def table(zone: str) -> BandTable:
    return BandTable(tz=ZoneInfo(zone), default_band="offpeak", windows=WINDOWS, holidays=HOLIDAYS)


@settings(derandomize=True, max_examples=300, deadline=None)
@given(st.sampled_from(ZONES), st.lists(instants, min_size=1, max_size=8))
def test_band_at_matches_the_local_wall_time_rule(zone: str, ats: list[datetime]) -> None:
    compiled = table(zone)
    tz = ZoneInfo(zone)
    for at in ats:  # one table, so the cache is exercised by queries in any order
        start, end, band = compiled.segment(at)
        assert start <= at < end
        assert band == reference(tz, at)
        assert reference(tz, start) == band
        assert reference(tz, end - timedelta(microseconds=1)) == band
        step = timedelta(minutes=5)
        probe = start + step
        for _ in range(600):  # the whole segment has that band (probed every 5 minutes)
            if probe >= end:
                break
            assert reference(tz, probe) == band, (start, probe, end)
            probe += step


@settings(derandomize=True, max_examples=100, deadline=None)
@given(st.sampled_from(ZONES), instants, st.integers(1, 3 * 86_400))
def test_switches_list_every_band_change(zone: str, start: datetime, span_s: int) -> None:
    compiled = table(zone)
    tz = ZoneInfo(zone)
    until = start + timedelta(seconds=span_s)
    changes = compiled.switches(start, until)
    assert changes[0] == (start, reference(tz, start))
    for (a, band_a), (b, band_b) in pairwise(changes):
        assert a < b < until and band_a != band_b
        assert reference(tz, b) == band_b
        assert reference(tz, b - timedelta(microseconds=1)) == band_a


def test_day_names_cover_the_week_and_holidays() -> None:
    assert DAY_NAMES[HOLIDAY] == "holiday" and len(DAY_NAMES) == 8


def test_constant_table_has_one_band_forever() -> None:
    flat = BandTable(tz=ZoneInfo("UTC"), default_band="all", windows={}, holidays=frozenset())
    assert flat.constant and flat.band_at(datetime(2026, 1, 1, tzinfo=UTC)) == "all"
    assert flat.switches(datetime(2026, 1, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC)) == [
        (datetime(2026, 1, 1, tzinfo=UTC), "all")
    ]
