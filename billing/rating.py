"""The rating engine: the price of a usage under a plan, with an itemised breakdown.

Rules, applied in this order by :func:`rate` (integer arithmetic only):

1. The plan version is the one effective at ``at`` (default: the usage start); the whole usage is
   rated under that one version.
2. The service terms come from the rating group; the destination group is the group of the
   longest matching prefix; the zone is ``home`` without a visited network (or on a home network),
   else the roaming zone of the visited MCC-MNC. The rate is the first rate of the version, in
   file order, matching service, rating group, destination group and zone.
3. The units are rounded up to the increment grid: the initial increment, then subsequent
   increments (60/60, 30/6, 1/1 for voice seconds; blocks of octets for data).
4. Time bands (time-based units only, i.e. ``time_s``): the increment grid is anchored at the
   usage start and every increment slot is priced at the band in force at the instant the slot
   *starts*. So a usage crossing a band boundary is split at the end of the slot that contains
   the boundary, each part priced at its own band's rate; a slot never has two prices. Other
   units are priced at the band in force at the usage start.
5. Tiers: charged units are placed after ``cycle_units_before`` charged units already used in the
   cycle (the caller's counter, advanced by :attr:`Rating.charged_units`); each part is priced
   at the tier its position falls in, so splitting a usage at a tier boundary changes nothing.
6. Amount = sum over parts of charged units x price per rate unit / rate unit, rounded once for
   the whole usage with the rate's rounding (each item shows its share of the rounded total, so
   items always sum to the cost); plus the connect fee; raised to the minimum charge; capped at
   the maximum cost (the cap appears as a negative adjustment item). The cost is never negative.

:func:`reservation_price` is the worst case for units used any time in the grant's validity
window (highest band and tier price the window can reach, any version taking effect in it), so
``rate(...) <= reservation_price(...)`` for every placement of those units in the window; and
:func:`affordable_units` inverts it exactly. Price enquiry uses :func:`rate` itself.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from billing._frozen import fast_init
from billing._tariff_errors import RatingError
from billing._tariff_model import Plan, PlanVersion, RateSpec, ServiceTerms
from billing.money import divide
from billing.protocol import ServiceKind

__all__ = [
    "MAX_TIME_UNITS",
    "RatedItem",
    "Rating",
    "RatingError",
    "UsageEvent",
    "affordable_units",
    "destination_group",
    "next_tariff_switch",
    "rate",
    "reservation_price",
    "usage_cost",
]

MAX_TIME_UNITS = 31 * 86_400  # longest time-based usage rated in one event (bounded work)
_MAX_SWITCH_STEPS = 4000
_MAX_WINDOW = timedelta(seconds=MAX_TIME_UNITS + 2 * 86_400)  # validity is at most a day


@fast_init
@dataclass(frozen=True, slots=True)
class UsageEvent:
    """Usage to price: ``units`` of the service's unit (seconds, octets, events, micros)."""

    service: ServiceKind
    units: int
    start: datetime
    rating_group: int | None
    destination: str | None = None
    visited_plmn: str | None = None


@fast_init
@dataclass(frozen=True, slots=True)
class RatedItem:
    """One line of a rating: ``units`` used, ``charged_units`` after increments, priced by
    ``rate_id`` in ``band``. Adjustment lines (connect fee, minimum, cap) have no units."""

    rate_id: str
    band: str
    units: int
    charged_units: int
    amount_micros: int
    rounding: str
    note: str = ""


@fast_init
@dataclass(frozen=True, slots=True)
class Rating:
    """The price of a usage: ``cost_micros`` equals the sum of the items' amounts, and is >= 0."""

    cost_micros: int
    items: tuple[RatedItem, ...]
    plan_id: str
    plan_version: int
    destination_group: str | None
    zone: str | None
    service: ServiceKind

    @property
    def charged_units(self) -> int:
        """Units after increments: what a cycle tier counter should advance by."""
        return sum(item.charged_units for item in self.items)


