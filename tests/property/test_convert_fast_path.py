"""The front door's fast request path answers exactly as the field-by-field path, or defers to it.

``cluster.convert.request_from_proto`` takes ``_request_fast`` for well-formed requests and the
checked path otherwise (which names the broken field). For any message, the fast path must
either decline (None) or return what the checked path returns; and it must decline every message
the checked path rejects, so an error is never skipped.
"""

from __future__ import annotations

from typing import TypeVar

from hypothesis import event, given, settings
from hypothesis import strategies as st

from cluster import convert
from cluster.convert import ValidationError
from cluster.pb import billing_pb2 as pb

_GOOD_INTS = st.sampled_from([0, 1, 59, 1024, convert.UNITS_MAX])
_BAD_INTS = st.sampled_from([-1, convert.UNITS_MAX + 1])
_GOOD_TEXT = st.sampled_from(["s-1", "sub-000001", "x" * 64, "+4930", "é"])
_BAD_TEXT = st.sampled_from(["x" * 65, "x" * 257, "bad\nline", "tab\t"])


T = TypeVar("T")


def _maybe_bad(draw: st.DrawFn, good: st.SearchStrategy[T], bad: st.SearchStrategy[T]) -> T:
    """Mostly a valid value; now and then (1 in 30) an invalid one, so that most examples are
    valid but for one field and every rule gets exercised alone."""
    return draw(bad) if draw(st.integers(0, 29)) == 0 else draw(good)


@st.composite
def _units(draw: st.DrawFn) -> pb.Units:
    values = [_maybe_bad(draw, _GOOD_INTS, _BAD_INTS) for _ in range(6)]
    return pb.Units(
        time_s=values[0],
        total_octets=values[1],
        input_octets=values[2],
        output_octets=values[3],
        service_units=values[4],
        money_micros=values[5],
    )


@st.composite
def _service(draw: st.DrawFn) -> pb.ServiceUsage:
    entry = pb.ServiceUsage()
    if draw(st.booleans()):
        entry.rating_group = draw(st.sampled_from([0, 10, 100, 200, 300]))
    if draw(st.booleans()):
        entry.service_identifier = draw(st.sampled_from([0, 1, 7]))
    if draw(st.booleans()):
        entry.requested.CopyFrom(draw(_units()))
    count = _maybe_bad(draw, st.sampled_from([0, 1, 2]), st.just(convert.USED_MAX + 1))
    for _ in range(count):
        report = entry.used.add()
        if _maybe_bad(draw, st.just(True), st.just(False)):
            report.units.CopyFrom(draw(_units()))
        report.reporting_reason = _maybe_bad(draw, st.sampled_from([0, 1, 2, 3]), st.just(99))  # type: ignore[assignment]
        report.tariff_change_usage = _maybe_bad(draw, st.sampled_from([0, 1, 2, 3]), st.just(9))  # type: ignore[assignment]
    return entry


@st.composite
def _request(draw: st.DrawFn) -> pb.CreditControlRequest:
    kind = _maybe_bad(draw, st.sampled_from([1, 2, 3, 4]), st.sampled_from([0, 9]))
    single = kind in (pb.REQUEST_TYPE_INITIAL, pb.REQUEST_TYPE_EVENT)
    good_number = st.just(0) if single else st.sampled_from([1, 2, 7])
    bad_number = st.just(1) if single else st.just(0)
    event = kind == pb.REQUEST_TYPE_EVENT
    good_action = st.sampled_from([1, 2, 3, 4]) if event else st.just(0)
    bad_action = st.sampled_from([0, 99]) if event else st.sampled_from([1, 99])
    msg = pb.CreditControlRequest(
        session_id=_maybe_bad(draw, _GOOD_TEXT, st.one_of(_BAD_TEXT, st.just(""))),
        request_type=kind,  # type: ignore[arg-type]
        request_number=_maybe_bad(draw, good_number, bad_number),
        subscriber_id=_maybe_bad(draw, _GOOD_TEXT, st.one_of(_BAD_TEXT, st.just(""))),
        requested_action=_maybe_bad(draw, good_action, bad_action),  # type: ignore[arg-type]
        destination=_maybe_bad(draw, st.one_of(st.just(""), _GOOD_TEXT), _BAD_TEXT),
        visited_plmn=_maybe_bad(draw, st.one_of(st.just(""), _GOOD_TEXT), _BAD_TEXT),
        retransmission=draw(st.booleans()),
    )
    if _maybe_bad(draw, st.just(True), st.just(False)):
        msg.event_time.seconds = _maybe_bad(
            draw,
            st.sampled_from([-62135596800, 0, 1_790_000_000, 253402300799]),
            st.sampled_from([-62135596801, 253402300800]),
        )
        msg.event_time.nanos = _maybe_bad(
            draw, st.sampled_from([0, 999_999_999]), st.sampled_from([-1, 1_000_000_000])
        )
    count = _maybe_bad(draw, st.sampled_from([0, 1, 2, 3]), st.just(convert.SERVICES_MAX + 1))
    msg.services.extend(draw(st.lists(_service(), min_size=count, max_size=count)))
    return msg


@settings(derandomize=True, max_examples=1500, deadline=None)
@given(_request())
def test_fast_path_equals_checked_path_or_declines(msg: pb.CreditControlRequest) -> None:
    fast = convert._request_fast(msg)
    event(f"fast path {'declined' if fast is None else 'accepted'}")
    try:
        checked = convert._request_checked(msg)
    except ValidationError:
        assert fast is None, "the fast path accepted a request the checked path rejects"
        return
    if fast is not None:
        assert fast == checked
        assert fast.idempotency_key == checked.idempotency_key


def test_a_typical_request_takes_the_fast_path() -> None:
    msg = pb.CreditControlRequest(
        session_id="s-1",
        request_type=pb.REQUEST_TYPE_UPDATE,
        request_number=3,
        subscriber_id="sub-1",
        destination="+4930",
    )
    msg.event_time.seconds = 1_790_000_000
    entry = msg.services.add(rating_group=100)
    entry.requested.time_s = 60
    entry.used.add().units.time_s = 42
    fast = convert._request_fast(msg)
    assert fast is not None
    assert fast == convert._request_checked(msg)
    assert fast.services[0].used[0].units.time_s == 42
