"""The orjson encoding of the group commit's rows is the JSON value ``json.dumps`` wrote.

``sharding._rows.batch_json`` (and so ``Table.batch_json``, ``encode_writes``, the answers'
text) moved from the standard library's ``json.dumps`` to ``orjson``. PostgreSQL must receive
the same JSON values as before: the old encoder is kept here, verbatim, as the reference, and
generated records (any text incl. surrogates and non-ASCII, ints beyond 64 bits, datetimes in
UTC and in odd offsets down to the microsecond, every enum, absent and present optionals) are
encoded both ways and parsed back with a *type-strict* comparison (``1``, ``1.0`` and ``true``
differ). Same for the orjson reading of ``usage_counters`` against ``json.loads``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing.protocol import (
    BalanceResult,
    CreditControlAnswer,
    FinalUnitIndication,
    ServiceGrant,
    Units,
)
from billing.state import (
    Account,
    Bucket,
    Changes,
    JournalEntry,
    Reservation,
    Session,
    Subscriber,
)
from sharding import _sql as q
from sharding._codec import CodecError
from sharding._rows import (
    ACCOUNTS,
    BUCKETS,
    JOURNAL,
    SESSIONS,
    SUBSCRIBERS,
    _counters,
    answer_data,
    balance_result_data,
    batch_json,
    decode_answer,
    encode_answer,
)
from sharding.store import encode_writes

SETTINGS = settings(
    derandomize=True,
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# -- the reference: the encoder as it was before orjson (sharding/_rows.py at 0a4880a) ----------


def _old_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise CodecError(f"cannot write {type(value).__name__} value {value!r} to the database")


def old_batch_json(rows: Any) -> str:
    return json.dumps(rows, separators=(",", ":"), ensure_ascii=False, default=_old_default)


def old_encode_writes(changes: Changes, to_rows: Any) -> list[tuple[bytes, str]]:
    """``encode_writes`` as it was, with the rows of each table given by ``to_rows``."""
    writes: list[tuple[bytes, str]] = []
    if changes.journal:
        writes.append((q.SQL_JOURNAL, old_batch_json(to_rows(JOURNAL, changes.journal))))
    if changes.subscribers:
        rows = to_rows(SUBSCRIBERS, list(changes.subscribers.values()))
        writes.append((q.SQL_SUBSCRIBERS, old_batch_json(rows)))
    if changes.accounts:
        rows = to_rows(ACCOUNTS, list(changes.accounts.values()))
        writes.append((q.SQL_ACCOUNTS, old_batch_json(rows)))
    if changes.buckets:
        writes.append((q.SQL_BUCKETS, old_batch_json(to_rows(BUCKETS, changes.buckets.values()))))
    if changes.sessions:
        rows = to_rows(SESSIONS, list(changes.sessions.values()))
        writes.append((q.SQL_SESSIONS, old_batch_json(rows)))
    if changes.ended_sessions:
        ended = [[v, sid] for sid, v in changes.ended_sessions.items()]
        writes.append((q.SQL_END_SESSIONS, old_batch_json(ended)))
    if changes.answers or changes.balance_results:
        answers: list[tuple[int, str, str, dict[str, Any]]] = [
            (v, key, "cc", answer_data(answer)) for key, (v, answer) in changes.answers.items()
        ]
        answers += [
            (v, key, "balance", balance_result_data(result))
            for key, (v, result) in changes.balance_results.items()
        ]
        writes.append((q.SQL_ANSWERS, old_batch_json(answers)))
    return writes


def old_rows(table: Any, records: Any) -> list[Any]:
    """The rows the old ``to_row`` gave: datetimes as datetime objects (the new ``to_row`` hands
    over non-UTC ones as their ``isoformat()`` text; put the datetime back)."""
    out = []
    for record in records:
        row = list(table.to_row(record))
        for i, (_, pg_type) in enumerate(table.columns):
            if pg_type == "timestamptz" and isinstance(row[i], str):
                name = table.column_names[i]
                original = getattr(record, name)
                assert row[i] == original.isoformat()
                row[i] = original
        out.append(tuple(row))
    return out


def same(a: Any, b: Any) -> bool:
    """Equal JSON values, types included (``==`` alone says ``1 == 1.0 == True``)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


