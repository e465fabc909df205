"""Granting and charging quota against one account: buckets first, then money (prepaid, credit).

This is the arithmetic the session and event flows share. A :class:`Funds` value describes how one
request may spend its account (from the plan's consumption order and the account's payment mode);
:func:`reserve` grants units and holds what pays for them, :func:`release` gives a hold back, and
:func:`charge` debits reported usage.

Invariants kept (asserted):
- a grant's money hold is the worst-case price of its units (``rating.reservation_price``) and
  never exceeds what is available, so concurrent sessions on one account can never be granted
  more than it covers;
- expired buckets are never reserved nor charged (usability is checked at the usage's start);
- with a capped policy (every prepaid account, or a service whose overuse is ``cap``) a charge
  never takes the balance below its floor: what cannot be covered is reported, not charged.

Consumption order: ``bundles`` (when listed) are used before money (a plan stating otherwise is
refused, :func:`order_problem`); money is one pool whose floor is 0, or ``-credit_limit`` when
credit may be used (see :func:`billing.accounts.money_floor`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from billing.accounts import Poster, available_micros, consumption_key
from billing.protocol import PaymentMode, ServiceKind
from billing.rating import (
    UsageEvent,
    affordable_units,
    next_tariff_switch,
    reservation_price,
    usage_cost,
)
from billing.state import Account, Bucket, EntryKind, Reservation, ShardState
from billing.tariff import Plan, PlanVersion, ServiceTerms

_ONE_SECOND = timedelta(seconds=1)
# id(plan version) -> what charging derives from that version (which holds the version itself, so
# the id cannot be reused while the entry exists)
_PROFILES: dict[int, VersionProfile] = {}
_SWITCH_HORIZON = timedelta(hours=6)
# (plan id, service) -> (plan, s0, horizon, first switch in (s0, horizon) or None): one answer of
# rating.next_tariff_switch over a long window, reused while it still decides a shorter one.
# Memos are bounded (cleared when large) and hold immutable tariff values only.
_SWITCHES: dict[tuple[str, ServiceKind], tuple[Plan, datetime, datetime, datetime | None]] = {}
# (plan id, service, s0, rating group, destination, visited network, units) -> (plan, price)
_PRICES: dict[tuple[object, ...], tuple[Plan, int]] = {}
# validity seconds -> timedelta, and (service, year, month) -> tier counter key: small immutable
# values rebuilt per request otherwise.
_SPANS: dict[int, timedelta] = {}
_COUNTER_KEYS: dict[tuple[ServiceKind, int, int], str] = {}
# Enum members bound once: a member looked up on its class costs ~60 ns in Python 3.11.
_PREPAID = PaymentMode.PREPAID
_RATED_ONLY = PaymentMode.RATED_ONLY
_DEBIT = EntryKind.DEBIT
_BUCKET_DEBIT = EntryKind.BUCKET_DEBIT
_POSTPAID = PaymentMode.POSTPAID
_HYBRID = PaymentMode.HYBRID


@dataclass(frozen=True, slots=True)
class VersionProfile:
    """What charging derives from one plan version, computed once per version (not per request).

    ``order_problem``: why its consumption order cannot be honoured (:func:`order_problem`);
    ``bundles``/``money``/``credit``: the order lists bundles / some money / postpaid credit;
    ``tiered``: the services it prices with volume tiers (a cycle counter is kept for them);
    ``orphan_span``: silence after which a session is an orphan (factor x longest validity).
    """

    version: PlanVersion
    order_problem: str | None
    bundles: bool
    money: bool
    credit: bool
    tiered: frozenset[ServiceKind]
    orphan_span: timedelta


def version_profile(version: PlanVersion) -> VersionProfile:
    """The :class:`VersionProfile` of ``version`` (memoised per version object)."""
    known = _PROFILES.get(id(version))
    if known is not None and known.version is version:
        return known
    order = version.consumption_order
    longest = max((t.validity_time_s for t in version.services), default=3600)
    profile = VersionProfile(
        version=version,
        order_problem=order_problem(order),
        bundles="bundles" in order,
        money="prepaid" in order or "credit" in order,
        credit="credit" in order,
        tiered=frozenset(r.service for r in version.rates if len(r.tier_starts) > 1),
        orphan_span=timedelta(seconds=version.orphan_timeout_factor * longest),
    )
    if len(_PROFILES) > 4096:
        _PROFILES.clear()
    _PROFILES[id(version)] = profile
    return profile


@dataclass(slots=True)
class Funds:
    """How one request may spend one account, resolved once per request."""

    state: ShardState
    key: str  # the request's idempotency key
    account: Account
    plan: Plan
    version: PlanVersion
    destination: str | None
    visited_plmn: str | None
    floor: int
    use_buckets: bool
    use_money: bool
    rated_only: bool
    profile: VersionProfile
    _group: str | None = None
    _group_known: bool = False
    # The last bucket_candidates answer and its (service, rating group): one request asks for
    # the same candidates to charge reported usage and then to reserve the next grant.
    _candidates: list[Bucket] | None = None
    _candidates_service: ServiceKind | None = None
    _candidates_group: int | None = None

    @property
    def destination_group(self) -> str | None:
        if not self._group_known:
            self._group = self.version.destination_group(self.destination)
            self._group_known = True
        return self._group

    def capped(self, terms: ServiceTerms) -> bool:
        """True when usage beyond what is available is reported instead of charged."""
        return self.account.payment_mode is _PREPAID or terms.overuse == "cap"

    def tiered(self, service: ServiceKind) -> bool:
        """True when a rate of ``service`` has volume tiers, so a cycle counter is kept."""
        return service in self.profile.tiered

    def bucket_candidates(self, service: ServiceKind, rating_group: int | None) -> list[Bucket]:
        """The account's buckets for this service, rating group and the request's destination
        group, in consumption order, whether usable now or not (see :func:`matching_buckets`).

        Kept for the request: within one step no bucket is added or removed, and what selects a
        bucket here (its service, rating groups, destination groups, priority, expiry) never
        changes; only its units do, and those are read by the caller.
        """
        found = self._candidates
        if (
            found is not None
            and self._candidates_service is service
            and self._candidates_group == rating_group
        ):
            return found
        found = []
        ids = self.state.buckets_by_account.get(self.account.account_id)
        if ids:
            buckets = self.state.buckets
            for bucket_id in ids:
                bucket = buckets[bucket_id]
                if bucket.service is not service:
                    continue
                if bucket.rating_groups and rating_group not in bucket.rating_groups:
                    continue
                groups = bucket.destination_groups
                if groups and self.destination_group not in groups:
                    continue
                found.append(bucket)
            if len(found) > 1:
                found.sort(key=consumption_key)
        self._candidates = found
        self._candidates_service = service
        self._candidates_group = rating_group
        return found


def order_problem(order: tuple[str, ...]) -> str | None:
    """Why this consumption order cannot be honoured, or ``None``.

    Money is one pool (prepaid down to 0, then credit down to the limit), so the supported orders
    use bundles, when listed, before money; a plan spending money before its bundles is refused
    with this message rather than charged in a different order than it states. Computed once
    per plan version (:func:`version_profile`).
    """
    return _order_problem(order)


def _order_problem(order: tuple[str, ...]) -> str | None:
    if "bundles" in order:
        first_money = min(
            (order.index(m) for m in ("prepaid", "credit") if m in order), default=None
        )
        if first_money is not None and first_money < order.index("bundles"):
            return f"consumption order {list(order)} spends money before bundles: not supported"
    return None


def funds_for(
    state: ShardState,
    key: str,
    account: Account,
    plan: Plan,
    version: PlanVersion,
    destination: str | None,
    visited_plmn: str | None,
) -> Funds:
    """How the request with idempotency ``key`` may spend ``account`` under ``version``."""
    return spending(state, key, account, plan, version_profile(version), destination, visited_plmn)


def spending(
    state: ShardState,
    key: str,
    account: Account,
    plan: Plan,
    profile: VersionProfile,
    destination: str | None,
    visited_plmn: str | None,
) -> Funds:
    """:func:`funds_for` with the version's profile already at hand (one per request).

    The floor is :func:`billing.accounts.money_floor`: ``-credit_limit`` for a postpaid account,
    or a hybrid one whose order names credit; else 0.
    """
    mode = account.payment_mode
    rated_only = mode is _RATED_ONLY
    return Funds(  # positional, in field order: this runs for every request
        state,
        key,
        account,
        plan,
        profile.version,
        destination,
        visited_plmn,
        -account.credit_limit_micros
        if mode is _POSTPAID or (mode is _HYBRID and profile.credit)
        else 0,
        profile.bundles and not rated_only and account.account_id in state.buckets_by_account,
        profile.money,
        rated_only,
        profile,
    )


def matching_buckets(
    funds: Funds, service: ServiceKind, rating_group: int | None, at: datetime
) -> list[Bucket]:
    """The account's buckets usable at ``at`` for this usage, in consumption order."""
    found = []
    for bucket in funds.bucket_candidates(service, rating_group):
        expires_at = bucket.expires_at
        if (expires_at is not None and at >= expires_at) or at < bucket.valid_from:
            continue  # not usable at ``at``: expired units are never used
        found.append(bucket)
    return found


