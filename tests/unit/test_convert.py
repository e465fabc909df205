"""Proto <-> domain conversion: round trips, and every invalid field is named in the error."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from billing.protocol import (
    BalanceResult,
    CheckBalanceResult,
    CreditControlAnswer,
    CreditControlRequest,
    FinalUnitAction,
    FinalUnitIndication,
    PaymentMode,
    ReportingReason,
    RequestedAction,
    RequestType,
    ResultCode,
    ServiceGrant,
    ServiceUsage,
    TariffChangeUsage,
    Units,
    UsedUnits,
)
from cluster import convert
from cluster.convert import ValidationError
from cluster.pb import billing_pb2 as pb

T0 = datetime(2026, 3, 1, 12, 30, 15, 250_000, tzinfo=UTC)


def _update() -> CreditControlRequest:
    return CreditControlRequest(
        session_id="gw1;1;42",
        request_type=RequestType.UPDATE,
        request_number=3,
        subscriber_id="491700000001",
        event_time=T0,
        services=(
            ServiceUsage(
                rating_group=100,
                requested=Units(time_s=60),
                used=(
                    UsedUnits(
                        Units(time_s=30), ReportingReason.THRESHOLD, TariffChangeUsage.BEFORE
                    ),
                    UsedUnits(Units(time_s=12), None, TariffChangeUsage.AFTER),
                ),
            ),
            ServiceUsage(rating_group=10, service_identifier=7, requested=Units()),
            ServiceUsage(rating_group=20, used=(UsedUnits(Units(total_octets=5, input_octets=2)),)),
        ),
        destination="4930123",
        visited_plmn="26201",
        retransmission=True,
    )


def test_request_round_trip_keeps_every_field() -> None:
    request = _update()
    assert convert.request_from_proto(convert.request_to_proto(request)) == request


def test_requested_present_but_empty_is_kept_distinct_from_absent() -> None:
    msg = convert.request_to_proto(_update())
    parsed = convert.request_from_proto(msg)
    assert parsed.services[1].requested == Units()
    assert parsed.services[2].requested is None


def test_event_round_trip() -> None:
    event = CreditControlRequest(
        session_id="ev-1",
        request_type=RequestType.EVENT,
        request_number=0,
        subscriber_id="s1",
        event_time=T0,
        services=(ServiceUsage(rating_group=200, requested=Units(service_units=1)),),
        requested_action=RequestedAction.DIRECT_DEBITING,
    )
    assert convert.request_from_proto(convert.request_to_proto(event)) == event


def test_answer_round_trip_keeps_every_field() -> None:
    answer = CreditControlAnswer(
        session_id="gw1;1;42",
        request_number=3,
        result_code=ResultCode.SUCCESS,
        services=(
            ServiceGrant(
                rating_group=100,
                service_identifier=None,
                result_code=ResultCode.SUCCESS,
                granted=Units(time_s=60),
                validity_time_s=600,
                final_unit=FinalUnitIndication(FinalUnitAction.REDIRECT, "http://topup"),
                tariff_time_change=T0,
                quota_threshold=6,
                cost_micros=123_456,
                error_message="",
                uncharged_micros=7,
            ),
            ServiceGrant(
                rating_group=999,
                service_identifier=3,
                result_code=ResultCode.RATING_FAILED,
                error_message="rating_group: 999 is not in the plan",
            ),
        ),
        cost_micros=123_456,
        check_balance_result=CheckBalanceResult.ENOUGH_CREDIT,
        error_message="",
        balance_after_micros=-5,
    )
    msg = convert.answer_to_proto(answer)
    assert msg.result_code == 2001
    assert msg.services[1].result_code == 5031
    assert convert.answer_from_proto(msg) == answer


def test_timestamps_are_exact_to_the_microsecond() -> None:
    ts = convert.datetime_to_timestamp(T0)
    assert (ts.seconds, ts.nanos) == (int(T0.timestamp()), 250_000_000)
    assert convert.timestamp_to_datetime(ts, "t") == T0
    with pytest.raises(ValueError, match="naive"):
        convert.datetime_to_timestamp(datetime(2026, 1, 1))


def test_unknown_result_code_on_the_wire_is_not_silently_success() -> None:
    msg = pb.CreditControlAnswer(session_id="s", request_number=0, result_code=1234)  # type: ignore[arg-type]
    assert convert.answer_from_proto(msg).result_code is ResultCode.UNABLE_TO_COMPLY
    assert convert.result_code_of(1234) == 1234
    assert convert.result_code_of(5002) is ResultCode.UNKNOWN_SESSION_ID


Mutation = Callable[[pb.CreditControlRequest], None]


def _set(path: str, value: object) -> Mutation:
    def mutate(msg: pb.CreditControlRequest) -> None:
        target: object = msg
        *parents, leaf = path.split(".")
        for part in parents:
            if part.endswith("]"):
                name, index = part[:-1].split("[")
                target = getattr(target, name)[int(index)]
            else:
                target = getattr(target, part)
        setattr(target, leaf, value)

    return mutate


def _clear(name: str) -> Mutation:
    return lambda msg: msg.ClearField(name)  # type: ignore[arg-type]


def _too_many_services(msg: pb.CreditControlRequest) -> None:
    for _ in range(convert.SERVICES_MAX):
        msg.services.add(rating_group=1)


def _too_many_used(msg: pb.CreditControlRequest) -> None:
    for _ in range(convert.USED_MAX):
        msg.services[0].used.add().units.time_s = 1


def _used_without_units(msg: pb.CreditControlRequest) -> None:
    msg.services[0].used.add(reporting_reason=pb.REPORTING_REASON_FINAL)


def _event_without_action(msg: pb.CreditControlRequest) -> None:
    msg.request_type = pb.REQUEST_TYPE_EVENT
    msg.request_number = 0


INVALID: list[tuple[str, Mutation, str, bool]] = [
    ("session_id", _set("session_id", ""), "required", True),
    ("session_id", _set("session_id", "x" * 257), "at most 256", False),
    ("session_id", _set("session_id", "a\nb"), "printable", False),
    ("request_type", _set("request_type", 0), "required", True),
    ("request_type", _set("request_type", 42), "unknown enum value 42", False),
    ("request_number", _set("request_number", 0), "must be >= 1 for UPDATE", False),
    ("subscriber_id", _set("subscriber_id", ""), "required", True),
    ("subscriber_id", _set("subscriber_id", "9" * 65), "at most 64", False),
    ("event_time", _clear("event_time"), "required", True),
    ("event_time", _set("event_time.seconds", 10**13), "out of range", False),
    ("event_time", _set("event_time.nanos", -1), "nanos", False),
    ("services", _too_many_services, "at most 32", False),
    ("services[0].requested.time_s", _set("services[0].requested.time_s", -1), ">= 0", False),
    (
        "services[1].requested.money_micros",
        _set("services[1].requested.money_micros", -5),
        ">= 0",
        False,
    ),
    (
        "services[0].requested.total_octets",
        _set("services[0].requested.total_octets", 10**15 + 1),
        "<=",
        False,
    ),
    ("services[0].used", _too_many_used, "at most 16", False),
    (
        "services[0].used[1].units.time_s",
        _set("services[0].used[1].units.time_s", -3),
        ">= 0",
        False,
    ),
    (
        "services[2].used[0].units.input_octets",
        _set("services[2].used[0].units.input_octets", -1),
        ">= 0",
        False,
    ),
    (
        "services[0].used[0].reporting_reason",
        _set("services[0].used[0].reporting_reason", 99),
        "unknown enum value",
        False,
    ),
    (
        "services[0].used[0].tariff_change_usage",
        _set("services[0].used[0].tariff_change_usage", 7),
        "unknown enum value",
        False,
    ),
    ("services[0].used[2].units", _used_without_units, "required", True),
    ("requested_action", _set("requested_action", 1), "only allowed on EVENT", False),
    ("requested_action", _event_without_action, "required", True),
    ("requested_action", _set("requested_action", 77), "unknown enum value", False),
    ("destination", _set("destination", "1" * 65), "at most 64", False),
    ("visited_plmn", _set("visited_plmn", "\x00"), "printable", False),
]


@pytest.mark.parametrize(
    ("field", "mutate", "message", "missing"),
    INVALID,
    ids=[f"{case[0]}:{case[2]}" for case in INVALID],
)
def test_invalid_request_names_the_field(
    field: str, mutate: Mutation, message: str, missing: bool
) -> None:
    msg = convert.request_to_proto(_update())
    mutate(msg)
    with pytest.raises(ValidationError) as caught:
        convert.request_from_proto(msg)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")
    assert message in str(caught.value)
    expected = ResultCode.MISSING_AVP if missing else ResultCode.INVALID_AVP_VALUE
    assert caught.value.result_code is expected


def test_initial_and_event_must_carry_request_number_zero() -> None:
    msg = convert.request_to_proto(_update())
    msg.request_type = pb.REQUEST_TYPE_INITIAL
    with pytest.raises(ValidationError, match="request_number: must be 0 for INITIAL"):
        convert.request_from_proto(msg)
    msg.request_number = 0
    assert convert.request_from_proto(msg).request_type is RequestType.INITIAL


def _create(**fields: object) -> pb.CreateSubscriberRequest:
    base: dict[str, object] = {
        "subscriber_id": "s1",
        "plan_id": "payg",
        "initial_balance_micros": 5_000_000,
    }
    base.update(fields)
    return pb.CreateSubscriberRequest(**base)  # type: ignore[arg-type]


def test_provisioning_defaults_are_explicit_none() -> None:
    spec = convert.provisioning_from_proto(_create())
    assert spec == convert.Provisioning(
        subscriber_id="s1",
        plan_id="payg",
        payment_mode=None,
        initial_balance_micros=5_000_000,
        credit_limit_micros=0,
        currency=None,
        account_id=None,
    )
    spec = convert.provisioning_from_proto(
        _create(payment_mode=pb.PAYMENT_MODE_HYBRID, currency="EUR", account_id="family-1")
    )
    assert (spec.payment_mode, spec.currency, spec.account_id) == (
        PaymentMode.HYBRID,
        "EUR",
        "family-1",
    )


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"subscriber_id": ""}, "subscriber_id"),
        ({"plan_id": ""}, "plan_id"),
        ({"payment_mode": 9}, "payment_mode"),
        ({"initial_balance_micros": -1}, "initial_balance_micros"),
        ({"credit_limit_micros": -1}, "credit_limit_micros"),
        ({"credit_limit_micros": 10**16}, "credit_limit_micros"),
        ({"currency": "eur"}, "currency"),
        ({"currency": "EURO"}, "currency"),
        ({"account_id": ""}, "account_id"),
    ],
)
def test_invalid_provisioning_names_the_field(fields: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        convert.provisioning_from_proto(_create(**fields))
    assert caught.value.field == field


def test_topup_and_adjustment() -> None:
    command = convert.topup_from_proto(
        pb.TopUpRequest(subscriber_id="s1", amount_micros=10, idempotency_key="k1", reason="shop")
    )
    assert (command.kind, command.amount_micros, command.idempotency_key, command.reason) == (
        "topup",
        10,
        "k1",
        "shop",
    )
    command = convert.adjustment_from_proto(
        pb.AdjustRequest(subscriber_id="s1", amount_micros=-10, idempotency_key="k2")
    )
    assert (command.kind, command.amount_micros) == ("adjustment", -10)


@pytest.mark.parametrize(
    ("msg", "field"),
    [
        (
            pb.TopUpRequest(subscriber_id="s1", amount_micros=0, idempotency_key="k"),
            "amount_micros",
        ),
        (
            pb.TopUpRequest(subscriber_id="s1", amount_micros=-1, idempotency_key="k"),
            "amount_micros",
        ),
        (pb.TopUpRequest(subscriber_id="s1", amount_micros=1), "idempotency_key"),
        (pb.TopUpRequest(amount_micros=1, idempotency_key="k"), "subscriber_id"),
        (
            pb.AdjustRequest(subscriber_id="s1", amount_micros=0, idempotency_key="k"),
            "amount_micros",
        ),
        (
            pb.AdjustRequest(subscriber_id="s1", amount_micros=-(10**16), idempotency_key="k"),
            "amount_micros",
        ),
        (
            pb.AdjustRequest(subscriber_id="s1", amount_micros=5, idempotency_key="k" * 129),
            "idempotency_key",
        ),
        (
            pb.AdjustRequest(
                subscriber_id="s1", amount_micros=5, idempotency_key="k", reason="r" * 257
            ),
            "reason",
        ),
    ],
)
def test_invalid_balance_command_names_the_field(
    msg: pb.TopUpRequest | pb.AdjustRequest, field: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        if isinstance(msg, pb.TopUpRequest):
            convert.topup_from_proto(msg)
        else:
            convert.adjustment_from_proto(msg)
    assert caught.value.field == field


def test_plan_requests() -> None:
    with pytest.raises(ValidationError, match="text: required"):
        convert.plan_text_from_proto(pb.LoadPlanRequest(text="  \n"))
    with pytest.raises(ValidationError, match="plan_id: required"):
        convert.plan_id_from_proto("")
    assert convert.plan_id_from_proto("payg") == "payg"


def test_balance_result_to_proto() -> None:
    msg = convert.balance_result_to_proto(
        BalanceResult(
            idempotency_key="k",
            kind="topup",
            subscriber_id="s1",
            account_id="a1",
            amount_micros=5,
            balance_after_micros=15,
        )
    )
    assert (msg.account_id, msg.amount_micros, msg.balance_after_micros) == ("a1", 5, 15)
