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
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import yaml

from billing._tariff_bands import DAY_NAMES, SECONDS_PER_DAY, BandTable
from billing._tariff_errors import TariffError, TariffProblem
from billing._tariff_model import HOME_ZONE, Plan, PlanVersion
from billing._tariff_reader import (
    CURRENCY,
    DIGITS,
    MISSING,
    PLMN,
    TIME,
    Reader,
    StrictLoader,
    join,
    kind,
    mark_text,
)
from billing._tariff_sections import (
    check_rates,
    check_services,
    read_bundle,
    read_rate,
    read_service,
)
from billing.protocol import PaymentMode

FORMAT = "billing-tariff/1"
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


def parse_plan(text: str, source: str) -> Plan:
    """Parse and validate one plan; raise :class:`TariffError` listing every problem."""
    r = Reader(source)
    loader = StrictLoader(text)
    try:
        doc = loader.get_single_data()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = mark_text(mark) if mark is not None else "<yaml>"
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
        r.fail("description", f"must be a string, got {kind(description)}")
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
    r: Reader, raw: dict[str, Any], path: str, plan_id: str, before: int
) -> PlanVersion | None:
    """Read one version (with inherited sections merged in); ``None`` if anything is wrong
    (problems recorded since ``before``)."""
    p = path + "."
    number = r.integer(raw.get("version"), p + "version", minimum=1)
    effective = _instant(r, raw.get("effective_from"), p + "effective_from")
    currency = r.text(raw.get("currency"), p + "currency", CURRENCY)
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
    home = r.list_of(raw.get("home_plmns", []), p + "home_plmns", lambda v, q: r.text(v, q, PLMN))
    holidays = r.list_of(raw.get("holidays", []), p + "holidays", lambda v, q: _day(r, v, q))
    groups = _destination_groups(r, raw.get("destination_groups", {}), p + "destination_groups")
    zones = _roaming_zones(r, raw.get("roaming_zones", {}), p + "roaming_zones")
    band_windows = _time_bands(r, raw.get("time_bands"), p + "time_bands")
    zone_names = {HOME_ZONE, *(zones or {}).values()}
    group_names = set((groups or {}).values())
    services = r.list_of(
        raw.get("services"), p + "services", lambda v, q: read_service(r, v, q), unique=False
    )
    services = check_services(r, services, p + "services")
    bands = band_windows[0] if band_windows is not None else None
    rates = r.list_of(
        raw.get("rates"),
        p + "rates",
        lambda v, q: read_rate(
            r, v, q, bands, group_names if groups is not None else None, zone_names
        ),
        unique=False,
    )
    rates = check_rates(r, rates, services, p + "rates")
    bundles = r.list_of(
        raw.get("bundles", []),
        p + "bundles",
        lambda v, q: read_bundle(r, v, q, group_names if groups is not None else None, services),
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


def _instant(r: Reader, value: object, path: str) -> datetime | None:
    if value is MISSING:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            r.fail(path, f"{value!r} is not an ISO 8601 date-time")
            return None
    if not isinstance(value, datetime):
        r.fail(path, f"must be a date-time with a UTC offset, got {kind(value)}")
        return None
    if value.tzinfo is None or value.utcoffset() is None:
        r.fail(path, f"{value.isoformat()} has no UTC offset (write e.g. +00:00)")
        return None
    return value


def _day(r: Reader, value: object, path: str) -> date | None:
    if isinstance(value, str):
        try:
            value = date.fromisoformat(value)
        except ValueError:
            r.fail(path, f"{value!r} is not a date YYYY-MM-DD")
            return None
    if isinstance(value, datetime) or not isinstance(value, date):
        r.fail(path, f"must be a date YYYY-MM-DD, got {kind(value)}")
        return None
    return value


def _zone_info(r: Reader, value: object, path: str) -> ZoneInfo | None:
    if value is MISSING:
        return None
    if not isinstance(value, str) or not value:
        r.fail(path, f"must be an IANA time zone name such as 'Europe/Paris', got {kind(value)}")
        return None
    try:
        return ZoneInfo(value)
    except (ValueError, OSError):  # ZoneInfoNotFoundError is a KeyError; OSError covers bad paths
        pass
    except KeyError:
        pass
    r.fail(path, f"unknown IANA time zone {value!r}")
    return None


def _destination_groups(r: Reader, value: object, path: str) -> dict[str, str] | None:
    """``{group: [prefix, ...]}`` -> ``{prefix: group}``; a prefix may belong to one group only."""
    if not isinstance(value, dict):
        r.fail(path, f"must be a mapping of group name to prefixes, got {kind(value)}")
        return None
    out: dict[str, str] = {}
    ok = True
    for group, prefixes in value.items():
        q = join(path, str(group))
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


def _prefix(r: Reader, value: object, path: str) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool):
        r.fail(path, f"quote prefixes as strings (e.g. '{value}'): YAML reads numbers lossily")
        return None
    return r.text(value, path, DIGITS)


def _roaming_zones(r: Reader, value: object, path: str) -> dict[str, str] | None:
    """``{zone: [MCC | MCC-MNC | '*', ...]}`` -> ``{pattern: zone}``."""
    if not isinstance(value, dict):
        r.fail(path, f"must be a mapping of zone name to networks, got {kind(value)}")
        return None
    out: dict[str, str] = {}
    ok = True
    for zone, networks in value.items():
        q = join(path, str(zone))
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


def _network(r: Reader, value: object, path: str) -> str | None:
    if value == "*":
        return "*"
    if not isinstance(value, str) or not (re.match(r"^\d{3}$", value) or PLMN.match(value)):
        r.fail(path, f"{value!r} must be '*', an MCC ('208') or an MCC-MNC ('20801'), quoted")
        return None
    return value.replace("-", "")


def _time_bands(
    r: Reader, value: object, path: str
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
        r.fail(path + ".bands", f"must be a mapping of band name to windows, got {kind(raw_bands)}")
        return None
    windows: dict[str, tuple[tuple[int, int, int], ...]] = {}
    ok = default is not None
    for band, raw_windows in raw_bands.items():
        q = join(path + ".bands", str(band))
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


def _window(r: Reader, value: object, path: str) -> list[tuple[int, int, int]] | None:
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


def _clock(r: Reader, value: object, path: str) -> int | None:
    if value is MISSING:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        r.fail(path, "quote times as 'HH:MM' strings (YAML reads unquoted 20:00 as a number)")
        return None
    text = r.text(value, path)
    match = TIME.match(text) if text is not None else None
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