def reserve(
    funds: Funds, terms: ServiceTerms, rating_group: int, wanted: int, now: datetime
) -> tuple[Reservation, int]:
    """Grant up to ``wanted`` units, holding bucket units first and then their worst-case price.

    Returns the reservation and its validity time in whole seconds (it expires that long after
    ``now``). The grant may be smaller than ``wanted`` (down to 0) when the account cannot cover
    more. A rated-only account is granted ``wanted`` and holds nothing. Raises ``RatingError``
    before changing anything when the usage cannot be priced.
    """
    service = terms.service
    takes: list[tuple[Bucket, int]] = []
    left = wanted
    if funds.use_buckets and left:
        for bucket in matching_buckets(funds, service, rating_group, now):
            free = bucket.units - bucket.reserved_units
            if free > 0:
                take = free if free < left else left
                takes.append((bucket, take))
                left -= take
                if not left:
                    break
    money = 0
    account = funds.account
    if left:
        if funds.rated_only:
            left = 0
        elif funds.use_money:
            budget = available_micros(account, funds.floor)
            money = worst_price(funds, terms, rating_group, left, now)
            affordable = left
            if money > budget:  # only then search for what the budget covers
                usage = UsageEvent(
                    service, left, now, rating_group, funds.destination, funds.visited_plmn
                )
                affordable = affordable_units(usage, funds.plan, budget, at=now)
                money = (
                    worst_price(funds, terms, rating_group, affordable, now) if affordable else 0
                )
            assert 0 <= money <= budget, "a hold must fit what is available"
            left -= affordable
    validity = terms.validity_time_s
    held: dict[str, int] = {}
    pending = funds.state.pending
    for bucket, take in takes:
        bucket.reserved_units += take
        held[bucket.bucket_id] = take
        pending.buckets[bucket.bucket_id] = bucket
        if bucket.expires_at is not None:
            until = int((bucket.expires_at - now) / _ONE_SECOND)
            validity = min(validity, max(until, 1))
    if money:
        account.reserved_micros += money
        assert account.reserved_micros <= account.balance_micros - funds.floor, (
            "reservations exceed what is available"
        )
        pending.accounts[account.account_id] = account
    reservation = Reservation(  # positional, in field order: one per grant
        rating_group, service, wanted - left, money, held, now + _span(validity), now
    )
    return reservation, validity