def destination_group(plan_version: PlanVersion, destination: str | None) -> str | None:
    """The destination group of ``destination`` (longest prefix wins), or ``None``."""
    return plan_version.destination_group(destination)


def _resolve(
    usage: UsageEvent, version: PlanVersion
) -> tuple[RateSpec, ServiceTerms | None, str | None, str]:
    """-> (rate, terms, destination group, zone); RatingError naming what does not resolve."""
    rg = usage.rating_group
    terms = (
        version.service_terms(rg, None)
        if rg is not None
        else version.terms_for_service(usage.service)
    )
    if terms is not None and terms.service is not usage.service:
        raise RatingError(
            "service",
            f"rating group {rg} is a {terms.service} service in plan {version.plan_id!r}, "
            f"not {usage.service}",
        )
    group = version.destination_group(usage.destination)
    zone = version.zone(usage.visited_plmn)
    if zone is None:
        raise RatingError(
            "visited_plmn",
            f"visited network {usage.visited_plmn!r} is in no roaming zone of plan "
            f"{version.plan_id!r} version {version.version}",
        )
    spec = version.find_rate(usage.service, rg, group, zone)
    if spec is None:
        raise RatingError(
            "destination",
            f"plan {version.plan_id!r} version {version.version} has no {usage.service} rate "
            f"for destination {usage.destination!r} (group {group}) in zone {zone!r}"
            + (f", rating group {rg}" if rg is not None else ""),
        )
    return spec, terms, group, zone


def _check(usage: UsageEvent) -> None:
    if usage.start.tzinfo is None:
        raise RatingError("start", "usage start must be an aware datetime (with a UTC offset)")
    if usage.units < 0:
        raise RatingError("units", f"units must not be negative, got {usage.units}")


def _priced_parts(
    usage: UsageEvent, plan: Plan, at: datetime | None, cycle_units_before: int
) -> tuple[PlanVersion, RateSpec, str | None, str, int, list[tuple[str, int]]]:
    """Rules 1-4 of the module docstring, shared by :func:`rate` and :func:`usage_cost`:
    ``(version, rate, destination group, zone, charged units, band parts)``; no parts for zero
    units. Raises :class:`RatingError`."""
    start = usage.start
    units = usage.units
    if start.tzinfo is None or units < 0:
        _check(usage)
    if cycle_units_before < 0:
        raise RatingError("cycle_units_before", f"must not be negative, got {cycle_units_before}")
    version = plan.version_at(start if at is None else at)
    spec, terms, group, zone = _resolve(usage, version)
    if units == 0:
        return version, spec, group, zone, 0, []
    timed = terms.unit == "time_s" if terms is not None else usage.service is ServiceKind.VOICE
    if timed and units > MAX_TIME_UNITS:
        raise RatingError("units", f"time usage of {units}s exceeds {MAX_TIME_UNITS}s per event")
    charged = spec.charged_units(units)
    table = version.bands
    if timed and spec.band_sensitive and not table.constant:
        _, seg_end, band = table.segment(start)
        delta = seg_end - start
        if delta.days * 86_400 + delta.seconds >= units:  # ends in the band it starts in
            return version, spec, group, zone, charged, [(band, charged)]
        return (
            version,
            spec,
            group,
            zone,
            charged,
            _band_parts(spec, table.segment, start, units, charged),
        )
    return version, spec, group, zone, charged, [(table.band_at(start), charged)]


