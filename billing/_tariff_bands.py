"""Time bands: which named band (e.g. ``peak``/``offpeak``) is in force at an instant.

A band table is compiled once per plan version: for each day type (Monday..Sunday, and
``holiday`` for the dates listed as holidays) a sorted list of segment starts (seconds after local
midnight) and the band of each segment. The band at an instant is the band of its *local wall
time* in the tariff's IANA time zone.

:meth:`BandTable.segment` returns an interval ``[start, end)`` around an instant in which
the band cannot change. Invariant: a segment never spans a UTC-offset change (a DST transition),
so wall time runs monotonically inside it; segments ending in a DST gap end at the transition, and
a wall time that occurs twice (fall back) is in force twice. The two most recent segments are
cached, which makes the common case (consecutive usages in the same band, or a usage crossing
one boundary) a few comparisons. Segments are not maximal across midnight or DST changes; callers
merge neighbouring segments of the same band.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

DAY_NAMES: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun", "holiday")
HOLIDAY = 7
SECONDS_PER_DAY = 86_400
_Segment = tuple[datetime, datetime, str]
_FAR_PAST = datetime(1, 1, 2, tzinfo=UTC)
_FAR_FUTURE = datetime(9999, 12, 30, tzinfo=UTC)


class BandTable:
    """The compiled time-band rules of one plan version (immutable after construction)."""

    __slots__ = ("_cache", "_days", "bands", "constant", "default_band", "holidays", "tz")

    def __init__(
        self,
        *,
        tz: ZoneInfo,
        default_band: str,
        windows: Mapping[str, tuple[tuple[int, int, int], ...]],
        holidays: frozenset[date],
    ) -> None:
        """Build the table. ``windows`` maps band -> ((day_type, from_s, to_s), ...); overlaps
        between different bands must have been rejected by the loader."""
        self.tz = tz
        self.default_band = default_band
        self.holidays = holidays
        self.bands: tuple[str, ...] = (
            default_band,
            *sorted(b for b in windows if b != default_band),
        )
        days: list[tuple[tuple[int, ...], tuple[str, ...]]] = []
        for day in range(len(DAY_NAMES)):
            cuts: list[tuple[int, int, str]] = []
            for band, spans in windows.items():
                cuts.extend((lo, hi, band) for d, lo, hi in spans if d == day)
            starts: list[int] = [0]
            names: list[str] = [default_band]
            points = sorted({0, SECONDS_PER_DAY} | {c[0] for c in cuts} | {c[1] for c in cuts})
            for lo, hi in pairwise(points):
                band = next((b for a, z, b in cuts if a <= lo and hi <= z), default_band)
                if band == names[-1]:
                    continue
                if starts[-1] == lo:
                    names[-1] = band
                else:
                    starts.append(lo)
                    names.append(band)
            days.append((tuple(starts), tuple(names)))
        self._days = tuple(days)
        self.constant = all(len(names) == 1 and names[0] == default_band for _, names in days)
        empty = (_FAR_PAST, _FAR_FUTURE if self.constant else _FAR_PAST, default_band)
        # The two most recent segments (a usage crossing a boundary needs both), replaced as one
        # tuple so a reader never sees half an update.
        self._cache: tuple[_Segment, _Segment] = (empty, empty)

    def _key(self) -> tuple[object, ...]:
        return (self.tz.key, self.default_band, self._days, self.holidays)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BandTable) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"BandTable(tz={self.tz.key!r}, bands={self.bands!r})"

    def band_at(self, at: datetime) -> str:
        """The band in force at the aware instant ``at``."""
        if self.constant:
            return self.default_band
        return self.segment(at)[2]

    def segment(self, at: datetime) -> tuple[datetime, datetime, str]:
        """``(start, end, band)`` with ``start <= at < end``: the band is ``band`` throughout."""
        recent, previous = self._cache
        if recent[0] <= at < recent[1]:
            return recent
        if previous[0] <= at < previous[1]:
            return previous
        found = self._segment(at)
        self._cache = (found, recent)
        return found

    def _segment(self, at: datetime) -> tuple[datetime, datetime, str]:
        tz = self.tz
        local = at.astimezone(tz)
        offset = local.utcoffset()
        day = local.date()
        starts, names = self._days[HOLIDAY if day in self.holidays else local.weekday()]
        sec = local.hour * 3600 + local.minute * 60 + local.second
        i = bisect_right(starts, sec) - 1
        wall = local.replace(tzinfo=None)
        midnight = datetime(day.year, day.month, day.day)
        end_s = starts[i + 1] if i + 1 < len(starts) else SECONDS_PER_DAY
        # With the offset of ``at`` constant, wall time maps linearly onto instants.
        start = at - (wall - (midnight + timedelta(seconds=starts[i])))
        end = at + ((midnight + timedelta(seconds=end_s)) - wall)
        if end.astimezone(tz).utcoffset() != offset:
            end = _transition(at, end, tz)
        if start.astimezone(tz).utcoffset() != offset:
            start = _transition(start, at, tz)
        return (start, end, names[i])

    def switches(self, start: datetime, until: datetime) -> list[tuple[datetime, str]]:
        """The band at ``start`` and every band change in ``(start, until)``, merged so that two
        consecutive entries never name the same band. Bounded by the caller's window."""
        if self.constant:
            return [(start, self.default_band)]
        out: list[tuple[datetime, str]] = []
        t = start
        while t < until:
            _, end, band = self.segment(t)
            if not out or out[-1][1] != band:
                out.append((t, band))
            t = end
        return out


def _transition(lo: datetime, hi: datetime, tz: ZoneInfo) -> datetime:
    """The first whole-second instant in ``(lo, hi]`` whose UTC offset differs from ``lo``'s.

    Precondition: the offsets at ``lo`` and ``hi`` differ. Binary search, about 17 steps per day.
    """
    base = lo.replace(microsecond=0)  # offsets change on whole seconds
    offset = base.astimezone(tz).utcoffset()
    delta = hi - base
    a = 0  # seconds after base: offset unchanged
    b = delta.days * SECONDS_PER_DAY + delta.seconds + (1 if delta.microseconds else 0)
    while b - a > 1:
        mid = (a + b) // 2
        if (base + timedelta(seconds=mid)).astimezone(tz).utcoffset() == offset:
            a = mid
        else:
            b = mid
    return base + timedelta(seconds=b)