# -- generated records ---------------------------------------------------------------------------

texts = st.text(st.characters(blacklist_categories=()), max_size=8)  # surrogates too
ints = st.one_of(st.integers(-(2**63), 2**63 - 1), st.integers())  # and beyond 64 bits
offsets = st.one_of(
    st.just(UTC),
    st.just(ZoneInfo("UTC")),
    st.timedeltas(min_value=timedelta(hours=-23), max_value=timedelta(hours=23)).map(timezone),
    st.integers(-23 * 60, 23 * 60).map(lambda m: timezone(timedelta(minutes=m))),
)
times = st.datetimes(timezones=offsets)
maybe_times = st.none() | times

units = st.builds(Units, **{f: ints for f in Units.__dataclass_fields__})
grants = st.builds(
    ServiceGrant,
    rating_group=st.none() | ints,
    service_identifier=st.none() | ints,
    granted=st.none() | units,
    validity_time_s=st.none() | ints,
    final_unit=st.none() | st.builds(FinalUnitIndication, redirect_address=st.none() | texts),
    tariff_time_change=maybe_times,
    quota_threshold=st.none() | ints,
    cost_micros=ints,
    error_message=texts,
    uncharged_micros=ints,
)
answers = st.builds(
    CreditControlAnswer,
    session_id=texts,
    request_number=ints,
    services=st.lists(grants, max_size=3).map(tuple),
    cost_micros=ints,
    error_message=texts,
    balance_after_micros=st.none() | ints,
)
balance_results = st.builds(BalanceResult, *(texts,) * 4, ints, ints)
reservations = st.builds(
    Reservation,
    rating_group=ints,
    granted_units=ints,
    money_micros=ints,
    bucket_units=st.dictionaries(texts, ints, max_size=3),
    expires_at=times,
    granted_at=maybe_times,
    tariff_switch_at=maybe_times,
)
subscribers = st.builds(Subscriber, texts, ints, texts, ints, texts, times)
accounts = st.builds(
    Account,
    account_id=texts,
    vshard=ints,
    currency=texts,
    plan_id=texts,
    balance_micros=ints,
    credit_limit_micros=ints,
    reserved_micros=ints,
    created_at=times,
    usage_counters=st.dictionaries(texts, ints, max_size=4),
)
buckets = st.builds(
    Bucket,
    bucket_id=texts,
    account_id=texts,
    vshard=ints,
    bundle_id=texts,
    destination_groups=st.lists(texts, max_size=3).map(tuple),
    rating_groups=st.lists(ints, max_size=3).map(tuple),
    units=ints,
    reserved_units=ints,
    priority=ints,
    valid_from=times,
    expires_at=maybe_times,
)
sessions = st.builds(
    Session,
    session_id=texts,
    vshard=ints,
    subscriber_id=texts,
    account_id=texts,
    plan_id=texts,
    destination=st.none() | texts,
    visited_plmn=st.none() | texts,
    started_at=times,
    last_seen_at=times,
    expires_at=times,
    next_request_number=ints,
    reservations=st.dictionaries(ints, reservations, max_size=2),
)
journal = st.builds(
    JournalEntry,
    vshard=ints,
    account_id=texts,
    idempotency_key=texts,
    line=ints,
    amount_micros=ints,
    bucket_id=st.none() | texts,
    units=ints,
    at=times,
    session_id=st.none() | texts,
    request_number=st.none() | ints,
    rating_group=st.none() | ints,
    record_id=st.none() | texts,
    note=texts,
)


@st.composite
def changes(draw: st.DrawFn) -> Changes:
    c = Changes()
    c.journal.extend(draw(st.lists(journal, max_size=4)))
    c.subscribers.update((s.subscriber_id, s) for s in draw(st.lists(subscribers, max_size=3)))
    c.accounts.update((a.account_id, a) for a in draw(st.lists(accounts, max_size=3)))
    c.buckets.update((b.bucket_id, b) for b in draw(st.lists(buckets, max_size=3)))
    c.sessions.update((s.session_id, s) for s in draw(st.lists(sessions, max_size=3)))
    c.ended_sessions.update(draw(st.dictionaries(texts, ints, max_size=3)))
    c.answers.update(draw(st.dictionaries(texts, st.tuples(ints, answers), max_size=3)))
    c.balance_results.update(
        draw(st.dictionaries(texts, st.tuples(ints, balance_results), max_size=3))
    )
    return c


