"""Reading the per-version lists of a tariff: services, rates (with band prices and tiers) and
bundles, and the checks across them (unique ids and rating groups, rates that can never apply,
services without a rate)."""

from __future__ import annotations

from typing import Any

from billing._tariff_model import BundleSpec, RateSpec, ServiceTerms
from billing._tariff_reader import MISSING, Reader, join, kind
from billing.money import Rounding
from billing.protocol import FinalUnitAction, ServiceKind

UNITS_BY_SERVICE: dict[ServiceKind, tuple[str, ...]] = {
    ServiceKind.VOICE: ("time_s",),
    ServiceKind.SMS: ("service_units",),
    ServiceKind.DATA: ("total_octets", "input_octets", "output_octets"),
    ServiceKind.CONTENT: ("service_units", "money_micros"),
}


def read_service(r: Reader, value: object, path: str) -> ServiceTerms | None:
    """One ``services`` entry -> :class:`ServiceTerms` (unit consistent with the service)."""
    required = {"service", "rating_groups", "unit", "default_quota", "validity_time_s"}
    optional = {
        "service_identifiers",
        "quota_threshold_percent",
        "final_unit_action",
        "redirect_address",
        "credit_control",
        "overuse",
    }
    before = len(r.problems)
    spec = r.mapping(value, path, required, optional)
    if spec is None:
        return None
    p = path + "."
    service = r.choice(spec.get("service"), p + "service", ServiceKind)
    rgs = r.list_of(spec.get("rating_groups"), p + "rating_groups", lambda v, q: r.integer(v, q, 0))
    sids = r.list_of(
        spec.get("service_identifiers", []),
        p + "service_identifiers",
        lambda v, q: r.integer(v, q, 0),
    )
    unit = r.text(spec.get("unit"), p + "unit")
    if service is not None and unit is not None and unit not in UNITS_BY_SERVICE[service]:
        r.fail(
            p + "unit",
            f"{unit!r} is not a unit of {service} (use {', '.join(UNITS_BY_SERVICE[service])})",
        )
    quota = r.integer(spec.get("default_quota"), p + "default_quota", 1)
    validity = r.integer(spec.get("validity_time_s"), p + "validity_time_s", 1, 86_400)
    threshold = r.integer(
        spec.get("quota_threshold_percent", 0), p + "quota_threshold_percent", 0, 99
    )
    action = r.choice(
        spec.get("final_unit_action", "terminate"), p + "final_unit_action", FinalUnitAction
    )
    redirect = spec.get("redirect_address")
    if redirect is not None:
        redirect = r.text(redirect, p + "redirect_address")
    if action is FinalUnitAction.REDIRECT and not redirect:
        r.fail(p + "redirect_address", "is required when final_unit_action is redirect")
    control = r.word(
        spec.get("credit_control", "charged"), p + "credit_control", ("charged", "free", "denied")
    )
    overuse = r.word(spec.get("overuse", "charge"), p + "overuse", ("charge", "cap"))
    if rgs is not None and not rgs and not sids:
        r.fail(
            p + "rating_groups", "a service needs at least one rating group or service identifier"
        )
    if len(r.problems) > before:
        return None
    assert service and rgs is not None and sids is not None and unit and quota and validity
    assert threshold is not None and action and control and overuse
    return ServiceTerms(
        service=service,
        rating_groups=rgs,
        unit=unit,
        default_quota=quota,
        validity_time_s=validity,
        quota_threshold_percent=threshold,
        final_unit_action=action,
        redirect_address=redirect,
        credit_control=control,
        overuse=overuse,
        service_identifiers=sids,
    )


def check_services(
    r: Reader, services: tuple[ServiceTerms, ...] | None, path: str
) -> tuple[ServiceTerms, ...] | None:
    """Rating groups and service identifiers select one service each."""
    if services is None:
        return None
    if not services:
        r.fail(path, "must list at least one service")
        return None
    seen_rg: dict[int, int] = {}
    seen_si: dict[int, int] = {}
    ok = True
    for i, terms in enumerate(services):
        for rg in terms.rating_groups:
            if rg in seen_rg:
                r.fail(
                    f"{path}[{i}].rating_groups",
                    f"rating group {rg} is already used by services[{seen_rg[rg]}]",
                )
                ok = False
            seen_rg[rg] = i
        for si in terms.service_identifiers:
            if si in seen_si:
                r.fail(
                    f"{path}[{i}].service_identifiers",
                    f"service identifier {si} is already used by services[{seen_si[si]}]",
                )
                ok = False
            seen_si[si] = i
    return services if ok else None


