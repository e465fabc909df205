"""The built-in plan templates: they load, follow the shared rating-group convention, price the
services the way their descriptions say, and can be listed, shown, described and copied."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from billing.protocol import PaymentMode, ServiceKind
from billing.rating import UsageEvent, rate, reservation_price
from billing.tariff import (
    TariffError,
    builtin_catalog,
    describe_plan,
    load_plan,
    template_names,
    template_text,
)

NAMES = ["payg", "postpaid-monthly", "hybrid", "iot-pool"]
RATING_GROUPS = {
    100: (ServiceKind.VOICE, "time_s"),
    200: (ServiceKind.SMS, "service_units"),
    10: (ServiceKind.DATA, "total_octets"),
    20: (ServiceKind.DATA, "total_octets"),
    300: (ServiceKind.CONTENT, "service_units"),
}
NOW = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)  # Thursday 10:00 in Paris: peak


def test_template_names_and_catalog_agree() -> None:
    assert template_names() == NAMES
    assert sorted(p.plan_id for p in builtin_catalog().plans()) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_template_text_is_the_yaml_source_and_reloads(name: str) -> None:
    text = template_text(name)
    assert f"plan_id: {name}" in text and "format: billing-tariff/1" in text
    assert load_plan(text, source=name) == builtin_catalog().get(name)


@pytest.mark.parametrize("name", NAMES)
def test_every_template_has_the_shared_rating_groups(name: str) -> None:
    plan = builtin_catalog().get(name)
    for version in plan.versions:
        for rg, (service, unit) in RATING_GROUPS.items():
            terms = version.service_terms(rg, None)
            assert (terms.service, terms.unit) == (service, unit)
            assert terms.credit_control == "charged"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    ("service", "rg", "units"),
    [
        (ServiceKind.VOICE, 100, 95),
        (ServiceKind.SMS, 200, 1),
        (ServiceKind.DATA, 10, 5_000_000),
        (ServiceKind.DATA, 20, 1),
        (ServiceKind.CONTENT, 300, 2),
    ],
)
@pytest.mark.parametrize("dest", [None, "33612345678", "4930123456", "12125551234"])
@pytest.mark.parametrize("plmn", [None, "20801", "26201", "310260"])
def test_every_template_rates_every_service_anywhere(
    name: str, service: ServiceKind, rg: int, units: int, dest: str | None, plmn: str | None
) -> None:
    plan = builtin_catalog().get(name)
    usage = UsageEvent(service, units, NOW, rg, dest, plmn)
    rating = rate(usage, plan)
    assert 0 < rating.cost_micros <= reservation_price(usage, plan)


def test_payment_modes_and_consumption_orders() -> None:
    catalog = builtin_catalog()
    expected = {
        "payg": (PaymentMode.PREPAID, ("bundles", "prepaid")),
        "postpaid-monthly": (PaymentMode.POSTPAID, ("bundles", "credit")),
        "hybrid": (PaymentMode.HYBRID, ("bundles", "prepaid", "credit")),
        "iot-pool": (PaymentMode.POSTPAID, ("bundles", "credit")),
    }
    for name, (mode, order) in expected.items():
        version = catalog.get(name).versions[-1]
        assert (version.payment_mode, version.consumption_order) == (mode, order)


def test_bundles_of_the_templates() -> None:
    catalog = builtin_catalog()
    assert catalog.get("payg").versions[-1].bundles == ()
    postpaid = {b.bundle_id: b for b in catalog.get("postpaid-monthly").versions[0].bundles}
    assert postpaid["minutes-500"].units == 500 * 60
    assert postpaid["minutes-500"].destination_groups == ("national", "national-mobile")
    assert postpaid["data-20gb"].units == 20 * 1024**3
    assert all(b.validity_days == 30 for b in postpaid.values())
    pool = catalog.get("iot-pool").versions[0].bundles
    assert [(b.service, b.units) for b in pool] == [(ServiceKind.DATA, 10 * 1024**3)]


def test_payg_prices_match_its_description() -> None:
    plan = builtin_catalog().get("payg")
    peak = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
    offpeak = datetime(2026, 11, 26, 21, 0, tzinfo=UTC)

    def price(service: ServiceKind, units: int, rg: int, at: datetime, dest: str = "33145") -> int:
        return rate(UsageEvent(service, units, at, rg, dest), plan).cost_micros

    assert price(ServiceKind.VOICE, 60, 100, peak) == 100_000
    assert price(ServiceKind.VOICE, 61, 100, peak) == 200_000  # 60/60
    assert price(ServiceKind.VOICE, 60, 100, offpeak) == 50_000
    assert price(ServiceKind.VOICE, 60, 100, peak, "4930123") == 50_000 + 250_000
    assert price(ServiceKind.DATA, 1_048_576, 10, peak) == 10_000
    v1_time = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    assert price(ServiceKind.SMS, 1, 200, v1_time) == 50_000
    assert price(ServiceKind.SMS, 1, 200, peak) == 40_000  # version 2


def test_describe_plan_is_readable() -> None:
    text = describe_plan(builtin_catalog().get("payg"))
    assert text.startswith("payg: Pay as you go (prepaid)")
    assert "version 2, effective from 2026-07-01T00:00:00+02:00" in text
    assert (
        "rate voice-national: voice, in home, peak 0.100000 EUR, offpeak 0.050000 EUR per 60"
        in text
    )
    assert "increments 60/60" in text
    assert "    destinations national-mobile: 336, 337\n" in text
    assert "    zone home: 20801, 20802\n" in text and "    zone world: *\n" in text
    described = describe_plan(builtin_catalog().get("postpaid-monthly"))
    assert "bundle minutes-500: 30000 voice units (national, national-mobile), 30 days" in described
    assert "from 10737418240: 0.010000 EUR" in described


def test_a_copied_template_with_a_new_id_loads() -> None:
    text = template_text("hybrid").replace("plan_id: hybrid", "plan_id: hybrid-gold")
    plan = load_plan(text, source="gold.yaml")
    assert plan.plan_id == "hybrid-gold"
    assert builtin_catalog().with_plan(plan).get("hybrid-gold") is plan


def test_unknown_template_is_named() -> None:
    with pytest.raises(TariffError) as info:
        template_text("platinum")
    assert "'platinum'" in str(info.value) and "payg" in str(info.value)


def test_plans_versions_and_rates_are_hashable_values() -> None:
    plan = builtin_catalog().get("payg")
    again = load_plan(template_text("payg"), source="again.yaml")
    assert plan == again and hash(plan) == hash(again)
    assert {plan: "x"}[again] == "x"
    assert len({*plan.versions, *again.versions}) == 2
    assert hash(plan.versions[0].rates[0]) == hash(again.versions[0].rates[0])