def _parse(text: str) -> Any:
    # Lone surrogates survive json.dumps(ensure_ascii=False) and json.loads alike.
    return json.loads(text)


# -- the properties ------------------------------------------------------------------------------


@SETTINGS
@given(changes())
def test_encode_writes_sends_the_json_values_json_dumps_sent(c: Changes) -> None:
    new = encode_writes(c)
    old = old_encode_writes(c, old_rows)
    assert [sql for sql, _ in new] == [sql for sql, _ in old]
    for (sql, new_text), (_, old_text) in zip(new, old, strict=True):
        assert isinstance(new_text, str)
        new_value = _parse(new_text)
        if sql == q.SQL_ANSWERS:
            # Since migration 0004 each answer travels as its own JSON text (stored as sent):
            # that text must hold the JSON value the answer object held before.
            assert all(isinstance(row[3], str) for row in new_value)
            new_value = [[*row[:3], _parse(row[3])] for row in new_value]
        assert same(new_value, _parse(old_text)), sql


@SETTINGS
@given(st.lists(st.lists(st.one_of(ints, texts, st.none(), st.booleans(), times), max_size=5)))
def test_batch_json_of_any_rows_is_json_dumps_value(rows: list[list[Any]]) -> None:
    """Raw rows, datetimes included as objects: UTC and whole-minute offsets go through
    orjson natively, which must write ``isoformat()``'s text (seconds offsets do not occur in
    rows: ``to_row`` turns them into text; they are left out here)."""
    rows = [
        [
            v.astimezone(UTC)
            if isinstance(v, datetime) and v.utcoffset() % timedelta(minutes=1)  # type: ignore[operator]
            else v
            for v in row
        ]
        for row in rows
    ]
    assert same(_parse(batch_json(rows)), _parse(old_batch_json(rows)))


@SETTINGS
@given(answers)
def test_answer_text_is_json_dumps_value_and_decodes_back(answer: CreditControlAnswer) -> None:
    text = encode_answer(answer)
    reference = json.dumps(answer_data(answer), separators=(",", ":"), ensure_ascii=False)
    assert same(_parse(text), _parse(reference))
    try:
        text.encode()
    except UnicodeEncodeError:
        return  # a lone surrogate: PostgreSQL would refuse it, before and after alike
    times = [g.tariff_time_change for g in answer.services if g.tariff_time_change]
    if any(t.utcoffset() % timedelta(seconds=1) for t in times):  # type: ignore[operator]
        return  # fromisoformat drops an offset's microseconds (so did the old codec)
    assert decode_answer(text) == answer


@SETTINGS
@given(st.dictionaries(texts, ints, max_size=5), st.sampled_from([None, (", ", ": ")]))
def test_usage_counters_read_exactly_as_json_loads(
    counters: dict[str, int], separators: tuple[str, str] | None
) -> None:
    """jsonb's text (``{"a": 1}``) or compact; ints beyond 64 bits must stay ints."""
    text = json.dumps(counters, separators=separators, ensure_ascii=False)
    assert same(_counters(text), json.loads(text))


def test_the_comparison_can_fail() -> None:
    """The checks above would see a changed value: ``same`` tells types apart."""
    assert not same(json.loads("[1]"), json.loads("[1.0]"))
    assert not same(json.loads("[1]"), json.loads("[true]"))
    assert not same(json.loads('{"a":null}'), json.loads("{}"))
    assert _counters('{"a": 18446744073709551616}') == {"a": 2**64}
    assert type(_counters('{"a": 18446744073709551616}')["a"]) is int
    odd = datetime(2026, 1, 1, tzinfo=timezone(timedelta(seconds=30)))
    assert _parse(SUBSCRIBERS.batch_json([Subscriber("s", 1, "a", 1, "p", odd)]))[0][5] == (
        "2026-01-01T00:00:00+00:00:30"
    )
