"""The generated dataclass encoders (sharding/_codec.py) write exactly what the field loop wrote.

``_dataclass_encoder`` generates one function per dataclass (one statement per field) instead of
looping over a plan of (name, encoder, default, factory); :func:`reference_encoder` below is that
loop. For every record the group commit encodes (answers with their grants, units and
final-unit indications, balance results, reservations as sessions hold them, and dataclasses
with defaults of every kind), both must give the same dict: same keys in the same order (the
stored answer is this text, as sent), same values and types.
"""

from __future__ import annotations

import dataclasses
import json
import operator
import typing
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from enum import Enum
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing.protocol import (
    BalanceResult,
    CreditControlAnswer,
    FinalUnitIndication,
    ResultCode,
    ServiceGrant,
    ServiceKind,
    Units,
)
from billing.state import Reservation, Session
from sharding._codec import _MISSING, Encode, _identity, encoder


def _encode_fields(plan: list[tuple[str, Encode | None, Any, Any]], values: Any) -> dict[str, Any]:
    """The field loop: ``plan`` is (field name, encoder or None for a plain value, default,
    default factory) per field, in field order, and ``values`` the fields' values."""
    out: dict[str, Any] = {}
    for (name, enc, default, factory), v in zip(plan, values, strict=True):
        if default is not _MISSING:
            if v == default:
                continue
        elif factory is not _MISSING and not v and v == factory():
            continue
        out[name] = v if enc is None else enc(v)
    return out


def reference_encoder(cls: type) -> Encode:
    """:func:`_encode_fields` over ``cls``'s fields: what the generated encoder must equal."""
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    get_all = operator.attrgetter(*(f.name for f in fields)) if fields else None
    plan: list[tuple[str, Encode | None, Any, Any]] = []
    for f in fields:
        enc = encoder(hints[f.name])
        plan.append((f.name, None if enc is _identity else enc, f.default, f.default_factory))

    def encode(v: Any) -> dict[str, Any]:
        if get_all is None:
            return {}
        values = get_all(v)
        return _encode_fields(plan, values if len(plan) > 1 else (values,))

    return encode


SETTINGS = settings(
    derandomize=True,
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

texts = st.text(max_size=6)
ints = st.one_of(st.integers(-3, 3), st.integers())  # defaults (0) often, and any int
times = st.datetimes(
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-5))])
)
units = st.builds(Units, **{f: ints for f in Units.__dataclass_fields__})
grants = st.builds(
    ServiceGrant,
    rating_group=st.none() | ints,
    service_identifier=st.none() | ints,
    granted=st.none() | units,
    validity_time_s=st.none() | ints,
    final_unit=st.none() | st.builds(FinalUnitIndication, redirect_address=st.none() | texts),
    tariff_time_change=st.none() | times,
    quota_threshold=st.none() | ints,
    cost_micros=ints,
    error_message=st.just("") | texts,
    uncharged_micros=ints,
)
answers = st.builds(
    CreditControlAnswer,
    session_id=texts,
    request_number=ints,
    services=st.lists(grants, max_size=3).map(tuple),
    cost_micros=ints,
    error_message=st.just("") | texts,
    balance_after_micros=st.none() | ints,
)
reservations = st.builds(
    Reservation,
    rating_group=ints,
    granted_units=ints,
    money_micros=ints,
    bucket_units=st.dictionaries(texts, ints, max_size=3),
    expires_at=times,
    granted_at=st.none() | times,
    tariff_switch_at=st.none() | times,
)


class _Colour(Enum):
    RED = "red"
    BLUE = 2


@dataclass(frozen=True)
class _Defaults:
    """A default of every kind the generator handles: none, none-or-enum, a value equal to
    things of other types (0 == False == 0.0), a factory, an enum, a datetime."""

    plain: int
    when: datetime
    colour: _Colour
    maybe: _Colour | None = None
    zero: Any = 0
    text: str = "x"
    items: tuple[int, ...] = ()
    table: dict[str, int] = field(default_factory=dict)
    listed: list[int] = field(default_factory=lambda: [1])


defaults = st.builds(
    _Defaults,
    plain=ints,
    when=times,
    colour=st.sampled_from(_Colour),
    maybe=st.none() | st.sampled_from(_Colour),
    zero=st.sampled_from([0, 0.0, False, None, 1, "0"]),
    text=st.sampled_from(["x", "", "y"]),
    items=st.lists(ints, max_size=2).map(tuple),
    table=st.dictionaries(texts, ints, max_size=2),
    listed=st.sampled_from([[], [1], [2]]),
)


def _text(value: Any) -> str:
    """The JSON text a dict becomes (key order included), type-strict via repr of scalars."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=repr)


def _same(cls: type, record: Any) -> None:
    generated, reference = encoder(cls)(record), reference_encoder(cls)(record)
    assert _text(generated) == _text(reference)
    assert list(generated) == list(reference)  # key order: the stored text is compared as sent


@SETTINGS
@given(answers)
def test_answers_encode_as_the_field_loop_did(answer: CreditControlAnswer) -> None:
    _same(CreditControlAnswer, answer)
    for grant in answer.services:
        _same(ServiceGrant, grant)


@SETTINGS
@given(reservations)
def test_reservations_encode_as_the_field_loop_did(reservation: Reservation) -> None:
    _same(Reservation, reservation)


@SETTINGS
@given(st.builds(BalanceResult, *(texts,) * 4, ints, ints))
def test_balance_results_encode_as_the_field_loop_did(result: BalanceResult) -> None:
    _same(BalanceResult, result)


@SETTINGS
@given(defaults)
def test_every_kind_of_default_is_left_out_as_the_field_loop_did(record: _Defaults) -> None:
    _same(_Defaults, record)


def test_a_session_with_reservations_encodes_as_the_field_loop_did() -> None:
    at = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    reservation = Reservation(100, ServiceKind.VOICE, 60, 5, {}, at)
    session = Session("s", 1, "sub", "acc", "payg", None, None, at, at, at, 2, {100: reservation})
    _same(Session, session)
    assert encoder(Session)(session)["reservations"] == {
        "100": reference_encoder(Reservation)(reservation)
    }


def test_the_comparison_can_fail() -> None:
    """A default not left out, or keys in another order, is told apart."""
    reference = reference_encoder(ServiceGrant)(ServiceGrant(1, None, ResultCode.SUCCESS))
    assert _text({**reference, "cost_micros": 0}) != _text(reference)
    assert _text(dict(reversed(list(reference.items())))) != _text(reference)
