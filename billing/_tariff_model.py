"""The validated, compiled tariff values: plans, versions, service terms, rates and bundles.

Everything here is produced by the loader (:mod:`billing._tariff_parse`) from a file that passed
validation, so the values are trusted: a ``PlanVersion`` always has a rate table, a band table, a
prefix index and a zone index ready for :mod:`billing.rating` to use without further checks.
Lookups that depend only on the version (which rate applies to a service, rating group,
destination group and zone) are memoised per version; the memo holds immutable values only.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import pairwise

from billing._tariff_bands import BandTable
from billing._tariff_errors import RatingError
from billing.money import Rounding
from billing.protocol import FinalUnitAction, PaymentMode, ServiceKind

HOME_ZONE = "home"
_UNKNOWN = object()  # "not memoised yet" (None is a memoised answer: no group)


@dataclass(frozen=True, slots=True)
class ServiceTerms:
    """How one service (selected by rating group or service identifier) is charged online."""

    service: ServiceKind
    rating_groups: tuple[int, ...]
    unit: str  # a billing.protocol.Units field name
    default_quota: int
    validity_time_s: int
    quota_threshold_percent: int
    final_unit_action: FinalUnitAction
    redirect_address: str | None
    credit_control: str  # "charged" | "free" | "denied"
    overuse: str  # "charge" | "cap"
    service_identifiers: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class BundleSpec:
    """An allowance provisioned as a Bucket: ``units`` of a service, optionally restricted to
    destination groups and rating groups (empty = any), valid ``validity_days`` from provisioning
    (``None`` = no expiry), consumed lowest ``priority`` first."""

    bundle_id: str
    service: ServiceKind
    units: int
    destination_groups: tuple[str, ...]
    rating_groups: tuple[int, ...]
    validity_days: int | None
    priority: int


@dataclass(frozen=True, slots=True)
class RateSpec:
    """A rate: the price of usage of one service, per ``rate_unit`` units, in increments.

    ``tier_starts[i]`` is the cycle volume (in charged units) from which ``tier_prices[i]`` applies
    (``tier_starts[0] == 0``); each tier maps every band of the version to micros per rate unit.
    Empty ``rating_groups`` / ``destination_groups`` / ``zones`` match anything.
    """

    rate_id: str
    service: ServiceKind
    rating_groups: tuple[int, ...]
    destination_groups: tuple[str, ...]
    zones: tuple[str, ...]
    rate_unit: int
    initial_increment: int
    subsequent_increment: int
    connect_fee_micros: int
    minimum_charge_micros: int
    max_cost_micros: int | None
    rounding: Rounding
    tier_starts: tuple[int, ...]
    tier_prices: tuple[dict[str, int], ...]
    band_sensitive: bool
    rounding_name: str = field(default="", init=False, compare=False, repr=False)
    top_price: int = field(default=0, init=False, compare=False, repr=False)
    top_by_band: dict[str, int] = field(default_factory=dict, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        # Derived once: the rounding's name for items, and the highest price of any tier (per
        # band and overall) for worst-case reservations.
        object.__setattr__(self, "rounding_name", self.rounding.value)
        object.__setattr__(self, "top_price", max(max(t.values()) for t in self.tier_prices))
        for band in self.tier_prices[0]:
            self.top_by_band[band] = max(t[band] for t in self.tier_prices)

    def __hash__(self) -> int:  # the price tables are dicts; equal rates share id and service
        return hash((self.rate_id, self.service.value, self.tier_starts))

    def charged_units(self, units: int) -> int:
        """``units`` rounded up to the increment grid: the initial increment, then subsequent
        increments. ``charged_units(0) == 0``; monotone; ``charged_units(n) >= n``."""
        first = self.initial_increment
        if units <= 0:
            return 0
        if units <= first:
            return first
        step = self.subsequent_increment
        return first + -(-(units - first) // step) * step

    @property
    def splittable(self) -> bool:
        """True when rating a usage in parts costs exactly the same as rating it whole: 1/1
        increments, no connect fee, minimum or cap, and every price a whole number of micros
        per unit (so no rounding ever happens)."""
        return (
            self.initial_increment == 1
            and self.subsequent_increment == 1
            and self.connect_fee_micros == 0
            and self.minimum_charge_micros == 0
            and self.max_cost_micros is None
            and all(p % self.rate_unit == 0 for tier in self.tier_prices for p in tier.values())
        )

    def matches(
        self, service: ServiceKind, rating_group: int | None, group: str | None, zone: str
    ) -> bool:
        return (
            self.service is service
            and (not self.rating_groups or rating_group in self.rating_groups)
            and (not self.destination_groups or group in self.destination_groups)
            and (not self.zones or zone in self.zones)
        )


@dataclass(frozen=True, slots=True)
class PlanVersion:
    """One effective-dated version of a plan: everything needed to rate and charge with it."""

    plan_id: str
    version: int
    effective_from: datetime
    currency: str
    payment_mode: PaymentMode
    consumption_order: tuple[str, ...]
    orphan_timeout_factor: int
    services: tuple[ServiceTerms, ...]
    bundles: tuple[BundleSpec, ...]
    rates: tuple[RateSpec, ...]
    timezone: str
    home_plmns: tuple[str, ...]
    destination_prefixes: dict[str, str]  # prefix -> destination group
    roaming_zones: dict[str, str]  # "MCC", "MCCMNC" or "*" -> zone
    bands: BandTable
    _prefix_lengths: tuple[int, ...] = field(default=(), compare=False, repr=False)
    _terms_by_rg: dict[int, ServiceTerms] = field(default_factory=dict, compare=False, repr=False)
    _terms_by_si: dict[int, ServiceTerms] = field(default_factory=dict, compare=False, repr=False)
    _rate_memo: dict[tuple[str, int | None, str | None, str], RateSpec | None] = field(
        default_factory=dict, compare=False, repr=False
    )
    # destination -> its group (or None): a session's called number is looked up on every request
    _group_memo: dict[str, str | None] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        lengths = tuple(sorted({len(p) for p in self.destination_prefixes}, reverse=True))
        object.__setattr__(self, "_prefix_lengths", lengths)
        for terms in self.services:
            for rg in terms.rating_groups:
                self._terms_by_rg[rg] = terms
            for si in terms.service_identifiers:
                self._terms_by_si[si] = terms

    def __hash__(self) -> int:  # consistent with equality; the lookup dicts are not hashable
        return hash((self.plan_id, self.version, self.effective_from))

    def service_terms(
        self, rating_group: int | None, service_identifier: int | None
    ) -> ServiceTerms:
        """The terms of the service selected by rating group (else service identifier).

        Raises :class:`RatingError` (field ``rating_group``) when neither selects a service.
        """
        terms = None
        if rating_group is not None:
            terms = self._terms_by_rg.get(rating_group)
        if terms is None and service_identifier is not None:
            terms = self._terms_by_si.get(service_identifier)
        if terms is None:
            raise RatingError(
                "rating_group",
                f"plan {self.plan_id!r} version {self.version} has no service for rating group "
                f"{rating_group} / service identifier {service_identifier}",
            )
        return terms

    def terms_for_service(self, service: ServiceKind) -> ServiceTerms | None:
        """The first service terms of a kind (for usage that names no rating group)."""
        return next((t for t in self.services if t.service is service), None)

    def destination_group(self, destination: str | None) -> str | None:
        """The group of the longest matching prefix of ``destination`` (a leading ``+`` is
        ignored), or ``None`` when no prefix matches."""
        if not destination:
            return None
        memo = self._group_memo
        known = memo.get(destination, _UNKNOWN)
        if known is not _UNKNOWN:
            return known  # type: ignore[return-value]
        group = None
        prefixes = self.destination_prefixes
        digits = destination[1:] if destination[0] == "+" else destination
        for length in self._prefix_lengths:
            group = prefixes.get(digits[:length])
            if group is not None:
                break
        if len(memo) >= 4096:
            memo.clear()  # bounded: many distinct numbers just make it a small recent cache
        memo[destination] = group
        return group

    def zone(self, visited_plmn: str | None) -> str | None:
        """``home`` for no visited network or a home network; else the roaming zone of the exact
        MCC-MNC, else of its MCC, else the ``*`` zone; ``None`` if none applies."""
        if not visited_plmn or visited_plmn in self.home_plmns:
            return HOME_ZONE
        zones = self.roaming_zones
        plmn = visited_plmn.replace("-", "")
        return zones.get(plmn) or zones.get(plmn[:3]) or zones.get("*")

    def find_rate(
        self, service: ServiceKind, rating_group: int | None, group: str | None, zone: str
    ) -> RateSpec | None:
        """The first rate in file order matching service, rating group, group and zone."""
        key = (service._value_, rating_group, group, zone)  # Enum.__hash__ is slow Python
        memo = self._rate_memo
        if key in memo:
            return memo[key]
        found = next((r for r in self.rates if r.matches(service, rating_group, group, zone)), None)
        if len(memo) < 4096:
            memo[key] = found
        return found


@dataclass(frozen=True, slots=True)
class Plan:
    """A named plan and its versions, sorted by ``effective_from`` (strictly increasing)."""

    plan_id: str
    name: str
    description: str
    versions: tuple[PlanVersion, ...]
    source: str = field(default="", compare=False)  # where it was loaded from, for messages
    _starts: tuple[datetime, ...] = field(default=(), init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        # In UTC: comparing datetimes of different tzinfo objects is ~20x slower than of one.
        starts = tuple(v.effective_from.astimezone(UTC) for v in self.versions)
        if not starts or any(a >= b for a, b in pairwise(starts)):
            raise ValueError(f"plan {self.plan_id!r}: versions must be sorted by effective_from")
        object.__setattr__(self, "_starts", starts)

    def __hash__(self) -> int:
        return hash((self.plan_id, self._starts))

    def version_at(self, at: datetime) -> PlanVersion:
        """The version in force at ``at``: the last one with ``effective_from <= at``."""
        i = bisect_right(self._starts, at)
        if i:
            return self.versions[i - 1]
        versions = self.versions
        raise RatingError(
            "at",
            f"plan {self.plan_id!r} has no version effective at {at.isoformat()} "
            f"(first is effective from {versions[0].effective_from.isoformat()})",
        )