def rate(
    usage: UsageEvent, plan: Plan, *, at: datetime | None = None, cycle_units_before: int = 0
) -> Rating:
    """Price ``usage`` under ``plan`` (module docstring: the rules). Raises :class:`RatingError`.

    Zero units cost nothing (no connect fee, no minimum): nothing was used.
    """
    version, spec, group, zone, charged, parts = _priced_parts(usage, plan, at, cycle_units_before)
    if not parts:
        return Rating(0, (), plan.plan_id, version.version, group, zone, usage.service)
    units = usage.units
    rid = spec.rate_id
    items: list[RatedItem] = []
    if len(parts) == 1 and len(spec.tier_starts) == 1:  # the common case: one band, one tier
        band = parts[0][0]
        rated = divide(charged * spec.tier_prices[0][band], spec.rate_unit, spec.rounding)
        items.append(RatedItem(rid, band, units, charged, rated, spec.rounding_name))
    else:
        rated = _tiered(spec, parts, units, cycle_units_before, items)
    cost = rated
    connect = spec.connect_fee_micros
    if connect:
        cost += connect
        items.insert(0, RatedItem(rid, parts[0][0], 0, 0, connect, "none", "connect fee"))
    minimum = spec.minimum_charge_micros
    if cost < minimum:
        items.append(RatedItem(rid, parts[0][0], 0, 0, minimum - cost, "none", "minimum charge"))
        cost = minimum
    cap = spec.max_cost_micros
    if cap is not None and cost > cap:
        items.append(RatedItem(rid, parts[-1][0], 0, 0, cap - cost, "none", "max cost cap"))
        cost = cap
    return Rating(cost, tuple(items), plan.plan_id, version.version, group, zone, usage.service)


def usage_cost(
    usage: UsageEvent, plan: Plan, *, at: datetime | None = None, cycle_units_before: int = 0
) -> tuple[int, int]:
    """``(cost_micros, charged_units)`` of ``rate(usage, plan, at=..., cycle_units_before=...)``,
    without building the itemised :class:`Rating` (charging keeps only these two numbers).

    Same rules, same arithmetic in the same order: the rounded usage amount, plus the connect
    fee, raised to the minimum charge, capped at the maximum cost. Raises :class:`RatingError`.
    """
    _, spec, _, _, charged, parts = _priced_parts(usage, plan, at, cycle_units_before)
    if not parts:
        return 0, 0
    if len(parts) == 1 and len(spec.tier_starts) == 1:  # the common case: one band, one tier
        rated = divide(charged * spec.tier_prices[0][parts[0][0]], spec.rate_unit, spec.rounding)
    else:
        rated = _tiered(spec, parts, usage.units, cycle_units_before, [])
    cost = rated + spec.connect_fee_micros
    if cost < spec.minimum_charge_micros:
        cost = spec.minimum_charge_micros
    cap = spec.max_cost_micros
    if cap is not None and cost > cap:
        cost = cap
    return cost, charged


def _band_parts(
    spec: RateSpec,
    segment: Callable[[datetime], tuple[datetime, datetime, str]],
    start: datetime,
    units: int,
    charged: int,
) -> list[tuple[str, int]]:
    """Split the charged-unit axis ``[0, charged)`` by band: ``[(band, end_offset), ...]``.

    A slot belongs to the band in force when it starts, so a band that begins at offset ``b``
    (seconds, rounded up) starts at ``charged_units(b)``, the end of the slot containing it.
    """
    end = start + timedelta(seconds=units)
    parts: list[tuple[str, int]] = []
    t = start
    band = ""
    while True:
        _, seg_end, band = segment(t)
        if parts and parts[-1][0] == band:
            parts.pop()
        if seg_end >= end:
            parts.append((band, charged))
            return parts
        delta = seg_end - start
        boundary = delta.days * 86_400 + delta.seconds + (1 if delta.microseconds else 0)
        cut = min(charged, spec.charged_units(boundary))
        if not parts or cut > parts[-1][1]:
            parts.append((band, cut))
        if cut >= charged:
            return parts
        t = seg_end


