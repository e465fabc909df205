"""The tariff file loader: YAML text -> a validated, compiled :class:`~billing.tariff.Plan`.

All-or-nothing: every problem in the file is collected (file, field path, what is wrong) and
reported together in one :class:`TariffError`; nothing is returned unless the whole file is valid.
Unknown keys are errors so that a typo never silently drops a setting. Money is a quoted decimal
string (or a whole number) parsed exactly by :func:`billing.money.parse_money`; a YAML float is
rejected because it is not exact.

Each version after the first inherits every section it does not name from the version before it,
so a price change is a short entry with ``version``, ``effective_from`` and the changed ``rates``.
"""

from __future__ import annotations

import re
import reprlib
from collections.abc import Callable
from datetime import date, datetime
from enum import StrEnum
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import yaml

from billing._tariff_bands import DAY_NAMES, SECONDS_PER_DAY, BandTable
from billing._tariff_errors import TariffError, TariffProblem
from billing._tariff_model import (
    HOME_ZONE,
    BundleSpec,
    Plan,
    PlanVersion,
    RateSpec,
    ServiceTerms,
)
from billing.money import Rounding, parse_money
from billing.protocol import FinalUnitAction, PaymentMode, ServiceKind

FORMAT = "billing-tariff/1"
_E = TypeVar("_E", bound=StrEnum)
_T = TypeVar("_T")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_DIGITS = re.compile(r"^\d{1,15}$")
_PLMN = re.compile(r"^\d{3}-?\d{2,3}$")
_TIME = re.compile(r"^(\d{2}):(\d{2})$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")
UNITS_BY_SERVICE: dict[ServiceKind, tuple[str, ...]] = {
    ServiceKind.VOICE: ("time_s",),
    ServiceKind.SMS: ("service_units",),
    ServiceKind.DATA: ("total_octets", "input_octets", "output_octets"),
    ServiceKind.CONTENT: ("service_units", "money_micros"),
}
_TOP_KEYS = {"format", "plan_id", "name", "description", "versions"}
_VERSION_REQUIRED = {
    "version",
    "effective_from",
    "currency",
    "payment_mode",
    "consumption_order",
    "timezone",
    "services",
    "rates",
}
_VERSION_OPTIONAL = {
    "orphan_timeout_factor",
    "home_plmns",
    "holidays",
    "time_bands",
    "destination_groups",
    "roaming_zones",
    "bundles",
}
_OWN_KEYS = {"version", "effective_from"}  # never inherited
_MISSING = object()


