"""Tariff loading: a valid file compiles; every invalid file is rejected as a whole with every
problem named by file, field path and what is wrong."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from billing.protocol import PaymentMode, ServiceKind
from billing.rating import RatingError
from billing.tariff import (
    Catalog,
    Plan,
    TariffError,
    TariffProblem,
    load_plan,
    load_plan_file,
)

SOURCE = "plans/test.yaml"


def doc() -> dict[str, Any]:
    """A small valid plan document, to be broken one field at a time."""
    return {
        "format": "billing-tariff/1",
        "plan_id": "test",
        "name": "Test plan",
        "versions": [
            {
                "version": 1,
                "effective_from": "2026-01-01T00:00:00+00:00",
                "currency": "EUR",
                "payment_mode": "prepaid",
                "consumption_order": ["bundles", "prepaid"],
                "timezone": "Europe/Paris",
                "home_plmns": ["20801"],
                "holidays": ["2026-12-25"],
                "time_bands": {
                    "default": "offpeak",
                    "bands": {"peak": [{"days": ["mon", "fri"], "from": "08:00", "to": "20:00"}]},
                },
                "destination_groups": {"national": ["33"], "mobile": ["336"]},
                "roaming_zones": {"eu": ["262"], "world": ["*"]},
                "services": [
                    {
                        "service": "voice",
                        "rating_groups": [100],
                        "unit": "time_s",
                        "default_quota": 300,
                        "validity_time_s": 600,
                    },
                    {
                        "service": "data",
                        "rating_groups": [10, 20],
                        "unit": "total_octets",
                        "default_quota": 1_000_000,
                        "validity_time_s": 900,
                    },
                ],
                "rates": [
                    {
                        "id": "voice",
                        "service": "voice",
                        "rate_unit": 60,
                        "initial_increment": 60,
                        "subsequent_increment": 60,
                        "price": {"peak": "0.10", "offpeak": "0.05"},
                    },
                    {"id": "data", "service": "data", "rate_unit": 1_000_000, "price": "0.01"},
                ],
                "bundles": [
                    {"id": "minutes", "service": "voice", "units": 6000, "validity_days": 30}
                ],
            }
        ],
    }


def load(d: dict[str, Any]) -> Plan:
    return load_plan(yaml.safe_dump(d, sort_keys=False), source=SOURCE)


def problems(d: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(TariffError) as info:
        load(d)
    for p in info.value.problems:
        assert p.source == SOURCE
        assert str(p) in str(info.value)
    return [(p.field, p.message) for p in info.value.problems]


def assert_problem(d: dict[str, Any], field: str, fragment: str) -> None:
    found = problems(d)
    assert any(f == field and fragment in m for f, m in found), found


def v0(d: dict[str, Any]) -> dict[str, Any]:
    version: dict[str, Any] = d["versions"][0]
    return version


def test_valid_document_loads_and_compiles() -> None:
    plan = load(doc())
    assert plan.plan_id == "test" and plan.source == SOURCE
    version = plan.versions[0]
    assert version.payment_mode is PaymentMode.PREPAID
    assert version.effective_from == datetime(2026, 1, 1, tzinfo=UTC)
    assert version.consumption_order == ("bundles", "prepaid")
    assert version.orphan_timeout_factor == 2
    assert version.rates[0].tier_prices[0] == {"peak": 100_000, "offpeak": 50_000}
    assert version.rates[1].tier_prices[0] == {"peak": 10_000, "offpeak": 10_000}
    assert version.rates[0].band_sensitive and not version.rates[1].band_sensitive
    assert version.bundles[0].units == 6000 and version.bundles[0].priority == 0
    assert version.service_terms(20, None).service is ServiceKind.DATA


def test_service_terms_unknown_rating_group_is_a_rating_error() -> None:
    version = load(doc()).versions[0]
    with pytest.raises(RatingError) as info:
        version.service_terms(999, None)
    assert info.value.field == "rating_group" and "999" in str(info.value)
    with pytest.raises(RatingError):
        version.service_terms(None, None)


def test_service_identifier_selects_terms_when_no_rating_group() -> None:
    d = doc()
    v0(d)["services"][0]["service_identifiers"] = [7]
    version = load(d).versions[0]
    assert version.service_terms(None, 7).service is ServiceKind.VOICE
    assert version.service_terms(555, 7).service is ServiceKind.VOICE


def test_all_problems_are_collected_not_just_the_first() -> None:
    d = doc()
    v0(d)["currency"] = "euro"
    v0(d)["rates"][1]["price"] = 0.01
    v0(d)["services"][0]["validity_time_s"] = 0
    del d["name"]
    fields = [f for f, _ in problems(d)]
    assert "name" in fields
    assert "versions[0].currency" in fields
    assert "versions[0].rates[1].price" in fields
    assert "versions[0].services[0].validity_time_s" in fields


def test_error_message_lists_source_field_and_problem() -> None:
    d = doc()
    v0(d)["payment_mode"] = "prepayed"
    with pytest.raises(TariffError) as info:
        load(d)
    text = str(info.value)
    assert f"{SOURCE}: versions[0].payment_mode: 'prepayed' is not one of" in text
    assert isinstance(info.value, ValueError)
    assert info.value.problems[0] == TariffProblem(
        SOURCE,
        "versions[0].payment_mode",
        "'prepayed' is not one of: prepaid, postpaid, hybrid, rated_only",
    )


def test_unknown_keys_are_errors_at_every_level() -> None:
    d = doc()
    d["plan_name"] = "x"
    v0(d)["curency"] = "EUR"
    v0(d)["rates"][0]["connect_feee"] = "0.1"
    v0(d)["services"][0]["quota"] = 1
    v0(d)["bundles"][0]["unit"] = 1
    v0(d)["time_bands"]["bands"]["peak"][0]["day"] = ["mon"]
    found = [f for f, m in problems(d) if "unknown key" in m]
    assert found == [
        "plan_name",
        "versions[0].curency",
        "versions[0].time_bands.bands.peak[0].day",
        "versions[0].services[0].quota",
        "versions[0].rates[0].connect_feee",
        "versions[0].bundles[0].unit",
    ]


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("price", 0.1, "not the float 0.1"),
        ("price", "0.1234567", "at most 6 decimals"),
        ("price", "-0.10", "must not be negative"),
        ("price", "ten", "not a decimal amount"),
        ("price", True, "must be a decimal amount string"),
        ("connect_fee", 0.5, "floats are not exact"),
        ("minimum_charge", "1,5", "not a decimal amount"),
        ("max_cost", 2.5, "floats are not exact"),
    ],
)
def test_money_fields_reject_floats_and_malformed_amounts(
    key: str, value: object, fragment: str
) -> None:
    d = doc()
    v0(d)["rates"][1][key] = value
    assert_problem(d, f"versions[0].rates[1].{key}", fragment)


def test_whole_number_money_is_whole_currency_units() -> None:
    d = doc()
    v0(d)["rates"][1]["price"] = 2
    assert load(d).versions[0].rates[1].tier_prices[0]["peak"] == 2_000_000


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("rate_unit", 0, "must be >= 1"),
        ("rate_unit", "60", "must be an integer"),
        ("initial_increment", 0, "must be >= 1"),
        ("subsequent_increment", -6, "must be >= 1"),
        ("rounding", "nearest", "is not one of: up, down, half_up, half_even"),
        ("service", "fax", "is not one of"),
        ("id", "Voice Rate", "is not valid"),
        ("zones", ["mars"], ""),
        ("destination_groups", ["nowhere"], ""),
        ("tiers", [{"from": 0, "price": "0.01"}], "must be >= 1"),
    ],
)
def test_rate_field_errors(key: str, value: object, fragment: str) -> None:
    d = doc()
    v0(d)["rates"][0][key] = value
    found = problems(d)
    assert any(f.startswith(f"versions[0].rates[0].{key}") and fragment in m for f, m in found), (
        found
    )


def test_unknown_zone_and_group_are_named() -> None:
    d = doc()
    v0(d)["rates"][0]["zones"] = ["home", "mars"]
    v0(d)["rates"][0]["destination_groups"] = ["national", "nowhere"]
    found = problems(d)
    assert (
        "versions[0].rates[0].zones[1]",
        "unknown zone 'mars' (known: eu, home, world)",
    ) in found
    assert (
        "versions[0].rates[0].destination_groups[1]",
        "unknown destination group 'nowhere'",
    ) in found


def test_required_fields_are_reported_once_each() -> None:
    d = doc()
    for key in ("id", "rate_unit", "price"):
        del v0(d)["rates"][0][key]
    found = problems(d)
    assert found == [
        ("versions[0].rates[0].id", "is required"),
        ("versions[0].rates[0].price", "is required"),
        ("versions[0].rates[0].rate_unit", "is required"),
    ]


def test_missing_version_sections_are_required() -> None:
    d = doc()
    for key in ("currency", "services", "rates", "timezone"):
        del v0(d)[key]
    fields = [f for f, m in problems(d) if m == "is required"]
    assert fields == [
        "versions[0].currency",
        "versions[0].rates",
        "versions[0].services",
        "versions[0].timezone",
    ]


def test_band_price_mapping_must_name_every_band_and_only_known_bands() -> None:
    d = doc()
    v0(d)["rates"][0]["price"] = {"peak": "0.10", "night": "0.01"}
    found = problems(d)
    assert ("versions[0].rates[0].price.night", "unknown time band (known: offpeak, peak)") in found
    assert ("versions[0].rates[0].price", "no price for band(s) offpeak") in found


def test_tiers_must_increase() -> None:
    d = doc()
    v0(d)["rates"][1]["tiers"] = [
        {"from": 1000, "price": "0.005"},
        {"from": 1000, "price": "0.001"},
    ]
    assert_problem(d, "versions[0].rates[1].tiers[1].from", "must start above")


def test_max_cost_below_minimum_is_rejected() -> None:
    d = doc()
    v0(d)["rates"][1]["minimum_charge"] = "1.00"
    v0(d)["rates"][1]["max_cost"] = "0.50"
    assert_problem(d, "versions[0].rates[1].max_cost", "must not be below minimum_charge")


def test_duplicate_and_shadowed_rates_are_rejected() -> None:
    d = doc()
    v0(d)["rates"].append(dict(v0(d)["rates"][1]))
    found = problems(d)
    assert ("versions[0].rates[2].id", "duplicate rate id 'data'") in found
    assert any(f == "versions[0].rates[2]" and "never applies" in m for f, m in found)


def test_specific_rate_after_generic_one_is_shadowed() -> None:
    d = doc()
    v0(d)["rates"].append(
        {
            "id": "voice-mobile",
            "service": "voice",
            "destination_groups": ["mobile"],
            "rate_unit": 60,
            "price": "0.20",
        }
    )
    assert_problem(d, "versions[0].rates[2]", "the earlier rate 'voice' matches everything")


def test_every_charged_service_needs_a_rate() -> None:
    d = doc()
    v0(d)["rates"].pop(1)
    assert_problem(d, "versions[0].rates", "no rate for service data")
    v0(d)["services"][1]["credit_control"] = "free"
    load(d)


def test_rate_rating_group_must_belong_to_its_service() -> None:
    d = doc()
    v0(d)["rates"][1]["rating_groups"] = [100]
    assert_problem(d, "versions[0].rates[1].rating_groups[0]", "rating group 100 is not a data")


@pytest.mark.parametrize(
    ("key", "value", "field", "fragment"),
    [
        ("unit", "total_octets", "unit", "is not a unit of voice"),
        ("default_quota", 0, "default_quota", "must be >= 1"),
        ("validity_time_s", 100_000, "validity_time_s", "must be <= 86400"),
        ("quota_threshold_percent", 100, "quota_threshold_percent", "must be <= 99"),
        ("final_unit_action", "redirect", "redirect_address", "is required when"),
        ("credit_control", "maybe", "credit_control", "is not one of: charged, free, denied"),
        ("overuse", "ignore", "overuse", "is not one of: charge, cap"),
        ("rating_groups", [], "rating_groups", "at least one rating group"),
        ("rating_groups", [-1], "rating_groups[0]", "must be >= 0"),
        ("service_identifiers", "7", "service_identifiers", "must be a list"),
    ],
)
def test_service_field_errors(key: str, value: object, field: str, fragment: str) -> None:
    d = doc()
    v0(d)["services"][0][key] = value
    assert_problem(d, f"versions[0].services[0].{field}", fragment)


def test_rating_group_used_twice_is_rejected() -> None:
    d = doc()
    v0(d)["services"][1]["rating_groups"] = [10, 100]
    assert_problem(
        d,
        "versions[0].services[1].rating_groups",
        "rating group 100 is already used by services[0]",
    )


@pytest.mark.parametrize(
    ("key", "value", "field", "fragment"),
    [
        ("currency", "eur", "currency", "ISO 4217"),
        ("payment_mode", None, "payment_mode", "is not one of"),
        ("consumption_order", ["bundles", "cash"], "consumption_order[1]", "is not one of"),
        ("consumption_order", ["prepaid", "prepaid"], "consumption_order[1]", "duplicate"),
        ("consumption_order", ["credit"], "consumption_order", "needs payment_mode postpaid"),
        ("consumption_order", [], "consumption_order", "must not be empty"),
        ("orphan_timeout_factor", 0, "orphan_timeout_factor", "must be >= 1"),
        ("timezone", "Mars/Olympus", "timezone", "unknown IANA time zone"),
        ("timezone", 5, "timezone", "IANA time zone name"),
        ("home_plmns", ["2081"], "home_plmns[0]", "MCC-MNC"),
        ("holidays", ["2026-02-30"], "holidays[0]", "is not a date"),
        ("effective_from", "2026-01-01T00:00:00", "effective_from", "has no UTC offset"),
        ("effective_from", "soon", "effective_from", "not an ISO 8601"),
        ("version", 0, "version", "must be >= 1"),
        ("destination_groups", {"national": [33]}, "destination_groups.national[0]", "quote"),
        ("destination_groups", {"national": ["3a"]}, "destination_groups.national[0]", "digits"),
        ("destination_groups", {"national": []}, "destination_groups.national", "at least one"),
        ("roaming_zones", {"home": ["262"]}, "roaming_zones.home", "reserved"),
        ("roaming_zones", {"eu": ["26"]}, "roaming_zones.eu[0]", "MCC"),
        ("roaming_zones", ["eu"], "roaming_zones", "must be a mapping"),
    ],
)
def test_version_field_errors(key: str, value: object, field: str, fragment: str) -> None:
    d = doc()
    v0(d)[key] = value
    assert_problem(d, f"versions[0].{field}", fragment)


def test_prefix_in_two_groups_is_rejected() -> None:
    d = doc()
    v0(d)["destination_groups"] = {"national": ["33"], "other": ["33"]}
    assert_problem(d, "versions[0].destination_groups.other[0]", "already in group 'national'")


def test_network_in_two_zones_is_rejected() -> None:
    d = doc()
    v0(d)["roaming_zones"] = {"eu": ["262"], "world": ["*", "262"]}
    assert_problem(d, "versions[0].roaming_zones.world[1]", "already in zone 'eu'")


@pytest.mark.parametrize(
    ("window", "field", "fragment"),
    [
        ({"days": ["mon"], "from": "20:00", "to": "08:00"}, "", "'from' must be before 'to'"),
        ({"days": ["mon"], "from": 480, "to": "20:00"}, ".from", "quote times"),
        ({"days": ["mon"], "from": "8h", "to": "20:00"}, ".from", "is not a time"),
        ({"days": ["mon"], "from": "08:00", "to": "24:30"}, ".to", "between '00:00' and '24:00'"),
        ({"days": ["monday"], "from": "08:00", "to": "20:00"}, ".days[0]", "is not one of"),
        ({"days": [], "from": "08:00", "to": "20:00"}, ".days", "at least one day"),
    ],
)
def test_time_window_errors(window: dict[str, object], field: str, fragment: str) -> None:
    d = doc()
    v0(d)["time_bands"]["bands"]["peak"] = [window]
    assert_problem(d, f"versions[0].time_bands.bands.peak[0]{field}", fragment)


def test_overlapping_bands_are_rejected() -> None:
    d = doc()
    v0(d)["time_bands"]["bands"]["night"] = [{"days": ["fri"], "from": "19:00", "to": "23:00"}]
    v0(d)["rates"][0]["price"] = {"peak": "0.1", "offpeak": "0.05", "night": "0.01"}
    assert_problem(d, "versions[0].time_bands.bands", "band 'night' overlaps band 'peak' on fri")


def test_default_band_takes_no_windows() -> None:
    d = doc()
    v0(d)["time_bands"]["bands"]["offpeak"] = [{"days": ["sat"], "from": "00:00", "to": "24:00"}]
    assert_problem(d, "versions[0].time_bands.bands.offpeak", "takes no windows")


def test_bundle_errors() -> None:
    d = doc()
    v0(d)["bundles"] = [
        {"id": "a", "service": "voice", "units": 0},
        {"id": "a", "service": "data", "units": 5, "rating_groups": [100]},
        {"id": "b", "service": "voice", "units": 5, "destination_groups": ["mars"]},
        {"id": "c", "service": "voice", "units": 5, "validity_days": 0, "priority": -1},
    ]
    found = problems(d)
    assert ("versions[0].bundles[0].units", "must be >= 1, got 0") in found
    assert (
        "versions[0].bundles[1].rating_groups[0]",
        "rating group 100 is not a data service",
    ) in found
    assert (
        "versions[0].bundles[2].destination_groups[0]",
        "unknown destination group 'mars'",
    ) in found
    assert ("versions[0].bundles[3].validity_days", "must be >= 1, got 0") in found
    assert ("versions[0].bundles[3].priority", "must be >= 0, got -1") in found


def test_duplicate_bundle_ids_are_rejected() -> None:
    d = doc()
    v0(d)["bundles"].append(dict(v0(d)["bundles"][0]))
    assert_problem(d, "versions[0].bundles[1].id", "duplicate bundle id 'minutes'")


def test_later_version_inherits_unnamed_sections() -> None:
    d = doc()
    later = {
        "version": 2,
        "effective_from": "2026-06-01T00:00:00+02:00",
        "rates": copy.deepcopy(v0(d)["rates"]),
    }
    later["rates"][1]["price"] = "0.02"
    d["versions"].append(later)
    plan = load(d)
    v1, v2 = plan.versions
    assert v2.services == v1.services and v2.bundles == v1.bundles
    assert v2.rates[1].tier_prices[0]["peak"] == 20_000
    assert v1.rates[1].tier_prices[0]["peak"] == 10_000


def test_versions_must_increase_in_number_and_date() -> None:
    d = doc()
    d["versions"].append({"version": 1, "effective_from": "2025-01-01T00:00:00+00:00"})
    found = problems(d)
    assert ("versions[1].version", "must be greater than 1") in found
    assert ("versions[1].effective_from", "must be later than the previous version's") in found


def test_later_version_must_not_repeat_unknown_keys() -> None:
    d = doc()
    d["versions"].append({"version": 2, "effective_from": "2027-01-01T00:00:00+00:00", "x": 1})
    assert_problem(d, "versions[1].x", "unknown key")


def test_problem_in_later_version_rejects_whole_plan() -> None:
    d = doc()
    d["versions"].append(
        {"version": 2, "effective_from": "2027-01-01T00:00:00+00:00", "currency": "E"}
    )
    assert_problem(d, "versions[1].currency", "ISO 4217")


def test_empty_versions_and_wrong_top_level_shapes() -> None:
    d = doc()
    d["versions"] = []
    assert_problem(d, "versions", "at least one version")
    with pytest.raises(TariffError) as info:
        load_plan("- just a list", source=SOURCE)
    assert info.value.problems[0].field == "<top>"
    with pytest.raises(TariffError):
        load_plan("", source=SOURCE)


def test_wrong_format_tag_is_rejected() -> None:
    d = doc()
    d["format"] = "billing-tariff/9"
    assert_problem(d, "format", "unsupported format")


def test_invalid_yaml_names_line_and_column() -> None:
    with pytest.raises(TariffError) as info:
        load_plan("plan_id: [unclosed\nname: x\n", source=SOURCE)
    problem = info.value.problems[0]
    assert problem.source == SOURCE and problem.field.startswith("line ")
    assert "not valid YAML" in problem.message


def test_load_plan_file_names_the_file(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(doc()), encoding="utf-8")
    assert load_plan_file(good).source == str(good)
    bad_doc = doc()
    v0(bad_doc)["currency"] = 1
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(bad_doc), encoding="utf-8")
    with pytest.raises(TariffError) as info:
        load_plan_file(bad)
    assert str(info.value).splitlines()[1].strip().startswith(f"{bad}: versions[0].currency")
    with pytest.raises(TariffError) as missing:
        load_plan_file(tmp_path / "none.yaml")
    assert "cannot read" in str(missing.value)


def test_catalog_is_an_immutable_value() -> None:
    plan = load(doc())
    empty = Catalog()
    catalog = empty.with_plan(plan)
    assert empty.plans() == () and catalog.plans() == (plan,)
    assert catalog.get("test") is plan and "test" in catalog
    with pytest.raises(TariffError) as info:
        catalog.get("gold")
    assert info.value.problems[0].field == "plan_id" and "'gold'" in str(info.value)


def test_version_at_uses_effective_dating() -> None:
    d = doc()
    d["versions"].append({"version": 2, "effective_from": "2026-06-01T00:00:00+00:00"})
    plan = load(d)
    assert plan.version_at(datetime(2026, 5, 31, 23, 59, 59, tzinfo=UTC)).version == 1
    assert plan.version_at(datetime(2026, 6, 1, tzinfo=UTC)).version == 2
    with pytest.raises(RatingError) as info:
        plan.version_at(datetime(2025, 12, 31, 23, 59, tzinfo=UTC))
    assert info.value.field == "at" and "no version effective" in str(info.value)


def test_duplicate_keys_are_errors_not_last_one_wins() -> None:
    text = yaml.safe_dump(doc(), sort_keys=False).replace(
        "  currency: EUR\n", "  currency: EUR\n  currency: USD\n", 1
    )
    with pytest.raises(TariffError) as info:
        load_plan(text, source=SOURCE)
    (problem,) = info.value.problems
    assert problem.source == SOURCE and problem.field.startswith("line ")
    assert "duplicate key 'currency' (first at line" in problem.message


def test_anchors_and_merge_keys_share_settings() -> None:
    text = yaml.safe_dump(doc(), sort_keys=False).replace(
        "- id: voice\n", "- &voice\n    id: voice\n", 1
    )
    merged = "  - <<: *voice\n    id: voice-mobile\n    destination_groups: [mobile]\n"
    assert "  - id: data\n" in text
    text = text.replace("  - id: data\n", merged + "  - id: data\n", 1)
    with pytest.raises(TariffError) as info:  # the merged copy is shadowed by the original
        load_plan(text, source=SOURCE)
    assert "never applies" in str(info.value)


def test_alias_bomb_is_reported_briefly() -> None:
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 12):
        prev = f"*a{i - 1}"
        levels.append(f"a{i}: &a{i} [{', '.join([prev] * 9)}]")
    text = "\n".join(levels) + "\nplan_id: *a11\nname: n\nversions: *a11\n"
    with pytest.raises(TariffError) as info:
        load_plan(text, source=SOURCE)
    assert len(str(info.value)) < 20_000
    assert "versions[0]" in str(info.value)


def test_oversized_text_is_rejected_before_parsing() -> None:
    with pytest.raises(TariffError) as info:
        load_plan("#" * 1_000_001, source=SOURCE)
    assert "larger than" in str(info.value)


@pytest.mark.parametrize(
    ("mutate", "field", "fragment"),
    [
        (lambda d: d.update(name=5), "name", "must be a string"),
        (lambda d: d.update(description=["x"]), "description", "must be a string"),
        (lambda d: d.update(plan_id="Gold Plan"), "plan_id", "is not valid"),
        (lambda d: d.update(versions={"version": 1}), "versions", "must be a list"),
        (lambda d: d["versions"].__setitem__(0, "v1"), "versions[0]", "must be a mapping"),
        (lambda d: v0(d).update(time_bands="peak"), "versions[0].time_bands", "must be a mapping"),
        (lambda d: v0(d)["time_bands"].update(bands=[]), "versions[0].time_bands.bands", "mapping"),
        (
            lambda d: v0(d)["time_bands"].pop("default"),
            "versions[0].time_bands.default",
            "required",
        ),
        (
            lambda d: v0(d)["time_bands"]["bands"].update({"Peak Hours": []}),
            "versions[0].time_bands.bands.Peak Hours",
            "is not valid",
        ),
        (
            lambda d: v0(d)["time_bands"]["bands"].update(peak="08-20"),
            "versions[0].time_bands.bands.peak",
            "must be a list",
        ),
        (
            lambda d: v0(d)["rates"][0].update(description=1),
            "versions[0].rates[0].description",
            "string",
        ),
        (
            lambda d: v0(d)["rates"][0].update(tiers=[{"from": 5}]),
            "versions[0].rates[0].tiers[0].price",
            "required",
        ),
        (lambda d: v0(d)["services"].clear(), "versions[0].services", "at least one service"),
        (
            lambda d: v0(d)["services"][0].update(redirect_address=7),
            "versions[0].services[0].redirect_address",
            "string",
        ),
        (
            lambda d: v0(d).update(holidays=["2026-12-25T00:00:00"]),
            "versions[0].holidays[0]",
            "not a date",
        ),
        (lambda d: v0(d).update(holidays=[20261225]), "versions[0].holidays[0]", "must be a date"),
        (
            lambda d: v0(d).update(effective_from=20260101),
            "versions[0].effective_from",
            "date-time",
        ),
        (
            lambda d: v0(d).update(destination_groups={"national": "33"}),
            "versions[0].destination_groups.national",
            "list",
        ),
    ],
)
def test_more_shape_errors_name_their_field(mutate: Any, field: str, fragment: str) -> None:
    d = doc()
    mutate(d)
    assert_problem(d, field, fragment)


def test_service_identifier_used_twice_is_rejected() -> None:
    d = doc()
    v0(d)["services"][0]["service_identifiers"] = [7]
    v0(d)["services"][1]["service_identifiers"] = [7]
    assert_problem(d, "versions[0].services[1].service_identifiers", "already used by services[0]")


def test_rated_only_plan_may_have_an_empty_consumption_order() -> None:
    d = doc()
    v0(d)["payment_mode"] = "rated_only"
    v0(d)["consumption_order"] = []
    assert load(d).versions[0].consumption_order == ()
