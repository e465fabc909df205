"""The answer the front door sends is byte for byte what the plain message-by-message build gives.

``cluster.convert.answer_to_proto`` builds each grant in place (``services.add``, units set
field by field); the reference below builds every grant as its own message and copies it in, as
the converter did before. For any domain answer both serialise identically (deterministic
serialisation) and the answer reads back as the domain answer it came from.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from billing.protocol import (
    CheckBalanceResult,
    CreditControlAnswer,
    FinalUnitAction,
    FinalUnitIndication,
    ResultCode,
    ServiceGrant,
    Units,
)
from cluster import convert
from cluster.pb import billing_pb2 as pb

_AMOUNT = st.sampled_from([0, 1, 60, 1 << 20, convert.UNITS_MAX])
_OPTIONAL_INT = st.none() | st.sampled_from([0, 1, 100, 600])
_CODES = st.sampled_from(list(ResultCode))


@st.composite
def _units(draw: st.DrawFn) -> Units:
    return Units(*(draw(_AMOUNT) for _ in range(6)))


@st.composite
def _grant(draw: st.DrawFn) -> ServiceGrant:
    final = draw(
        st.none()
        | st.builds(
            FinalUnitIndication,
            st.sampled_from(list(FinalUnitAction)),
            st.none() | st.just("http://top.up"),
        )
    )
    change = draw(st.none() | st.integers(0, 10**6))
    return ServiceGrant(
        rating_group=draw(_OPTIONAL_INT),
        service_identifier=draw(_OPTIONAL_INT),
        result_code=draw(_CODES),
        granted=draw(st.none() | _units()),
        validity_time_s=draw(_OPTIONAL_INT),
        final_unit=final,
        tariff_time_change=None
        if change is None
        else datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=change),
        quota_threshold=draw(_OPTIONAL_INT),
        cost_micros=draw(st.sampled_from([0, 5_000, 10**12])),
        error_message=draw(st.sampled_from(["", "no funds"])),
        uncharged_micros=draw(st.sampled_from([0, 7])),
    )


@st.composite
def _answer(draw: st.DrawFn) -> CreditControlAnswer:
    return CreditControlAnswer(
        session_id=draw(st.sampled_from(["lg-1;2", "s"])),
        request_number=draw(st.integers(0, 5)),
        result_code=draw(_CODES),
        services=tuple(draw(st.lists(_grant(), max_size=3))),
        cost_micros=draw(st.sampled_from([0, 50_000])),
        check_balance_result=draw(st.none() | st.sampled_from(list(CheckBalanceResult))),
        error_message=draw(st.sampled_from(["", "bad"])),
        balance_after_micros=draw(st.none() | st.sampled_from([0, 10**9])),
    )


def _reference(answer: CreditControlAnswer) -> pb.CreditControlAnswer:
    """Each grant as its own message, copied in (the build before the in-place one)."""

    def units(value: Units) -> pb.Units:
        return pb.Units(
            time_s=value.time_s,
            total_octets=value.total_octets,
            input_octets=value.input_octets,
            output_octets=value.output_octets,
            service_units=value.service_units,
            money_micros=value.money_micros,
        )

    def grant_msg(grant: ServiceGrant) -> pb.ServiceGrant:
        msg = pb.ServiceGrant(
            result_code=convert._wire_code(grant.result_code),
            cost_micros=grant.cost_micros,
            error_message=grant.error_message,
            uncharged_micros=grant.uncharged_micros,
        )
        if grant.rating_group is not None:
            msg.rating_group = grant.rating_group
        if grant.service_identifier is not None:
            msg.service_identifier = grant.service_identifier
        if grant.granted is not None:
            msg.granted.CopyFrom(units(grant.granted))
        if grant.validity_time_s is not None:
            msg.validity_time_s = grant.validity_time_s
        if grant.final_unit is not None:
            msg.final_unit.action = convert._FINAL_UNIT_ACTION_PB[grant.final_unit.action]
            msg.final_unit.redirect_address = grant.final_unit.redirect_address or ""
        if grant.tariff_time_change is not None:
            msg.tariff_time_change.CopyFrom(convert.datetime_to_timestamp(grant.tariff_time_change))
        if grant.quota_threshold is not None:
            msg.quota_threshold = grant.quota_threshold
        return msg

    msg = pb.CreditControlAnswer(
        session_id=answer.session_id,
        request_number=answer.request_number,
        result_code=convert._wire_code(answer.result_code),
        cost_micros=answer.cost_micros,
        error_message=answer.error_message,
    )
    msg.services.extend(grant_msg(grant) for grant in answer.services)
    if answer.check_balance_result is not None:
        msg.check_balance_result = convert._CHECK_BALANCE_RESULT_PB[answer.check_balance_result]
    if answer.balance_after_micros is not None:
        msg.balance_after_micros = answer.balance_after_micros
    return msg


@settings(derandomize=True, max_examples=1000, deadline=None)
@given(_answer())
def test_in_place_answer_is_the_reference_answer(answer: CreditControlAnswer) -> None:
    built = convert.answer_to_proto(answer)
    reference = _reference(answer)
    assert built == reference
    assert built.SerializeToString(deterministic=True) == reference.SerializeToString(
        deterministic=True
    )
    for grant, entry in zip(answer.services, built.services, strict=True):
        assert entry.HasField("granted") == (grant.granted is not None)  # even all-zero units


def test_zero_units_are_present_on_the_wire() -> None:
    grant = ServiceGrant(rating_group=1, service_identifier=None, result_code=ResultCode.SUCCESS)
    answer = CreditControlAnswer("s", 0, ResultCode.SUCCESS, (grant,))
    zero = CreditControlAnswer(
        "s", 0, ResultCode.SUCCESS, (ServiceGrant(1, None, ResultCode.SUCCESS, Units()),)
    )
    assert not convert.answer_to_proto(answer).services[0].HasField("granted")
    assert convert.answer_to_proto(zero).services[0].HasField("granted")