def _tiered(
    spec: RateSpec,
    parts: list[tuple[str, int]],
    units: int,
    before: int,
    items: list[RatedItem],
) -> int:
    """Price band parts across tiers; append one item per (band, tier) piece; return the rounded
    total. Rounds once for the whole usage: each item carries the increase of the rounded running
    total, so the items sum exactly to the total and are never negative."""
    starts = spec.tier_starts
    prices = spec.tier_prices
    unit = spec.rate_unit
    rounding = spec.rounding
    numerator = 0
    total = 0
    pos = 0
    for band, part_end in parts:
        while pos < part_end:
            k = bisect_right(starts, before + pos) - 1
            piece_end = part_end
            if k + 1 < len(starts):
                piece_end = min(part_end, starts[k + 1] - before)
            n = piece_end - pos
            numerator += n * prices[k][band]
            rounded = divide(numerator, unit, rounding)
            used = max(0, min(piece_end, units) - pos)
            note = f"tier {k}" if len(starts) > 1 else ""
            items.append(
                RatedItem(spec.rate_id, band, used, n, rounded - total, spec.rounding_name, note)
            )
            total = rounded
            pos = piece_end
    return total


# --- worst case for grants -------------------------------------------------------------------


# A price some usage in a grant's window may be rated at: (offset_s, grows, rate, price per rate
# unit). It is reachable when the window extends beyond ``offset_s`` seconds; ``grows``: the
# window grows with the units (a band change reached by the time units running on).
_Case = tuple[int, bool, RateSpec, int]


def _worst_cases(usage: UsageEvent, plan: Plan, at: datetime | None) -> tuple[list[_Case], int]:
    """Every (rate, price) a usage of up to ``usage.units`` may be rated at within the window
    ``[start, start + validity (+ units for time))``, and the validity in seconds.

    Fast path: one rate and the band at the start when no band change or new version can be
    reached (the segment cache makes that a few comparisons)."""
    start = usage.start
    units = usage.units
    if start.tzinfo is None or units < 0:
        _check(usage)
    ref = start if at is None else at
    version = plan.version_at(ref)
    spec, terms, _, _ = _resolve(usage, version)
    validity = terms.validity_time_s if terms is not None else 0
    timed = terms.unit == "time_s" if terms is not None else usage.service is ServiceKind.VOICE
    if timed and units > MAX_TIME_UNITS:
        raise RatingError("units", f"time usage of {units}s exceeds {MAX_TIME_UNITS}s")
    reach_s = validity + (units if timed else 0) + 1
    table = version.bands
    cases: list[_Case] = []
    if not spec.band_sensitive or table.constant:
        cases.append((0, False, spec, spec.top_price))
    else:
        _, seg_end, band = table.segment(start)
        if _floor_seconds(seg_end - start) >= reach_s:
            cases.append((0, False, spec, spec.top_by_band[band]))
        else:
            horizon = start + timedelta(seconds=reach_s)
            _add_cases(cases, spec, version, start, start, horizon, timed)
    if version is not plan.versions[-1]:
        horizon = start + timedelta(seconds=reach_s)
        version_limit = start + timedelta(seconds=validity)
        for later in plan.versions:
            if ref < later.effective_from <= version_limit:
                try:
                    later_spec, _, _, _ = _resolve(usage, later)
                except RatingError:
                    continue  # usage under that version fails to rate rather than cost more
                _add_cases(cases, later_spec, later, start, later.effective_from, horizon, timed)
    return cases, validity


def _add_cases(
    cases: list[_Case],
    spec: RateSpec,
    version: PlanVersion,
    start: datetime,
    since: datetime,
    horizon: datetime,
    timed: bool,
) -> None:
    """Add the cases of one version from ``since`` (its band at ``since`` and every band change
    before ``horizon``); past the bounds, the highest price of any band."""
    offset = _floor_seconds(since - start)
    table = version.bands
    if not spec.band_sensitive or table.constant or horizon - since > _MAX_WINDOW:
        cases.append((offset, False, spec, spec.top_price))
        return
    top = spec.top_by_band
    for i, (instant, band) in enumerate(table.switches(since, horizon)):
        if i >= _MAX_SWITCH_STEPS:
            cases.append((offset, False, spec, spec.top_price))
            return
        cases.append((_floor_seconds(instant - start), i > 0 and timed, spec, top[band]))