def release(state: ShardState, account: Account, reservation: Reservation) -> None:
    """Give back what a reservation holds (money and bucket units); it moves no balance."""
    pending = state.pending
    if reservation.money_micros:
        account.reserved_micros -= reservation.money_micros
        assert account.reserved_micros >= 0, "released more money than was held"
        pending.accounts[account.account_id] = account
        reservation.money_micros = 0
    if reservation.bucket_units:
        for bucket_id, units in reservation.bucket_units.items():
            bucket = state.buckets.get(bucket_id)
            if bucket is None:
                continue  # not held in memory (swept or not loaded): nothing to give back
            bucket.reserved_units -= units
            assert bucket.reserved_units >= 0, "released more units than were held"
            pending.buckets[bucket_id] = bucket
        reservation.bucket_units = {}


def _span(seconds: int) -> timedelta:
    """``timedelta(seconds=seconds)``, shared for the few validity times plans use."""
    span = _SPANS.get(seconds)
    if span is None:
        span = timedelta(seconds=seconds)
        if len(_SPANS) > 4096:
            _SPANS.clear()
        _SPANS[seconds] = span
    return span


def _counter_key(service: ServiceKind, at: datetime) -> str:
    """``"<service>:<YYYY-MM>"`` of the calendar month (UTC) of ``at``."""
    utc = at if at.tzinfo is UTC else at.astimezone(UTC)
    memo = (service, utc.year, utc.month)
    key = _COUNTER_KEYS.get(memo)
    if key is None:
        key = f"{service.value}:{utc:%Y-%m}"
        if len(_COUNTER_KEYS) > 4096:
            _COUNTER_KEYS.clear()
        _COUNTER_KEYS[memo] = key
    return key


