"""Tariffs: declarative, versioned plan files, the catalog of plans, and the built-in templates.

A plan is a YAML file (format ``billing-tariff/1``; see ``billing/templates/*.yaml`` for complete
examples) with effective-dated versions. Each version states the payment mode and consumption
order, the services (rating groups, units, quotas), destination groups (by prefix, longest prefix
wins), roaming zones (by visited MCC / MCC-MNC), time bands (weekday and time-of-day windows and
holidays in the tariff's IANA time zone), rates (price per rate unit in increments, connect fee,
minimum charge, maximum cost, volume tiers, rounding) and bundles.

Loading is all-or-nothing: :func:`load_plan` either returns a fully validated, compiled
:class:`Plan` or raises :class:`TariffError` listing every problem as ``<source>: <field.path>:
<what is wrong>``. Rating itself lives in :mod:`billing.rating`.

The format, key by key (``?`` = optional, with its default; every other key is an error)::

    format?: billing-tariff/1
    plan_id: lower-case id          name: text          description?: text
    versions:                       # effective_from strictly increasing
      - version: 1..                effective_from: ISO date-time with UTC offset
        # Every key below is required in the first version and inherited by later ones.
        currency: ISO 4217          payment_mode: prepaid | postpaid | hybrid | rated_only
        consumption_order: [bundles, prepaid, credit]   # a subset, in order of use
        timezone: IANA name         orphan_timeout_factor?: 2
        home_plmns?: ["20801"]      holidays?: ["2026-12-25"]      # day type "holiday"
        time_bands?:                # absent: one band named "all"
          default: offpeak          # in force wherever no window is
          bands: {peak: [{days: [mon..sun | holiday], from: "08:00", to: "20:00"}]}
        destination_groups?: {national: ["33"], mobile: ["336"]}  # longest prefix wins
        roaming_zones?: {eu: ["262", "23415"], world: ["*"]}      # MCC-MNC, then MCC, then *
        services:                   # how each rating group is charged online
          - {service: voice|sms|data|content, rating_groups: [100], unit: time_s,
             default_quota: 300, validity_time_s: 600, service_identifiers?: [],
             quota_threshold_percent?: 0, final_unit_action?: terminate, redirect_address?,
             credit_control?: charged | free | denied, overuse?: charge | cap}
        rates:                      # first match in this order wins
          - {id: voice-national, service: voice, rating_groups?: [], destination_groups?: [],
             zones?: [home | <zone>], rate_unit: 60, price: "0.10" | {<band>: "0.10", ...},
             initial_increment?: 1, subsequent_increment?: 1, connect_fee?: "0",
             minimum_charge?: "0", max_cost?: none, rounding?: up | down | half_up | half_even,
             tiers?: [{from: <cycle units>, price: ...}], description?: text}
        bundles?:
          - {id: minutes-500, service: voice, units: 30000, destination_groups?: [],
             rating_groups?: [], validity_days?: none, priority?: 0, description?: text}

Money is a quoted decimal string with at most 6 decimals (or a whole number), never a float.
Keys repeated in one mapping are errors; YAML anchors and merge keys (``<<: *rate``) may share
settings.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path

from billing._tariff_errors import RatingError, TariffError, TariffProblem
from billing._tariff_model import (
    HOME_ZONE,
    BundleSpec,
    Plan,
    PlanVersion,
    RateSpec,
    ServiceTerms,
)
from billing._tariff_parse import FORMAT, parse_plan
from billing.money import format_money

__all__ = [
    "FORMAT",
    "HOME_ZONE",
    "BundleSpec",
    "Catalog",
    "Plan",
    "PlanVersion",
    "RateSpec",
    "RatingError",
    "ServiceTerms",
    "TariffError",
    "TariffProblem",
    "builtin_catalog",
    "describe_plan",
    "load_plan",
    "load_plan_file",
    "template_names",
    "template_text",
]

MAX_TARIFF_BYTES = 1_000_000


def load_plan(text: str, *, source: str = "<text>") -> Plan:
    """Parse and validate a plan from YAML text; raise :class:`TariffError` listing every problem.

    ``source`` names the file in error messages.
    """
    if len(text) > MAX_TARIFF_BYTES:
        raise TariffError(
            [TariffProblem(source, "<file>", f"larger than {MAX_TARIFF_BYTES} bytes")]
        )
    return parse_plan(text, source)


def load_plan_file(path: str | os.PathLike[str]) -> Plan:
    """Load a plan from a file; the file name is the ``source`` of every problem reported."""
    name = os.fspath(path)
    try:
        text = Path(name).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TariffError([TariffProblem(name, "<file>", f"cannot read: {exc}")]) from None
    return load_plan(text, source=name)


@dataclass(frozen=True, slots=True)
class Catalog:
    """An immutable set of plans by id. :meth:`with_plan` returns a new catalog."""

    _plans: dict[str, Plan] = field(default_factory=dict)

    @staticmethod
    def of(*plans: Plan) -> Catalog:
        """A catalog of the given plans (a later plan with the same id replaces an earlier one)."""
        return Catalog({p.plan_id: p for p in plans})

    def get(self, plan_id: str) -> Plan:
        """The plan with this id; :class:`TariffError` naming the id if there is none."""
        plan = self._plans.get(plan_id)
        if plan is None:
            known = ", ".join(sorted(self._plans)) or "none"
            raise TariffError(
                [TariffProblem("catalog", "plan_id", f"unknown plan {plan_id!r} (known: {known})")]
            )
        return plan

    def __contains__(self, plan_id: object) -> bool:
        return plan_id in self._plans

    def plans(self) -> tuple[Plan, ...]:
        """All plans, sorted by id."""
        return tuple(self._plans[k] for k in sorted(self._plans))

    def with_plan(self, plan: Plan) -> Catalog:
        """A new catalog with ``plan`` added (replacing a plan of the same id)."""
        return Catalog({**self._plans, plan.plan_id: plan})


_TEMPLATES = ("payg", "postpaid-monthly", "hybrid", "iot-pool")


def template_names() -> list[str]:
    """The names of the built-in plan templates."""
    return list(_TEMPLATES)


def template_text(name: str) -> str:
    """The YAML source of a built-in template (to show, or to copy and edit)."""
    if name not in _TEMPLATES:
        raise TariffError(
            [
                TariffProblem(
                    "templates",
                    "name",
                    f"unknown template {name!r} (known: {', '.join(_TEMPLATES)})",
                )
            ]
        )
    return (
        resources.files("billing").joinpath("templates", f"{name}.yaml").read_text(encoding="utf-8")
    )


@cache
def builtin_catalog() -> Catalog:
    """The catalog of built-in templates (loaded and validated once per process)."""
    return Catalog.of(
        *(load_plan(template_text(n), source=f"billing/templates/{n}.yaml") for n in _TEMPLATES)
    )


def describe_plan(plan: Plan) -> str:
    """A readable multi-line summary of a plan: every version, its services, rates and bundles."""
    lines = [f"{plan.plan_id}: {plan.name}"]
    if plan.description:
        lines.append(f"  {plan.description.strip()}")
    for v in plan.versions:
        lines.append(
            f"  version {v.version}, effective from {v.effective_from.isoformat()} "
            f"({v.payment_mode}, {v.currency}, time zone {v.timezone})"
        )
        lines.append(f"    consumption order: {' -> '.join(v.consumption_order) or 'none'}")
        if len(v.bands.bands) > 1:
            lines.append(
                f"    time bands: {', '.join(v.bands.bands)} (default {v.bands.default_band})"
            )
        lines.extend(_describe_places(v))
        for s in v.services:
            groups = ", ".join(str(g) for g in s.rating_groups)
            lines.append(
                f"    service {s.service} (rating groups {groups}): unit {s.unit}, "
                f"default quota {s.default_quota}, validity {s.validity_time_s}s, {s.credit_control}"
            )
        for r in v.rates:
            lines.append(f"    rate {r.rate_id}: {_describe_rate(r, v.currency)}")
        for b in v.bundles:
            scope = ", ".join(b.destination_groups) or "any destination"
            days = f"{b.validity_days} days" if b.validity_days else "no expiry"
            lines.append(
                f"    bundle {b.bundle_id}: {b.units} {b.service} units ({scope}), {days}, "
                f"priority {b.priority}"
            )
    return "\n".join(lines)


def _describe_places(v: PlanVersion) -> list[str]:
    """Destination groups with their prefixes, and zones with their networks."""
    groups: dict[str, list[str]] = {}
    for prefix, group in v.destination_prefixes.items():
        groups.setdefault(group, []).append(prefix)
    zones: dict[str, list[str]] = {}
    for network, zone in v.roaming_zones.items():
        zones.setdefault(zone, []).append(network)
    lines = [f"    destinations {g}: {', '.join(sorted(p))}" for g, p in groups.items()]
    lines.append(f"    zone {HOME_ZONE}: {', '.join(v.home_plmns) or 'no home network listed'}")
    lines.extend(f"    zone {z}: {', '.join(sorted(n))}" for z, n in zones.items())
    return lines


def _describe_rate(r: RateSpec, currency: str) -> str:
    where = []
    if r.destination_groups:
        where.append("to " + "/".join(r.destination_groups))
    if r.zones:
        where.append("in " + "/".join(r.zones))
    if r.rating_groups:
        where.append("rating groups " + "/".join(map(str, r.rating_groups)))
    prices = []
    for start, tier in zip(r.tier_starts, r.tier_prices, strict=True):
        values = set(tier.values())
        if len(values) == 1:
            text = format_money(next(iter(values)), currency)
        else:
            text = ", ".join(f"{b} {format_money(p, currency)}" for b, p in tier.items())
        prices.append(text if start == 0 else f"from {start}: {text}")
    parts = [
        r.service.value,
        *where,
        f"{'; '.join(prices)} per {r.rate_unit}",
        f"increments {r.initial_increment}/{r.subsequent_increment}",
    ]
    if r.connect_fee_micros:
        parts.append(f"connect fee {format_money(r.connect_fee_micros, currency)}")
    if r.minimum_charge_micros:
        parts.append(f"minimum {format_money(r.minimum_charge_micros, currency)}")
    if r.max_cost_micros is not None:
        parts.append(f"max {format_money(r.max_cost_micros, currency)}")
    parts.append(f"rounding {r.rounding}")
    return ", ".join(parts)