def _floor_seconds(delta: timedelta) -> int:
    return delta.days * 86_400 + delta.seconds


def _cost(spec: RateSpec, units: int, price: int) -> int:
    """What ``units`` cost at one price per rate unit, with the rate's fee, minimum and cap."""
    if units <= 0:
        return 0
    cost = spec.connect_fee_micros + divide(
        spec.charged_units(units) * price, spec.rate_unit, spec.rounding
    )
    cost = max(cost, spec.minimum_charge_micros)
    cap = spec.max_cost_micros
    return cost if cap is None or cost <= cap else cap


def _reserve(cases: list[_Case], validity: int, units: int) -> int:
    """The worst case for ``units`` among the cases reachable by a window of that many units.

    Usage may start until the validity ends. A band starting ``offset`` seconds in (rounded
    down) is reachable by a slot of time units when ``offset < validity + units`` (the last slot
    starts at most ``validity + units - 1`` seconds in); otherwise, and for a new version, when
    the usage can start in it: ``offset <= validity``."""
    if units <= 0:
        return 0
    worst = 0
    for offset_s, grows, spec, price in cases:
        if offset_s < validity + units if grows else offset_s <= validity:
            cost = _cost(spec, units, price)
            if cost > worst:
                worst = cost
    return worst


def reservation_price(usage: UsageEvent, plan: Plan, *, at: datetime | None = None) -> int:
    """The most ``usage.units`` can cost if used any time in the grant's validity window.

    Invariant: ``rate(u, plan, cycle_units_before=c).cost_micros <= reservation_price(usage)``
    for every usage ``u`` of at most ``usage.units`` units starting inside the window, for any
    cycle position ``c``, however time bands split it. So usage never exceeds its reservation.
    """
    cases, validity = _worst_cases(usage, plan, at)
    return _reserve(cases, validity, usage.units)


def affordable_units(
    usage: UsageEvent, plan: Plan, budget_micros: int, *, at: datetime | None = None
) -> int:
    """The largest ``n <= usage.units`` with ``reservation_price(n units) <= budget_micros``
    (0 if none). Exact: binary search on the same worst-case function, which is monotone in n.
    Time-based usage beyond :data:`MAX_TIME_UNITS` is a :class:`RatingError`, as for rating."""
    units = usage.units
    if units <= 0 or budget_micros < 0:
        _check(usage)
        return 0
    cases, validity = _worst_cases(usage, plan, at)
    if _reserve(cases, validity, units) <= budget_micros:
        return units
    lo, hi = 0, units  # invariant: cost(lo) <= budget < cost(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _reserve(cases, validity, mid) <= budget_micros:
            lo = mid
        else:
            hi = mid
    return lo


def next_tariff_switch(
    plan: Plan, service: ServiceKind, start: datetime, until: datetime
) -> datetime | None:
    """The first instant in ``(start, until)`` where the rate for ``service`` may change: a new
    plan version takes effect, or the time band changes and some rate of the service prices
    bands differently. ``None`` if there is none. Conservative: an earlier answer is harmless
    (the client just reports the parts separately)."""
    if until <= start:
        return None
    version = plan.version_at(start)
    found: datetime | None = None
    for later in plan.versions:
        if start < later.effective_from < until:
            found = later.effective_from
            break
    limit = found or until
    table = version.bands
    sensitive = any(r.service is service and r.band_sensitive for r in version.rates)
    if sensitive and not table.constant:
        _, end, band = table.segment(start)
        for _ in range(_MAX_SWITCH_STEPS):
            if end >= limit:
                return found
            _, next_end, next_band = table.segment(end)
            if next_band != band:
                return end
            end = next_end
        return end
    return found