@dataclass(slots=True)
class Priced:
    """Reported usage priced but not yet applied: bucket units to consume, then money."""

    takes: list[tuple[Bucket, int]]
    cost_micros: int
    money_units: int
    counter_after: int  # the service's cycle tier counter after this usage; -1 when untiered
    counter_key: str = ""  # "<service>:<YYYY-MM>": the calendar month (UTC) of the usage


def price_usage(
    funds: Funds, terms: ServiceTerms, rating_group: int, parts: list[tuple[int, datetime]]
) -> Priced:
    """Price usage ``parts`` (units, start) without changing anything.

    Bucket units usable at a part's start (and not held by sessions) cover it first; the rest is
    rated at the part's own start (``rating.usage_cost``: the total of ``rating.rate``), so usage before and after a tariff switch gets its own rate.
    Raises ``RatingError`` when a part cannot be rated.
    """
    service = terms.service
    account = funds.account
    tiered = not funds.rated_only and funds.tiered(service)
    counter_key = ""
    counter = 0
    if tiered and parts:
        counter_key = _counter_key(service, parts[0][1])
        counter = account.usage_counters.get(counter_key, 0)
    takes: list[tuple[Bucket, int]] = []
    taken: dict[str, int] = {}
    cost = 0
    money_units = 0
    advance = 0  # charged units rated so far, for the cycle tier counter
    for units, start in parts:
        left = units
        if funds.use_buckets and left:
            for bucket in matching_buckets(funds, service, rating_group, start):
                free = bucket.units - bucket.reserved_units - taken.get(bucket.bucket_id, 0)
                if free > 0:
                    take = free if free < left else left
                    takes.append((bucket, take))
                    taken[bucket.bucket_id] = taken.get(bucket.bucket_id, 0) + take
                    left -= take
                    if not left:
                        break
        if left:
            usage = UsageEvent(
                service, left, start, rating_group, funds.destination, funds.visited_plmn
            )
            price, charged = usage_cost(
                usage, funds.plan, at=start, cycle_units_before=counter + advance
            )
            assert price >= 0, "a price is never negative"
            cost += price
            money_units += left
            if tiered:
                advance += charged
    return Priced(takes, cost, money_units, counter + advance if tiered else -1, counter_key)


