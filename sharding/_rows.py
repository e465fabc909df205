"""How each domain record maps onto its table's columns, both ways.

Each table is described once (:class:`Table`): its columns with their PostgreSQL types, and the
conversion of a record to a row and back. Writes are column-wise ``unnest`` of arrays (one
statement for a whole batch); reads turn rows back into records equal (``==``) to the ones
written. A dataclass field that has no column yet (added to ``billing.state`` after the
migration) is kept in the row's ``extra`` jsonb, so nothing a record holds is ever dropped.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from billing.protocol import BalanceResult, CreditControlAnswer, PaymentMode, ServiceKind
from billing.state import Account, Bucket, EntryKind, JournalEntry, Reservation, Session, Subscriber
from sharding._codec import CodecError, decoder, dumps, encode_json, encoder

__all__ = [
    "ACCOUNTS",
    "BUCKETS",
    "JOURNAL",
    "SESSIONS",
    "SUBSCRIBERS",
    "Table",
    "answer_data",
    "balance_result_data",
    "batch_json",
    "decode_answer",
    "decode_balance_result",
    "encode_answer",
    "encode_balance_result",
]

Row = tuple[Any, ...]
_RESERVATIONS = dict[int, Reservation]
_enc_reservations = encoder(_RESERVATIONS)
_dec_reservations = decoder(_RESERVATIONS)


def _zone_utc() -> Any:
    try:
        return ZoneInfo("UTC")  # what psycopg gives loaded timestamptz (TimeZone=UTC)
    except (KeyError, OSError):  # no time zone database
        return UTC


_ZONE_UTC = _zone_utc()


def _aware(value: datetime, what: str) -> datetime | str:
    """``value`` for :func:`batch_json`: itself in UTC (orjson writes it natively, the same text
    as ``isoformat()``), else its ``isoformat()`` (orjson would drop an offset's seconds)."""
    tz = value.tzinfo
    if tz is UTC or tz is _ZONE_UTC:
        return value
    if value.tzinfo is None:
        raise CodecError(f"{what} must be timezone-aware (UTC), got naive {value!r}")
    return value.isoformat()


def encode_answer(answer: CreditControlAnswer) -> str:
    """Compact JSON of an answer (defaults left out, enums as values)."""
    return encode_json(CreditControlAnswer, answer)


answer_data: Callable[[CreditControlAnswer], dict[str, Any]] = encoder(CreditControlAnswer)
"""The JSON-able form of an answer (what :func:`encode_answer` serialises)."""
balance_result_data: Callable[[BalanceResult], dict[str, Any]] = encoder(BalanceResult)


_dec_answer = decoder(CreditControlAnswer)


def decode_answer(text: str) -> CreditControlAnswer:
    """The answer :func:`encode_answer` wrote, identical to the original."""
    value: CreditControlAnswer = _dec_answer(json.loads(text))
    return value


def encode_balance_result(result: BalanceResult) -> str:
    """Compact JSON of a back-office balance result."""
    return encode_json(BalanceResult, result)


_dec_balance_result = decoder(BalanceResult)


def decode_balance_result(text: str) -> BalanceResult:
    """The result :func:`encode_balance_result` wrote, identical to the original."""
    value: BalanceResult = _dec_balance_result(json.loads(text))
    return value


_NO_EXTRA: dict[str, Any] = {}


class _EnumLookup(dict[str, Any]):
    """value -> member, a dict lookup (the enum's own call is ~10x slower on a 100k-row load)."""

    def __init__(self, enum_type: type[enum.Enum]) -> None:
        super().__init__((m.value, m) for m in enum_type)
        self.enum_type = enum_type

    def __missing__(self, value: str) -> Any:
        raise CodecError(f"stored value {value!r} is not a {self.enum_type.__name__}")


_PAYMENT_MODE = _EnumLookup(PaymentMode)
_SERVICE_KIND = _EnumLookup(ServiceKind)
_ENTRY_KIND = _EnumLookup(EntryKind)


def _counters(text: str) -> dict[str, int]:
    """``usage_counters`` from its jsonb text: orjson (~5x faster; half of a big owner's reload
    was this), unless it read a number as a float: orjson turns an integer beyond 64 bits into
    one where ``json.loads`` keeps it exact, so then (and for anything orjson refuses) the
    standard library parses it."""
    if text == "{}":
        return {}
    try:
        value: dict[str, int] = orjson.loads(text)
    except orjson.JSONDecodeError:
        return _json_counters(text)
    if type(value) is not dict or float in map(type, value.values()):
        return _json_counters(text)
    return value


def _json_counters(text: str) -> dict[str, int]:
    value: dict[str, int] = json.loads(text)
    return value


@cache
def _extra_fields(cls: type, columns: frozenset[str]) -> tuple[tuple[str, Any, Any], ...]:
    """Fields of ``cls`` without a column: (name, encoder, decoder), kept in ``extra``."""
    hints = typing.get_type_hints(cls)
    return tuple(
        (f.name, encoder(hints[f.name]), decoder(hints[f.name]))
        for f in dataclasses.fields(cls)
        if f.name not in columns
    )


@dataclass(frozen=True, slots=True)
class Table:
    """One subscriber-owned table: columns (name, pg type) in order, key, record <-> row."""

    name: str
    record: type
    columns: tuple[tuple[str, str], ...]  # the last one is always ("extra", "jsonb")
    key: tuple[str, ...]
    to_row: Callable[[Any], Row]
    from_row: Callable[[Row], Any]

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c for c, _ in self.columns)

    def extra_fields(self) -> tuple[tuple[str, Any, Any], ...]:
        """The record's fields without a column, (name, encoder, decoder), kept in ``extra``."""
        return _extra_fields(self.record, frozenset(c for c, _ in self.columns) - {"extra"})

    def encode_extra(self, record: Any) -> dict[str, Any] | None:
        fields = self.extra_fields()
        if not fields:
            return None
        return {name: enc(getattr(record, name)) for name, enc, _ in fields}

    def decode_extra(self, text: Any) -> dict[str, Any]:
        if text is None:
            return _NO_EXTRA
        data = json.loads(text) if isinstance(text, str | bytes) else text
        decs = {name: dec for name, _, dec in self.extra_fields()}
        return {k: decs[k](v) for k, v in data.items() if k in decs}

    def insert_sql(self, *, upsert: bool) -> str:
        """``INSERT ... SELECT FROM json_array_elements(%s)``: one statement for a whole batch.

        The batch travels as ONE JSON text (an array of positional rows, :meth:`batch_json`):
        encoding it is a single C-accelerated ``orjson.dumps``, where per-column arrays cost a
        Python call per value to adapt (measured: ~10x slower at 1,000 rows). Each column is
        cast back on the server; jsonb and array columns arrive as JSON text.
        """
        names = self.column_names
        selects = ", ".join(_select_expr(i, t) for i, (_, t) in enumerate(self.columns))
        sql = (
            f"INSERT INTO {self.name} ({', '.join(names)}) "
            f"SELECT {selects} FROM jsonb_array_elements(%s::jsonb) AS r"
        )
        if upsert:
            updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in names if c not in self.key)
            sql += f" ON CONFLICT ({', '.join(self.key)}) DO UPDATE SET {updates}"
        return sql

    def update_sql(self) -> str:
        """``UPDATE ... FROM`` the batch: every row of :meth:`batch_json` whose key exists is
        rewritten (all non-key columns, as :meth:`insert_sql`'s upsert does).

        ``billing_commit`` (migration 0004) updates accounts this way first: an
        upsert of an existing row costs a speculative index probe, a tuple lock (its own WAL
        record) and then the update; a plain UPDATE is the index probe and the (HOT) update.
        The rows it did not find are then written by :meth:`insert_missing_sql`.
        """
        names = self.column_names
        selects = ", ".join(_select_expr(i, t) for i, (_, t) in enumerate(self.columns))
        updates = ", ".join(f"{c} = x.{c}" for c in names if c not in self.key)
        match = " AND ".join(f"t.{c} = x.{c}" for c in self.key)
        return (
            f"UPDATE {self.name} AS t SET {updates} FROM (SELECT {selects} "
            f"FROM jsonb_array_elements(%s::jsonb) AS r) AS x ({', '.join(names)}) WHERE {match}"
        )

    def insert_missing_sql(self) -> str:
        """:meth:`insert_sql`'s upsert of the batch's rows whose key is not in the table yet
        (after :meth:`update_sql`; a row a concurrent commit inserted meanwhile is upserted)."""
        index = {c: i for i, (c, _) in enumerate(self.columns)}
        match = " AND ".join(
            f"t.{c} = {_select_expr(index[c], dict(self.columns)[c])}" for c in self.key
        )
        upsert = self.insert_sql(upsert=True)
        source = " FROM jsonb_array_elements(%s::jsonb) AS r"
        missing = f"{source} WHERE NOT EXISTS (SELECT 1 FROM {self.name} AS t WHERE {match})"
        return upsert.replace(source, missing, 1)

    def select_sql(self) -> str:
        """Rows of some vshards; jsonb columns come back as text (decoded only when needed)."""
        cols = ", ".join(f"{c}::text" if t == "jsonb" else c for c, t in self.columns)
        return f"SELECT {cols} FROM {self.name} WHERE vshard = ANY(%s)"

    def batch_json(self, records: Sequence[Any]) -> str:
        """The batch as JSON text of positional rows (what :meth:`insert_sql` takes)."""
        return batch_json([self.to_row(r) for r in records])