_RATE_REQUIRED = {"id", "service", "rate_unit", "price"}
_RATE_OPTIONAL = {
    "rating_groups",
    "destination_groups",
    "zones",
    "initial_increment",
    "subsequent_increment",
    "connect_fee",
    "minimum_charge",
    "max_cost",
    "rounding",
    "tiers",
    "description",
}


def read_rate(
    r: Reader,
    value: object,
    path: str,
    bands: tuple[str, ...] | None,
    groups: set[str] | None,
    zones: set[str],
) -> RateSpec | None:
    """One ``rates`` entry -> :class:`RateSpec`: groups and zones must exist; a price names every
    band or none; tiers start above each other; the cap is not below the minimum."""
    before = len(r.problems)
    spec = r.mapping(value, path, _RATE_REQUIRED, _RATE_OPTIONAL)
    if spec is None:
        return None
    p = path + "."
    rate_id = r.name(spec.get("id"), p + "id")
    service = r.choice(spec.get("service"), p + "service", ServiceKind)
    rgs = r.list_of(
        spec.get("rating_groups", []), p + "rating_groups", lambda v, q: r.integer(v, q, 0)
    )
    dgs = r.list_of(spec.get("destination_groups", []), p + "destination_groups", r.name)
    if dgs is not None and groups is not None:
        for i, g in enumerate(dgs):
            if g not in groups:
                r.fail(f"{p}destination_groups[{i}]", f"unknown destination group {g!r}")
    zs = r.list_of(spec.get("zones", []), p + "zones", r.name)
    for i, z in enumerate(zs or ()):
        if z not in zones:
            r.fail(f"{p}zones[{i}]", f"unknown zone {z!r} (known: {', '.join(sorted(zones))})")
    unit = r.integer(spec.get("rate_unit"), p + "rate_unit", 1)
    first = r.integer(spec.get("initial_increment", 1), p + "initial_increment", 1)
    step = r.integer(spec.get("subsequent_increment", 1), p + "subsequent_increment", 1)
    connect = r.money(spec.get("connect_fee", "0"), p + "connect_fee")
    minimum = r.money(spec.get("minimum_charge", "0"), p + "minimum_charge")
    cap = r.money(spec["max_cost"], p + "max_cost") if spec.get("max_cost") is not None else None
    if cap is not None and minimum is not None and cap < minimum:
        r.fail(p + "max_cost", "must not be below minimum_charge")
    rounding = r.choice(spec.get("rounding", "up"), p + "rounding", Rounding)
    description = spec.get("description", "")
    if not isinstance(description, str):
        r.fail(p + "description", f"must be a string, got {kind(description)}")
    starts: list[int] = [0]
    prices: list[dict[str, int]] = []
    complete = True
    base = _price(r, spec.get("price"), p + "price", bands)
    if base is not None:
        prices.append(base)
    for i, tier in enumerate(r.items(spec.get("tiers", []), p + "tiers") or ()):
        q = f"{p}tiers[{i}]"
        t = r.mapping(tier, q, {"from", "price"}, set())
        if t is None:
            continue
        start = r.integer(t.get("from"), q + ".from", 1)
        if start is not None and start <= starts[-1]:
            r.fail(q + ".from", f"tiers must start above the previous tier's start ({starts[-1]})")
        tier_price = _price(r, t.get("price"), q + ".price", bands)
        if start is not None and tier_price is not None:
            starts.append(start)
            prices.append(tier_price)
        else:
            complete = False
    if len(r.problems) > before or base is None or not complete:
        return None  # a price depending on a bad time_bands section is reported there
    assert rate_id and service and rgs is not None and dgs is not None and zs is not None
    assert unit and first and step and connect is not None and minimum is not None and rounding
    sensitive = any(len(set(tier.values())) > 1 for tier in prices)
    return RateSpec(
        rate_id=rate_id,
        service=service,
        rating_groups=rgs,
        destination_groups=dgs,
        zones=zs,
        rate_unit=unit,
        initial_increment=first,
        subsequent_increment=step,
        connect_fee_micros=connect,
        minimum_charge_micros=minimum,
        max_cost_micros=cap,
        rounding=rounding,
        tier_starts=tuple(starts),
        tier_prices=tuple(prices),
        band_sensitive=sensitive,
    )