class _Reader:
    """Collects problems while reading untrusted YAML values; every getter returns ``None`` (and
    records a problem) when a value is wrong, so reading continues and all problems are found."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[TariffProblem] = []

    def fail(self, path: str, message: str) -> None:
        self.problems.append(TariffProblem(self.source, path or "<top>", message))

    def mapping(
        self, value: object, path: str, required: set[str], optional: set[str]
    ) -> dict[str, Any] | None:
        if value is _MISSING:
            return None
        if not isinstance(value, dict):
            self.fail(path, f"must be a mapping, got {_kind(value)}")
            return None
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                self.fail(path, f"keys must be strings, got {key!r}")
            elif key not in required and key not in optional:
                allowed = ", ".join(sorted(required | optional))
                self.fail(_join(path, key), f"unknown key (allowed: {allowed})")
            else:
                out[key] = item
        for key in sorted(required - out.keys()):
            self.fail(_join(path, key), "is required")
            out[key] = _MISSING  # reported once here; every getter skips it silently
        return out

    def items(self, value: object, path: str) -> list[Any] | None:
        if value is _MISSING:
            return None
        if not isinstance(value, list):
            self.fail(path, f"must be a list, got {_kind(value)}")
            return None
        return value

    def integer(
        self, value: object, path: str, minimum: int | None = None, maximum: int | None = None
    ) -> int | None:
        if value is _MISSING:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(path, f"must be an integer, got {_kind(value)}")
            return None
        if minimum is not None and value < minimum:
            self.fail(path, f"must be >= {minimum}, got {value}")
            return None
        if maximum is not None and value > maximum:
            self.fail(path, f"must be <= {maximum}, got {value}")
            return None
        return value

    def text(self, value: object, path: str, pattern: re.Pattern[str] | None = None) -> str | None:
        if value is _MISSING:
            return None
        if not isinstance(value, str):
            self.fail(path, f"must be a string, got {_kind(value)}")
            return None
        if pattern is not None and not pattern.match(value):
            self.fail(path, f"{value!r} is not valid (expected {_describe(pattern)})")
            return None
        return value

    def name(self, value: object, path: str) -> str | None:
        return self.text(value, path, _NAME)

    def choice(self, value: object, path: str, enum: type[_E]) -> _E | None:
        if value is _MISSING:
            return None
        try:
            if not isinstance(value, str):
                raise ValueError(value)
            return enum(value)
        except ValueError:
            allowed = ", ".join(m.value for m in enum)
            self.fail(path, f"{value!r} is not one of: {allowed}")
            return None

    def word(self, value: object, path: str, allowed: tuple[str, ...]) -> str | None:
        if value is _MISSING:
            return None
        if value not in allowed:
            self.fail(path, f"{value!r} is not one of: {', '.join(allowed)}")
            return None
        return str(value)

    def money(self, value: object, path: str) -> int | None:
        if value is _MISSING:
            return None
        if isinstance(value, float):
            self.fail(
                path,
                f"money must be a quoted decimal string such as '0.10', not the "
                f"float {value!r} (floats are not exact)",
            )
            return None
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            self.fail(path, f"must be a decimal amount string, got {_kind(value)}")
            return None
        try:
            micros = parse_money(value)
        except ValueError as exc:
            self.fail(path, str(exc))
            return None
        if micros < 0:
            self.fail(path, f"must not be negative, got {value!r}")
            return None
        return micros

    def list_of(
        self,
        value: object,
        path: str,
        read: Callable[[object, str], _T | None],
        unique: bool = True,
    ) -> tuple[_T, ...] | None:
        raw = self.items(value, path)
        if raw is None:
            return None
        out: list[_T] = []
        ok = True
        for i, item in enumerate(raw):
            got = read(item, f"{path}[{i}]")
            if got is None:
                ok = False
            elif unique and got in out:
                self.fail(f"{path}[{i}]", f"duplicate {got!r}")
                ok = False
            else:
                out.append(got)
        return tuple(out) if ok else None


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, stricter: a key repeated in one mapping (which YAML would silently
    resolve to the last value) is recorded as a problem. Anchors and aliases (``&x`` / ``*x``,
    ``<<: *x``) are allowed; they share one object, and nothing here walks or prints a value
    deeper than its expected shape, so an alias bomb cannot blow up."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[tuple[str, str]] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[object, str] = {}
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                where = _where(key_node.start_mark)
                if key_node.value in seen:
                    self.duplicates.append(
                        (
                            where,
                            f"duplicate key {key_node.value!r} (first at {seen[key_node.value]})",
                        )
                    )
                else:
                    seen[key_node.value] = where
        return super().construct_mapping(node, deep)


def _where(mark: Any) -> str:
    return f"line {mark.line + 1} column {mark.column + 1}"


def parse_plan(text: str, source: str) -> Plan:
    """Parse and validate one plan; raise :class:`TariffError` listing every problem."""
    r = _Reader(source)
    loader = _StrictLoader(text)
    try:
        doc = loader.get_single_data()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = _where(mark) if mark is not None else "<yaml>"
        raise TariffError([TariffProblem(source, where, f"not valid YAML: {exc}")]) from None
    finally:
        loader.dispose()
    for where, message in loader.duplicates:
        r.fail(where, message)
    top = r.mapping(doc, "", {"plan_id", "name", "versions"}, _TOP_KEYS)
    if top is None:
        raise TariffError(r.problems)
    if "format" in top and top["format"] != FORMAT:
        r.fail("format", f"unsupported format {top['format']!r} (expected {FORMAT!r})")
    plan_id = r.name(top.get("plan_id"), "plan_id") if "plan_id" in top else None
    name = r.text(top.get("name"), "name") if "name" in top else None
    description = top.get("description", "")
    if not isinstance(description, str):
        r.fail("description", f"must be a string, got {_kind(description)}")
        description = ""
    versions: list[PlanVersion] = []
    raw_versions = r.items(top["versions"], "versions") if "versions" in top else None
    if raw_versions is not None and not raw_versions:
        r.fail("versions", "must list at least one version")
    inherited: dict[str, Any] = {}
    for i, raw in enumerate(raw_versions or ()):
        path = f"versions[{i}]"
        required = _VERSION_REQUIRED if i == 0 else _OWN_KEYS
        optional = (_VERSION_REQUIRED | _VERSION_OPTIONAL) - required
        before = len(r.problems)
        own = r.mapping(raw, path, required, optional)
        if own is None:
            continue
        merged = {**inherited, **own}
        inherited = {k: v for k, v in merged.items() if k not in _OWN_KEYS}
        version = _version(r, merged, path, plan_id or "?", before)
        if version is not None:
            versions.append(version)
    for i in range(1, len(versions)):
        prev, cur = versions[i - 1], versions[i]
        if cur.version <= prev.version:
            r.fail(f"versions[{i}].version", f"must be greater than {prev.version}")
        if cur.effective_from <= prev.effective_from:
            r.fail(f"versions[{i}].effective_from", "must be later than the previous version's")
    if r.problems or plan_id is None or name is None:
        raise TariffError(r.problems)
    return Plan(plan_id, name, description, tuple(versions), source)


def _version(
    r: _Reader, raw: dict[str, Any], path: str, plan_id: str, before: int
) -> PlanVersion | None:
    """Read one version (with inherited sections merged in); ``None`` if anything is wrong
    (problems recorded since ``before``)."""
    p = path + "."
    number = r.integer(raw.get("version"), p + "version", minimum=1)
    effective = _instant(r, raw.get("effective_from"), p + "effective_from")
    currency = r.text(raw.get("currency"), p + "currency", _CURRENCY)
    mode = r.choice(raw.get("payment_mode"), p + "payment_mode", PaymentMode)
    order = r.list_of(
        raw.get("consumption_order"),
        p + "consumption_order",
        lambda v, q: r.word(v, q, ("bundles", "prepaid", "credit")),
    )
    if order is not None and mode is not None:
        if "credit" in order and mode not in (PaymentMode.POSTPAID, PaymentMode.HYBRID):
            r.fail(
                p + "consumption_order",
                f"'credit' needs payment_mode postpaid or hybrid, not {mode}",
            )
        if "prepaid" in order and mode not in (PaymentMode.PREPAID, PaymentMode.HYBRID):
            r.fail(
                p + "consumption_order",
                f"'prepaid' needs payment_mode prepaid or hybrid, not {mode}",
            )
        if not order and mode is not PaymentMode.RATED_ONLY:
            r.fail(p + "consumption_order", "must not be empty")
    factor = r.integer(raw.get("orphan_timeout_factor", 2), p + "orphan_timeout_factor", 1, 100)
    tz = _zone_info(r, raw.get("timezone"), p + "timezone")
    home = r.list_of(raw.get("home_plmns", []), p + "home_plmns", lambda v, q: r.text(v, q, _PLMN))
    holidays = r.list_of(raw.get("holidays", []), p + "holidays", lambda v, q: _day(r, v, q))
    groups = _destination_groups(r, raw.get("destination_groups", {}), p + "destination_groups")
    zones = _roaming_zones(r, raw.get("roaming_zones", {}), p + "roaming_zones")
    band_windows = _time_bands(r, raw.get("time_bands"), p + "time_bands")
    zone_names = {HOME_ZONE, *(zones or {}).values()}
    group_names = set((groups or {}).values())
    services = r.list_of(
        raw.get("services"), p + "services", lambda v, q: _service(r, v, q), unique=False
    )
    services = _check_services(r, services, p + "services")
    bands = band_windows[0] if band_windows is not None else None
    rates = r.list_of(
        raw.get("rates"),
        p + "rates",
        lambda v, q: _rate(r, v, q, bands, group_names if groups is not None else None, zone_names),
        unique=False,
    )
    rates = _check_rates(r, rates, services, p + "rates")
    bundles = r.list_of(
        raw.get("bundles", []),
        p + "bundles",
        lambda v, q: _bundle(r, v, q, group_names if groups is not None else None, services),
        unique=False,
    )
    if bundles is not None:
        ids = [b.bundle_id for b in bundles]
        for i, bid in enumerate(ids):
            if bid in ids[:i]:
                r.fail(f"{p}bundles[{i}].id", f"duplicate bundle id {bid!r}")
    if len(r.problems) > before:
        return None
    assert number is not None and effective is not None and currency is not None
    assert mode is not None and order is not None and factor is not None and tz is not None
    assert home is not None and holidays is not None and groups is not None
    assert zones is not None and band_windows is not None and services is not None
    assert rates is not None and bundles is not None
    default_band, windows = band_windows[1], band_windows[2]
    table = BandTable(
        tz=tz, default_band=default_band, windows=windows, holidays=frozenset(holidays)
    )
    return PlanVersion(
        plan_id=plan_id,
        version=number,
        effective_from=effective,
        currency=currency,
        payment_mode=mode,
        consumption_order=order,
        orphan_timeout_factor=factor,
        services=services,
        bundles=bundles,
        rates=rates,
        timezone=tz.key,
        home_plmns=tuple(h.replace("-", "") for h in home),
        destination_prefixes=groups,
        roaming_zones=zones,
        bands=table,
    )


def _instant(r: _Reader, value: object, path: str) -> datetime | None:
    if value is _MISSING:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            r.fail(path, f"{value!r} is not an ISO 8601 date-time")
            return None
    if not isinstance(value, datetime):
        r.fail(path, f"must be a date-time with a UTC offset, got {_kind(value)}")
        return None
    if value.tzinfo is None or value.utcoffset() is None:
        r.fail(path, f"{value.isoformat()} has no UTC offset (write e.g. +00:00)")
        return None
    return value


def _day(r: _Reader, value: object, path: str) -> date | None:
    if isinstance(value, str):
        try:
            value = date.fromisoformat(value)
        except ValueError:
            r.fail(path, f"{value!r} is not a date YYYY-MM-DD")
            return None
    if isinstance(value, datetime) or not isinstance(value, date):
        r.fail(path, f"must be a date YYYY-MM-DD, got {_kind(value)}")
        return None
    return value


def _zone_info(r: _Reader, value: object, path: str) -> ZoneInfo | None:
    if value is _MISSING:
        return None
    if not isinstance(value, str) or not value:
        r.fail(path, f"must be an IANA time zone name such as 'Europe/Paris', got {_kind(value)}")
        return None
    try:
        return ZoneInfo(value)
    except (ValueError, OSError):  # ZoneInfoNotFoundError is a KeyError; OSError covers bad paths
        pass
    except KeyError:
        pass
    r.fail(path, f"unknown IANA time zone {value!r}")
    return None


def _destination_groups(r: _Reader, value: object, path: str) -> dict[str, str] | None:
    """``{group: [prefix, ...]}`` -> ``{prefix: group}``; a prefix may belong to one group only."""
    if not isinstance(value, dict):
        r.fail(path, f"must be a mapping of group name to prefixes, got {_kind(value)}")
        return None
    out: dict[str, str] = {}
    ok = True
    for group, prefixes in value.items():
        q = _join(path, str(group))
        if r.name(group, q) is None:
            ok = False
            continue
        got = r.list_of(prefixes, q, lambda v, s: _prefix(r, v, s))
        if got is None:
            ok = False
            continue
        if not got:
            r.fail(q, "must list at least one prefix")
            ok = False
        for i, prefix in enumerate(got):
            if prefix in out:
                r.fail(f"{q}[{i}]", f"prefix {prefix!r} is already in group {out[prefix]!r}")
                ok = False
            out[prefix] = str(group)
    return out if ok else None


def _prefix(r: _Reader, value: object, path: str) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool):
        r.fail(path, f"quote prefixes as strings (e.g. '{value}'): YAML reads numbers lossily")
        return None
    return r.text(value, path, _DIGITS)


def _roaming_zones(r: _Reader, value: object, path: str) -> dict[str, str] | None:
    """``{zone: [MCC | MCC-MNC | '*', ...]}`` -> ``{pattern: zone}``."""
    if not isinstance(value, dict):
        r.fail(path, f"must be a mapping of zone name to networks, got {_kind(value)}")
        return None
    out: dict[str, str] = {}
    ok = True
    for zone, networks in value.items():
        q = _join(path, str(zone))
        if r.name(zone, q) is None:
            ok = False
            continue
        if zone == HOME_ZONE:
            r.fail(q, f"{HOME_ZONE!r} is reserved for the home network (see home_plmns)")
            ok = False
            continue
        got = r.list_of(networks, q, lambda v, s: _network(r, v, s))
        if got is None:
            ok = False
            continue
        if not got:
            r.fail(q, "must list at least one network")
            ok = False
        for i, net in enumerate(got):
            if net in out:
                r.fail(f"{q}[{i}]", f"network {net!r} is already in zone {out[net]!r}")
                ok = False
            out[net] = str(zone)
    return out if ok else None


def _network(r: _Reader, value: object, path: str) -> str | None:
    if value == "*":
        return "*"
    if not isinstance(value, str) or not (re.match(r"^\d{3}$", value) or _PLMN.match(value)):
        r.fail(path, f"{value!r} must be '*', an MCC ('208') or an MCC-MNC ('20801'), quoted")
        return None
    return value.replace("-", "")


def _time_bands(
    r: _Reader, value: object, path: str
) -> tuple[tuple[str, ...], str, dict[str, tuple[tuple[int, int, int], ...]]] | None:
    """-> (band names, default band, {band: ((day_type, from_s, to_s), ...)})."""
    if value is None:
        return (("all",), "all", {})
    spec = r.mapping(value, path, {"default"}, {"bands"})
    if spec is None:
        return None
    default = r.name(spec.get("default"), path + ".default") if "default" in spec else None
    raw_bands = spec.get("bands", {})
    if not isinstance(raw_bands, dict):
        r.fail(
            path + ".bands", f"must be a mapping of band name to windows, got {_kind(raw_bands)}"
        )
        return None
    windows: dict[str, tuple[tuple[int, int, int], ...]] = {}
    ok = default is not None
    for band, raw_windows in raw_bands.items():
        q = _join(path + ".bands", str(band))
        if r.name(band, q) is None:
            ok = False
            continue
        if band == default:
            r.fail(
                q,
                f"the default band {default!r} applies wherever no window does; "
                "it takes no windows",
            )
            ok = False
            continue
        spans: list[tuple[int, int, int]] = []
        for i, w in enumerate(r.items(raw_windows, q) or ()):
            got = _window(r, w, f"{q}[{i}]")
            if got is None:
                ok = False
            else:
                spans.extend(got)
        windows[str(band)] = tuple(spans)
    # Windows of different bands must not overlap: which band applies would be ambiguous.
    flat = [(d, lo, hi, b) for b, spans in windows.items() for d, lo, hi in spans]
    for i, (d, lo, hi, b) in enumerate(flat):
        for d2, lo2, hi2, b2 in flat[:i]:
            if d == d2 and b != b2 and lo < hi2 and lo2 < hi:
                r.fail(path + ".bands", f"band {b!r} overlaps band {b2!r} on {DAY_NAMES[d]}")
                ok = False
    if not ok or default is None:
        return None
    names = (default, *sorted(windows))
    return (names, default, windows)


def _window(r: _Reader, value: object, path: str) -> list[tuple[int, int, int]] | None:
    spec = r.mapping(value, path, {"days", "from", "to"}, set())
    if spec is None:
        return None
    days = r.list_of(spec.get("days"), path + ".days", lambda v, q: r.word(v, q, DAY_NAMES))
    lo = _clock(r, spec.get("from"), path + ".from")
    hi = _clock(r, spec.get("to"), path + ".to")
    if days is None or lo is None or hi is None:
        return None
    if not days:
        r.fail(path + ".days", "must list at least one day")
        return None
    if lo >= hi:
        r.fail(path, "'from' must be before 'to' (split a window that crosses midnight in two)")
        return None
    return [(DAY_NAMES.index(d), lo, hi) for d in days]


def _clock(r: _Reader, value: object, path: str) -> int | None:
    if value is _MISSING:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        r.fail(path, "quote times as 'HH:MM' strings (YAML reads unquoted 20:00 as a number)")
        return None
    text = r.text(value, path)
    match = _TIME.match(text) if text is not None else None
    if text is None:
        return None
    if match is None:
        r.fail(path, f"{text!r} is not a time 'HH:MM'")
        return None
    hours, minutes = int(match[1]), int(match[2])
    seconds = hours * 3600 + minutes * 60
    if minutes > 59 or seconds > SECONDS_PER_DAY:
        r.fail(path, f"{text!r} is not a time between '00:00' and '24:00'")
        return None
    return seconds


def _service(r: _Reader, value: object, path: str) -> ServiceTerms | None:
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


def _check_services(
    r: _Reader, services: tuple[ServiceTerms, ...] | None, path: str
) -> tuple[ServiceTerms, ...] | None:
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


def _rate(
    r: _Reader,
    value: object,
    path: str,
    bands: tuple[str, ...] | None,
    groups: set[str] | None,
    zones: set[str],
) -> RateSpec | None:
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
        r.fail(p + "description", f"must be a string, got {_kind(description)}")
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
    r: _Reader, value: object, path: str, bands: tuple[str, ...] | None
) -> dict[str, int] | None:
    """A price is one amount for every band, or a mapping naming every band exactly."""
    if value is _MISSING:
        return None
    if isinstance(value, dict):
        if bands is None:
            return None  # the time_bands section itself is wrong; reported there
        out: dict[str, int] = {}
        ok = True
        for band, amount in value.items():
            if band not in bands:
                r.fail(_join(path, str(band)), f"unknown time band (known: {', '.join(bands)})")
                ok = False
                continue
            micros = r.money(amount, _join(path, str(band)))
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


def _check_rates(
    r: _Reader,
    rates: tuple[RateSpec, ...] | None,
    services: tuple[ServiceTerms, ...] | None,
    path: str,
) -> tuple[RateSpec, ...] | None:
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


def _bundle(
    r: _Reader,
    value: object,
    path: str,
    groups: set[str] | None,
    services: tuple[ServiceTerms, ...] | None,
) -> BundleSpec | None:
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


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


_REPR = reprlib.Repr()
_REPR.maxlevel = 2
_REPR.maxstring = 40
_REPR.maxother = 40


def _kind(value: object) -> str:
    """A short description of an unexpected value (bounded: never a full repr)."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"a boolean ({value})"
    return f"{type(value).__name__} {_REPR.repr(value)}"


def _describe(pattern: re.Pattern[str]) -> str:
    return {
        _NAME.pattern: "lower-case letters, digits, '_', '.', '-'",
        _DIGITS.pattern: "digits only",
        _PLMN.pattern: "an MCC-MNC such as '20801'",
        _CURRENCY.pattern: "an ISO 4217 code such as 'EUR'",
    }.get(pattern.pattern, pattern.pattern)