def apply_usage(
    funds: Funds, poster: Poster, terms: ServiceTerms, rating_group: int, priced: Priced
) -> tuple[int, int]:
    """Debit priced usage: its bucket units, then its cost in money.

    Returns ``(charged_micros, uncharged_micros)``: uncharged is the cost a capped balance (or a
    plan that spends no money) could not cover; it is reported, never charged below the floor.
    A rated-only account is charged nothing and its cost is reported as charged (priced only).
    """
    cost = priced.cost_micros
    if funds.rated_only:
        return cost, 0
    account = funds.account
    for bucket, take in priced.takes:
        poster.units(account, bucket, _BUCKET_DEBIT, -take, rating_group=rating_group)
    capped = funds.capped(terms)
    if not funds.use_money:
        charged = 0
    elif capped:
        free = available_micros(account, funds.floor)
        charged = cost if cost <= free else free
    else:
        charged = cost
    if charged:
        poster.money(account, _DEBIT, -charged, rating_group=rating_group)
    if account.payment_mode is _PREPAID:
        assert account.balance_micros >= funds.floor, "a prepaid balance went below its floor"
    if priced.counter_after >= 0 and priced.money_units:
        counters = account.usage_counters
        if len(counters) > 1 or priced.counter_key not in counters:
            prefix = terms.service.value + ":"
            for stale in [k for k in counters if k.startswith(prefix) and k != priced.counter_key]:
                del counters[stale]  # a new month: the cycle's tiers start again
        counters[priced.counter_key] = priced.counter_after
    return charged, cost - charged


def charge(
    funds: Funds,
    poster: Poster,
    terms: ServiceTerms,
    rating_group: int,
    parts: list[tuple[int, datetime]],
) -> tuple[int, int]:
    """Price and debit reported usage; see :func:`price_usage` and :func:`apply_usage`."""
    priced = price_usage(funds, terms, rating_group, parts)
    return apply_usage(funds, poster, terms, rating_group, priced)


def _steady_since(
    plan: Plan, service: ServiceKind, start: datetime, until: datetime
) -> tuple[datetime, datetime | None]:
    """Refresh the memo for ``(plan, service)`` so it decides ``(start, until)``; return its
    ``s0`` and its first switch (or None).

    The memo holds one answer of ``rating.next_tariff_switch`` over a long window
    ``(s0, s0 + 6 h)``: its first switch (or none). No switch lies in ``(s0, first)``.
    """
    key = (plan.plan_id, service)
    known = _SWITCHES.get(key)
    if known is not None and known[0] is plan:
        _, since, horizon, first = known
        if since <= start and (start < first if first is not None else until <= horizon):
            return since, first
    horizon = max(start + _SWITCH_HORIZON, until)
    first = next_tariff_switch(plan, service, start, horizon)
    if len(_SWITCHES) > 4096:
        _SWITCHES.clear()
    _SWITCHES[key] = (plan, start, horizon, first)
    return start, first


def tariff_switch(
    plan: Plan, service: ServiceKind, start: datetime, until: datetime
) -> datetime | None:
    """``rating.next_tariff_switch(plan, service, start, until)``, memoised per plan and service.

    While ``start`` stays at or after the memo's ``s0`` and before its first switch (or, with no
    switch, while ``until`` stays inside its window) the answer for ``(start, until)`` follows
    exactly, because no switch lies in ``(s0, first)``.
    """
    first = _steady_since(plan, service, start, until)[1]
    return first if first is not None and start < first < until else None


def worst_price(
    funds: Funds, terms: ServiceTerms, rating_group: int, units: int, now: datetime
) -> int:
    """``rating.reservation_price`` of ``units`` granted at ``now``, memoised while no tariff
    switch can reach the grant's window.

    When no switch lies in ``(now, now + validity + units (time) + 2 s)``, the rate of every
    usage the grant may cover is the one in force since the memo's ``s0``, so the worst case of
    ``units`` for the same rating group, destination and visited network is the same number as
    for any earlier grant in that steady stretch; it is computed once per stretch.
    """
    plan = funds.plan
    service = terms.service
    span = terms.validity_time_s + (units if terms.unit == "time_s" else 0) + 2
    until = now + _span(span)
    since, first = _steady_since(plan, service, now, until)
    steady = first is None or first >= until
    key = (plan.plan_id, service, since, rating_group, funds.destination, funds.visited_plmn, units)
    if steady:
        known = _PRICES.get(key)
        if known is not None and known[0] is plan:
            return known[1]
    usage = UsageEvent(service, units, now, rating_group, funds.destination, funds.visited_plmn)
    price = reservation_price(usage, plan, at=now)
    if steady:
        if len(_PRICES) > 65536:
            _PRICES.clear()
        _PRICES[key] = (plan, price)
    return price