def _price(
    r: Reader, value: object, path: str, bands: tuple[str, ...] | None
) -> dict[str, int] | None:
    """A price is one amount for every band, or a mapping naming every band exactly."""
    if value is MISSING:
        return None
    if isinstance(value, dict):
        if bands is None:
            return None  # the time_bands section itself is wrong; reported there
        out: dict[str, int] = {}
        ok = True
        for band, amount in value.items():
            if band not in bands:
                r.fail(join(path, str(band)), f"unknown time band (known: {', '.join(bands)})")
                ok = False
                continue
            micros = r.money(amount, join(path, str(band)))
            if micros is None:
                ok = False
            else:
                out[band] = micros
        missing = [b for b in bands if b not in value]
        if missing:
            r.fail(path, f"no price for band(s) {', '.join(missing)}")
            ok = False
        return out if ok else None
    micros = r.money(value, path)
    if micros is None or bands is None:
        return None
    return dict.fromkeys(bands, micros)


def check_rates(
    r: Reader,
    rates: tuple[RateSpec, ...] | None,
    services: tuple[ServiceTerms, ...] | None,
    path: str,
) -> tuple[RateSpec, ...] | None:
    """Unique rate ids; no rate shadowed by an earlier one (first match wins); rating groups of
    the rate's own service; a rate for every charged service."""
    if rates is None:
        return None
    ok = True
    for i, rate in enumerate(rates):
        if any(x.rate_id == rate.rate_id for x in rates[:i]):
            r.fail(f"{path}[{i}].id", f"duplicate rate id {rate.rate_id!r}")
            ok = False
        for earlier in rates[:i]:
            if _covers(earlier, rate):
                r.fail(
                    f"{path}[{i}]",
                    f"rate {rate.rate_id!r} never applies: the earlier rate "
                    f"{earlier.rate_id!r} matches everything it matches (first match wins)",
                )
                ok = False
                break
        if services is not None:
            for j, rg in enumerate(rate.rating_groups):
                kinds = [s.service for s in services if rg in s.rating_groups]
                if kinds != [rate.service]:
                    r.fail(
                        f"{path}[{i}].rating_groups[{j}]",
                        f"rating group {rg} is not a {rate.service} service",
                    )
                    ok = False
    for k, terms in enumerate(services or ()):
        if terms.credit_control == "charged" and not any(x.service is terms.service for x in rates):
            r.fail(f"{path}", f"no rate for service {terms.service} (services[{k}] is charged)")
            ok = False
    return rates if ok else None


def _covers(a: RateSpec, b: RateSpec) -> bool:
    """True if every usage rate ``b`` matches is also matched by ``a``."""

    def dim(x: tuple[Any, ...], y: tuple[Any, ...]) -> bool:
        return not x or (bool(y) and set(y) <= set(x))

    return (
        a.service is b.service
        and dim(a.rating_groups, b.rating_groups)
        and dim(a.destination_groups, b.destination_groups)
        and dim(a.zones, b.zones)
    )


def read_bundle(
    r: Reader,
    value: object,
    path: str,
    groups: set[str] | None,
    services: tuple[ServiceTerms, ...] | None,
) -> BundleSpec | None:
    """One ``bundles`` entry -> :class:`BundleSpec`."""
    before = len(r.problems)
    spec = r.mapping(
        value,
        path,
        {"id", "service", "units"},
        {"destination_groups", "rating_groups", "validity_days", "priority", "description"},
    )
    if spec is None:
        return None
    p = path + "."
    bundle_id = r.name(spec.get("id"), p + "id")
    service = r.choice(spec.get("service"), p + "service", ServiceKind)
    units = r.integer(spec.get("units"), p + "units", 1)
    dgs = r.list_of(spec.get("destination_groups", []), p + "destination_groups", r.name)
    for i, g in enumerate(dgs or ()):
        if groups is not None and g not in groups:
            r.fail(f"{p}destination_groups[{i}]", f"unknown destination group {g!r}")
    rgs = r.list_of(
        spec.get("rating_groups", []), p + "rating_groups", lambda v, q: r.integer(v, q, 0)
    )
    for i, rg in enumerate(rgs or ()):
        kinds = [s.service for s in services or () if rg in s.rating_groups]
        if services is not None and service is not None and kinds != [service]:
            r.fail(f"{p}rating_groups[{i}]", f"rating group {rg} is not a {service} service")
    days = spec.get("validity_days")
    if days is not None:
        days = r.integer(days, p + "validity_days", 1, 3660)
    priority = r.integer(spec.get("priority", 0), p + "priority", 0)
    if len(r.problems) > before:
        return None
    assert bundle_id and service and units and dgs is not None and rgs is not None
    assert priority is not None
    return BundleSpec(bundle_id, service, units, dgs, rgs, days, priority)