def batch_json(rows: Sequence[Sequence[Any]]) -> str:
    """Positional rows as one JSON text (datetimes as ISO 8601 with offset, ``isoformat()``).

    :func:`sharding._codec.dumps`: orjson, with the standard library's ``json.dumps`` for what
    orjson cannot write the same (the JSON value is always the one ``json.dumps`` gives).
    """
    return dumps(rows)


def _select_expr(index: int, pg_type: str) -> str:
    if pg_type == "text":
        return f"r->>{index}"
    if pg_type == "jsonb":
        return f"NULLIF(r->{index}, 'null'::jsonb)"
    if pg_type == "text[]":
        return f"ARRAY(SELECT jsonb_array_elements_text(r->{index}))"
    if pg_type == "integer[]":
        return f"ARRAY(SELECT jsonb_array_elements_text(r->{index})::integer)"
    return f"(r->>{index})::{pg_type}"


def _make_tables() -> dict[str, Table]:
    tables: dict[str, Table] = {}

    def extra_of(name: str) -> Callable[[Any], Any]:
        """The table's ``extra`` encoder: a constant None while every field has a column."""
        fields: list[tuple[tuple[str, Any, Any], ...]] = []

        def encode(record: Any) -> dict[str, Any] | None:
            if not fields:
                fields.append(tables[name].extra_fields())
            if not fields[0]:
                return None
            return {n: enc(getattr(record, n)) for n, enc, _ in fields[0]}

        return encode

    def build(
        name: str,
        record: type,
        columns: tuple[tuple[str, str], ...],
        key: tuple[str, ...],
        to_row: Callable[[Any], Row],
        names: tuple[str, ...],
        values: Callable[[Row], tuple[Any, ...]],
    ) -> None:
        """``values(row)`` gives the fields ``names`` in that order; the record is built
        positionally (~2.5x faster than by keyword, which counts on a 100k-row load) while
        ``names`` is a prefix of the dataclass's fields, else by keyword."""
        order = tuple(f.name for f in dataclasses.fields(record))
        positional = order[: len(names)] == names

        def from_row(row: Row) -> Any:
            extra = row[-1]
            if positional:
                if extra is None:
                    return record(*values(row))
                return record(*values(row), **tables[name].decode_extra(extra))
            kwargs = dict(zip(names, values(row), strict=True))
            if extra is not None:
                kwargs.update(tables[name].decode_extra(extra))
            return record(**kwargs)

        tables[name] = Table(name, record, (*columns, ("extra", "jsonb")), key, to_row, from_row)

    sub_extra = extra_of("subscribers")
    build(
        "subscribers",
        Subscriber,
        (("vshard", "integer"), ("subscriber_id", "text"), ("account_id", "text"),
         ("account_vshard", "integer"), ("plan_id", "text"), ("created_at", "timestamptz")),
        ("vshard", "subscriber_id"),
        lambda s: (s.vshard, s.subscriber_id, s.account_id, s.account_vshard, s.plan_id,
                   _aware(s.created_at, "subscriber.created_at"), sub_extra(s)),
        ("subscriber_id", "vshard", "account_id", "account_vshard", "plan_id", "created_at"),
        lambda r: (r[1], r[0], r[2], r[3], r[4], r[5]),
    )  # fmt: skip

    acc_extra = extra_of("accounts")
    build(
        "accounts",
        Account,
        (("vshard", "integer"), ("account_id", "text"), ("payment_mode", "text"),
         ("currency", "text"), ("plan_id", "text"), ("balance_micros", "bigint"),
         ("credit_limit_micros", "bigint"), ("reserved_micros", "bigint"),
         ("created_at", "timestamptz"), ("usage_counters", "jsonb")),
        ("vshard", "account_id"),
        lambda a: (a.vshard, a.account_id, a.payment_mode.value, a.currency, a.plan_id,
                   a.balance_micros, a.credit_limit_micros, a.reserved_micros,
                   _aware(a.created_at, "account.created_at"), a.usage_counters,
                   acc_extra(a)),
        ("account_id", "vshard", "payment_mode", "currency", "plan_id", "balance_micros",
         "credit_limit_micros", "reserved_micros", "created_at", "usage_counters"),
        lambda r: (r[1], r[0], _PAYMENT_MODE[r[2]], r[3], r[4], r[5], r[6], r[7], r[8],
                   _counters(r[9])),
    )  # fmt: skip

    bkt_extra = extra_of("buckets")
    build(
        "buckets",
        Bucket,
        (("vshard", "integer"), ("bucket_id", "text"), ("account_id", "text"),
         ("bundle_id", "text"), ("service", "text"), ("destination_groups", "text[]"),
         ("rating_groups", "integer[]"), ("units", "bigint"), ("reserved_units", "bigint"),
         ("priority", "integer"), ("valid_from", "timestamptz"), ("expires_at", "timestamptz")),
        ("vshard", "bucket_id"),
        lambda b: (b.vshard, b.bucket_id, b.account_id, b.bundle_id, b.service.value,
                   b.destination_groups, b.rating_groups, b.units,
                   b.reserved_units, b.priority, _aware(b.valid_from, "bucket.valid_from"),
                   b.expires_at and _aware(b.expires_at, "bucket.expires_at"), bkt_extra(b)),
        ("bucket_id", "account_id", "vshard", "bundle_id", "service", "destination_groups",
         "rating_groups", "units", "reserved_units", "priority", "valid_from", "expires_at"),
        lambda r: (r[1], r[2], r[0], r[3], _SERVICE_KIND[r[4]], tuple(r[5]), tuple(r[6]), r[7],
                   r[8], r[9], r[10], r[11]),
    )  # fmt: skip

    ses_extra = extra_of("sessions")
    build(
        "sessions",
        Session,
        (("vshard", "integer"), ("session_id", "text"), ("subscriber_id", "text"),
         ("account_id", "text"), ("plan_id", "text"), ("destination", "text"),
         ("visited_plmn", "text"), ("started_at", "timestamptz"),
         ("last_seen_at", "timestamptz"), ("expires_at", "timestamptz"),
         ("next_request_number", "integer"), ("reservations", "jsonb")),
        ("vshard", "session_id"),
        lambda s: (s.vshard, s.session_id, s.subscriber_id, s.account_id, s.plan_id,
                   s.destination, s.visited_plmn, _aware(s.started_at, "session.started_at"),
                   _aware(s.last_seen_at, "session.last_seen_at"),
                   _aware(s.expires_at, "session.expires_at"), s.next_request_number,
                   _enc_reservations(s.reservations), ses_extra(s)),
        ("session_id", "vshard", "subscriber_id", "account_id", "plan_id", "destination",
         "visited_plmn", "started_at", "last_seen_at", "expires_at", "next_request_number",
         "reservations"),
        lambda r: (r[1], r[0], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10],
                   _dec_reservations(json.loads(r[11]))),
    )  # fmt: skip

    jnl_extra = extra_of("journal")
    build(
        "journal",
        JournalEntry,
        (("vshard", "integer"), ("idempotency_key", "text"), ("line", "integer"),
         ("account_id", "text"), ("kind", "text"), ("amount_micros", "bigint"),
         ("bucket_id", "text"), ("units", "bigint"), ("at", "timestamptz"),
         ("session_id", "text"), ("request_number", "integer"), ("rating_group", "integer"),
         ("record_id", "text"), ("note", "text")),
        ("vshard", "idempotency_key", "line"),
        lambda j: (j.vshard, j.idempotency_key, j.line, j.account_id, j.kind.value,
                   j.amount_micros, j.bucket_id, j.units, _aware(j.at, "journal.at"),
                   j.session_id, j.request_number, j.rating_group, j.record_id, j.note,
                   jnl_extra(j)),
        ("vshard", "account_id", "idempotency_key", "line", "kind", "amount_micros",
         "bucket_id", "units", "at", "session_id", "request_number", "rating_group",
         "record_id", "note"),
        lambda r: (r[0], r[3], r[1], r[2], _ENTRY_KIND[r[4]], r[5], r[6], r[7], r[8], r[9],
                   r[10], r[11], r[12], r[13]),
    )  # fmt: skip
    return tables


_TABLES = _make_tables()
SUBSCRIBERS = _TABLES["subscribers"]
ACCOUNTS = _TABLES["accounts"]
BUCKETS = _TABLES["buckets"]
SESSIONS = _TABLES["sessions"]
JOURNAL = _TABLES["journal"]
