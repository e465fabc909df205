"""The compact JSON codec: answers and balance results come back identical (no database)."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime

import pytest

from billing.protocol import CreditControlAnswer, ResultCode, Units
from billing.state import Reservation, Subscriber
from sharding import _samples as sample
from sharding._codec import CodecError, decode_json, encode_json
from sharding._rows import (
    SUBSCRIBERS,
    Table,
    decode_answer,
    decode_balance_result,
    encode_answer,
    encode_balance_result,
)


def test_answer_round_trip_is_identical() -> None:
    original = sample.answer("sess-1", 4)
    text = encode_answer(original)
    back = decode_answer(text)
    assert back == original
    assert type(back.services) is tuple
    assert type(back.result_code) is ResultCode
    assert back.services[0].tariff_time_change == original.services[0].tariff_time_change


def test_answer_encoding_is_compact() -> None:
    minimal = CreditControlAnswer("s", 1, ResultCode.SUCCESS)
    assert json.loads(encode_answer(minimal)) == {
        "session_id": "s",
        "request_number": 1,
        "result_code": 2001,
    }
    assert decode_answer(encode_answer(minimal)) == minimal


def test_balance_result_round_trip() -> None:
    original = sample.balance_result("k", "a-1", -5)
    assert decode_balance_result(encode_balance_result(original)) == original


def test_reservations_map_keeps_int_keys() -> None:
    res = {10: sample.reservation(10, money_micros=5, bucket_units={"b": 2})}
    back = decode_json(dict[int, Reservation], encode_json(dict[int, Reservation], res))
    assert back == res
    assert list(back) == [10]


def test_bad_stored_text_is_a_clear_error() -> None:
    with pytest.raises(CodecError, match="not JSON"):
        decode_json(Units, "{nope")
    with pytest.raises(CodecError, match="Units has no field 'bogus'"):
        decode_json(Units, '{"bogus": 1}')
    with pytest.raises(CodecError, match="expected an integer"):
        decode_json(Units, '{"time_s": "7"}')
    with pytest.raises(CodecError, match="no JSON encoding"):
        encode_json(complex, 1j)


@dataclasses.dataclass(slots=True)
class WiderSubscriber(Subscriber):
    """A Subscriber as it might look after the domain gains a field without a column yet."""

    tags: tuple[str, ...] = ()
    barred_since: datetime | None = None


def test_fields_without_a_column_travel_in_extra() -> None:
    wider = Table(
        "subscribers",
        WiderSubscriber,
        SUBSCRIBERS.columns,
        SUBSCRIBERS.key,
        SUBSCRIBERS.to_row,
        SUBSCRIBERS.from_row,
    )
    sub = WiderSubscriber(
        "s", 1, "a", 1, "p", sample.T0, tags=("vip",), barred_since=datetime(2026, 2, 1, tzinfo=UTC)
    )
    data = wider.encode_extra(sub)
    assert data is not None
    assert wider.decode_extra(json.loads(json.dumps(data))) == {
        "tags": ("vip",),
        "barred_since": datetime(2026, 2, 1, tzinfo=UTC),
    }
    assert SUBSCRIBERS.encode_extra(sample.subscriber("s", 1, "a")) is None


def test_every_dataclass_field_is_stored() -> None:
    """Each entity field has a column or goes to extra: nothing a record holds is dropped."""
    from sharding._rows import ACCOUNTS, BUCKETS, JOURNAL, SESSIONS

    for table in (SUBSCRIBERS, ACCOUNTS, BUCKETS, SESSIONS, JOURNAL):
        names = {f.name for f in dataclasses.fields(table.record)}
        columns = set(table.column_names) - {"extra"}
        extra = {name for name, _, _ in table.extra_fields()}
        assert names == (names & columns) | extra, table.name
        assert not columns - names, f"{table.name}: column without a field {columns - names}"
