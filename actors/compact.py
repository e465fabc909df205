"""Compact in-memory storage of an owner's idle subscribers and accounts.

An owner holds hundreds of thousands of subscribers, nearly all idle at any moment. As Python
objects a subscriber with its account costs ~700-1,200 bytes (two slotted objects, a dict for
usage counters, datetimes, per-row strings, two dict entries); the target is at most 500 bytes
per subscriber of owner RSS including the process itself (issue 4). So an idle subscriber and
its own account live here *cold*: one ``bytes`` record (struct-packed fields, plan/currency/mode
as indexes into small tables) under the subscriber id, about 200 bytes in all.

The domain sees ordinary mappings (:class:`SubscriberMap`, :class:`AccountMap` behind
``ShardState.subscribers`` / ``.accounts``): reading a cold key *hydrates* the pair into real
:class:`~billing.state.Subscriber` / :class:`~billing.state.Account` objects (hot), which the
domain then mutates as usual. The owner *freezes* hot pairs back after they were committed and
hold no reservation (:meth:`Directory.freeze`). Freezing happens only between steps with nothing
pending, so a frozen record is always the committed truth.

Every account is the own account of the subscriber with the same id (a shared account belongs to
its holder subscriber, see actors/_apply.py), so one record per id holds both. An account
without such a subscriber, or with open reservations, simply stays hot.
"""

from __future__ import annotations

import dataclasses
import json
import struct
from collections.abc import Collection, Hashable, Iterable, Iterator, MutableMapping
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import orjson

from billing.protocol import PaymentMode, ServiceKind
from billing.state import Account, Bucket, ShardState, Subscriber

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
# Record layout: header, then [account part], then [buckets], then [foreign account id].
# header: flags(u8) vshard(i32) plan(u16) created_us(i64)
_HEAD = struct.Struct("<BiHq")
# foreign account: account_vshard(i32); the account id is the record's tail
_FOREIGN = struct.Struct("<i")
# own account like its subscriber (same vshard, plan, creation): mode(u8) currency(u16) balance credit
_ACC_SIMPLE = struct.Struct("<BHqq")
# any other account: vshard(i32) mode(u8) currency(u16) plan(u16) balance credit created_us
_ACC_FULL = struct.Struct("<iBHHqqq")
# bucket: spec(u16: bundle, service, groups, rating groups, priority) units valid_from_us
# expires_us (_NEVER: no expiry) flags(u8: 1 = id derived from bundle and valid_from)
_BUCKET = struct.Struct("<Hqqqb")
_COUNT = struct.Struct("<H")
_NEVER = -(2**63)
_HAS_ACCOUNT = 1
_FOREIGN_ACCOUNT_ID = 2  # the subscriber charges another account (a shared one)
_HAS_COUNTERS = 4
_HAS_BUCKETS = 8
_SIMPLE_ACCOUNT = 16
_DERIVED_ID = 1
_MODES = tuple(PaymentMode)
_SERVICES = tuple(ServiceKind)

# The packed layout knows these fields; a field added to the domain's records must be added here
# too. Until then nothing is packed (everything stays hot: correct, only bigger).
_KNOWN_FIELDS = {
    Subscriber: ("subscriber_id", "vshard", "account_id", "account_vshard", "plan_id", "created_at"),
    Account: (
        "account_id", "vshard", "payment_mode", "currency", "plan_id", "balance_micros",
        "credit_limit_micros", "reserved_micros", "created_at", "usage_counters",
    ),
    Bucket: (
        "bucket_id", "account_id", "vshard", "bundle_id", "service", "destination_groups",
        "rating_groups", "units", "reserved_units", "priority", "valid_from", "expires_at",
    ),
}  # fmt: skip
PACKING_ENABLED = all(
    tuple(f.name for f in dataclasses.fields(cls)) == names for cls, names in _KNOWN_FIELDS.items()
)


def _us(at: datetime) -> int:
    return (at - _EPOCH) // _US


def _at(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


_STDLIB_JSON = b"\x00"  # marks counters written by the standard library (see _dump_counters)


def _dump_counters(counters: dict[str, int]) -> bytes:
    """Compact JSON of an account's usage counters: orjson (~0.2 µs against ~3-5 µs for the
    standard library, which builds an encoder per call with ``separators``). orjson refuses an
    int beyond 64 bits, and would read one back as a float: such counters are written by the
    standard library behind a zero byte, and read back by it."""
    try:
        return orjson.dumps(counters)
    except orjson.JSONEncodeError:
        return _STDLIB_JSON + json.dumps(counters, separators=(",", ":")).encode()


def _load_counters(data: bytes) -> dict[str, int]:
    counters: dict[str, int] = (
        json.loads(data[1:]) if data[:1] == _STDLIB_JSON else orjson.loads(data)
    )
    return counters


class _Strings:
    """A small table of repeated values (plan ids, currencies, bundle ids, group tuples)."""

    __slots__ = ("_index", "_values")

    def __init__(self) -> None:
        self._values: list[Any] = []
        self._index: dict[Hashable, int] = {}

    def index(self, value: Hashable) -> int:
        found = self._index.get(value)
        if found is None:
            found = len(self._values)
            if found > 0xFFFF:
                raise OverflowError("more than 65,535 distinct plan ids, currencies or bundles")
            self._values.append(value)
            self._index[value] = found
        return found

    def value(self, index: int) -> Any:
        return self._values[index]


class Directory:
    """Hot objects plus cold records of one owner's subscribers and accounts."""

    __slots__ = (
        "_accounts_cold",
        "_strings",
        "accounts",
        "buckets",
        "buckets_by_account",
        "cold",
        "hot_accounts",
        "hot_subscribers",
        "subscribers",
    )

    def __init__(self) -> None:
        self.cold: dict[str, bytes] = {}
        self.hot_subscribers: dict[str, Subscriber] = {}
        self.hot_accounts: dict[str, Account] = {}
        # The state's bucket dicts (plain dicts: hot buckets only); pass them to ShardState.
        self.buckets: dict[str, Bucket] = {}
        self.buckets_by_account: dict[str, list[str]] = {}
        self._accounts_cold = 0  # cold records that hold an account
        self._strings = _Strings()
        self.subscribers = SubscriberMap(self)
        self.accounts = AccountMap(self)

    def new_state(self) -> ShardState:
        """A ShardState whose subscribers, accounts and buckets live in this directory."""
        return ShardState(
            subscribers=cast(dict[str, Subscriber], self.subscribers),
            accounts=cast(dict[str, Account], self.accounts),
            buckets=self.buckets,
            buckets_by_account=self.buckets_by_account,
        )

    # -- packing ---------------------------------------------------------------------------------

    @staticmethod
    def _derived_id(key: str, bucket: Bucket) -> str:
        """The id provisioning gives a bundle's bucket (billing.accounts.provision_subscriber)."""
        return f"{key}/{bucket.bundle_id}@{bucket.valid_from:%Y%m%dT%H%M%S}"

    def _pack_buckets(self, key: str, buckets: list[Bucket]) -> bytes:
        parts = [_COUNT.pack(len(buckets))]
        for b in buckets:
            spec = (b.bundle_id, b.service, b.destination_groups, b.rating_groups, b.priority)
            derived = b.bucket_id == self._derived_id(key, b)
            parts.append(
                _BUCKET.pack(
                    self._strings.index(spec),
                    b.units,
                    _us(b.valid_from),
                    _NEVER if b.expires_at is None else _us(b.expires_at),
                    _DERIVED_ID if derived else 0,
                )
            )
            if not derived:
                text = b.bucket_id.encode()
                parts.append(_COUNT.pack(len(text)) + text)
        return b"".join(parts)

    def _unpack_buckets(
        self, key: str, vshard: int, record: bytes, offset: int
    ) -> tuple[list[Bucket], int]:
        (count,) = _COUNT.unpack_from(record, offset)
        offset += _COUNT.size
        buckets = []
        for _ in range(count):
            spec, units, start, end, flags = _BUCKET.unpack_from(record, offset)
            offset += _BUCKET.size
            bundle_id, service, groups, rating_groups, priority = self._strings.value(spec)
            bucket = Bucket(
                bucket_id="",
                account_id=key,
                vshard=vshard,
                bundle_id=bundle_id,
                service=service,
                destination_groups=groups,
                rating_groups=rating_groups,
                units=units,
                reserved_units=0,
                priority=priority,
                valid_from=_at(start),
                expires_at=None if end == _NEVER else _at(end),
            )
            if flags & _DERIVED_ID:
                bucket.bucket_id = self._derived_id(key, bucket)
            else:
                (size,) = _COUNT.unpack_from(record, offset)
                offset += _COUNT.size
                bucket.bucket_id = record[offset : offset + size].decode()
                offset += size
            buckets.append(bucket)
        return buckets, offset

    def _pack(
        self, subscriber: Subscriber, account: Account | None, buckets: list[Bucket]
    ) -> bytes:
        """One record for a subscriber, its own account (reserved 0) and that account's buckets."""
        flags = 0
        parts = [b""]
        if subscriber.account_id != subscriber.subscriber_id:
            flags |= _FOREIGN_ACCOUNT_ID
            parts.append(_FOREIGN.pack(subscriber.account_vshard))
        if account is not None:
            flags |= _HAS_ACCOUNT
            mode = _MODES.index(account.payment_mode)
            currency = self._strings.index(account.currency)
            if (
                account.vshard == subscriber.vshard
                and account.plan_id == subscriber.plan_id
                and account.created_at == subscriber.created_at
            ):
                flags |= _SIMPLE_ACCOUNT
                parts.append(
                    _ACC_SIMPLE.pack(
                        mode, currency, account.balance_micros, account.credit_limit_micros
                    )
                )
            else:
                parts.append(
                    _ACC_FULL.pack(
                        account.vshard,
                        mode,
                        currency,
                        self._strings.index(account.plan_id),
                        account.balance_micros,
                        account.credit_limit_micros,
                        _us(account.created_at),
                    )
                )
            if account.usage_counters:
                flags |= _HAS_COUNTERS
                counters = _dump_counters(account.usage_counters)
                parts.append(_COUNT.pack(len(counters)) + counters)
            if buckets:
                flags |= _HAS_BUCKETS
                parts.append(self._pack_buckets(account.account_id, buckets))
        if flags & _FOREIGN_ACCOUNT_ID:
            parts.append(subscriber.account_id.encode())
        parts[0] = _HEAD.pack(
            flags,
            subscriber.vshard,
            self._strings.index(subscriber.plan_id),
            _us(subscriber.created_at),
        )
        return b"".join(parts)

    def _unpack(self, key: str, record: bytes) -> tuple[Subscriber, Account | None, list[Bucket]]:
        flags, vshard, plan, created = _HEAD.unpack_from(record)
        offset = _HEAD.size
        account_vshard = vshard
        if flags & _FOREIGN_ACCOUNT_ID:
            (account_vshard,) = _FOREIGN.unpack_from(record, offset)
            offset += _FOREIGN.size
        plan_id = self._strings.value(plan)
        created_at = _at(created)
        account: Account | None = None
        buckets: list[Bucket] = []
        if flags & _HAS_ACCOUNT:
            if flags & _SIMPLE_ACCOUNT:
                mode, currency, balance, credit = _ACC_SIMPLE.unpack_from(record, offset)
                offset += _ACC_SIMPLE.size
                a_vshard, a_plan, a_created = vshard, plan_id, created_at
            else:
                a_vshard, mode, currency, a_plan_index, balance, credit, a_us = (
                    _ACC_FULL.unpack_from(record, offset)
                )
                offset += _ACC_FULL.size
                a_plan, a_created = self._strings.value(a_plan_index), _at(a_us)
            counters: dict[str, int] = {}
            if flags & _HAS_COUNTERS:
                (size,) = _COUNT.unpack_from(record, offset)
                offset += _COUNT.size
                counters = _load_counters(record[offset : offset + size])
                offset += size
            account = Account(
                account_id=key,
                vshard=a_vshard,
                payment_mode=_MODES[mode],
                currency=self._strings.value(currency),
                plan_id=a_plan,
                balance_micros=balance,
                credit_limit_micros=credit,
                reserved_micros=0,
                created_at=a_created,
                usage_counters=counters,
            )
            if flags & _HAS_BUCKETS:
                buckets, offset = self._unpack_buckets(key, a_vshard, record, offset)
        account_id = record[offset:].decode() if flags & _FOREIGN_ACCOUNT_ID else key
        subscriber = Subscriber(
            subscriber_id=key,
            vshard=vshard,
            account_id=account_id,
            account_vshard=account_vshard,
            plan_id=plan_id,
            created_at=created_at,
        )
        return subscriber, account, buckets

    @staticmethod
    def _has_account(record: bytes) -> bool:
        return bool(record[0] & _HAS_ACCOUNT)

    # -- hot <-> cold ----------------------------------------------------------------------------

    def hydrate(self, key: str) -> bool:
        """Make the pair under ``key`` hot; False if there is no cold record."""
        record = self.cold.pop(key, None)
        if record is None:
            return False
        subscriber, account, buckets = self._unpack(key, record)
        self.hot_subscribers[key] = subscriber
        if account is not None:
            self._accounts_cold -= 1
            self.hot_accounts[key] = account
        if buckets:
            for bucket in buckets:
                self.buckets[bucket.bucket_id] = bucket
            self.buckets_by_account[key] = [b.bucket_id for b in buckets]
        return True

    def freeze(self, keys: Iterable[str], *, keep: set[str] | frozenset[str] = frozenset()) -> int:
        """Pack the hot pairs of ``keys`` that are idle (no reservation); return how many.

        Call only when nothing is pending: the frozen record must be the committed truth.
        Subscribers in ``keep`` (guests held for other owners) stay hot.
        """
        if not PACKING_ENABLED:
            return 0
        frozen = 0
        for key in keys:
            subscriber = self.hot_subscribers.get(key)
            if subscriber is None or key in keep:
                continue
            account = self.hot_accounts.get(key)
            ids = self.buckets_by_account.get(key, ()) if account is not None else ()
            buckets = [self.buckets[i] for i in ids]
            if account is not None and (
                account.reserved_micros
                or account.vshard != subscriber.vshard
                or any(
                    b.reserved_units or b.account_id != key or b.vshard != account.vshard
                    for b in buckets
                )
            ):
                continue
            self.cold[key] = self._pack(subscriber, account, buckets)
            del self.hot_subscribers[key]
            if account is not None:
                del self.hot_accounts[key]
                self._accounts_cold += 1
            if buckets:
                del self.buckets_by_account[key]
                for bucket in buckets:
                    del self.buckets[bucket.bucket_id]
            frozen += 1
        return frozen

    def freeze_all(
        self,
        *,
        keep: set[str] | frozenset[str] = frozenset(),
        also_keep: Collection[str] = frozenset(),
    ) -> int:
        """:meth:`freeze` every hot pair except those in ``keep`` or ``also_keep`` (the owner's
        warm set: thousands of keys, looked up as they are instead of copied into ``keep``
        every sweep)."""
        loose = [k for k in self.hot_subscribers if k not in also_keep and k not in keep]
        return self.freeze(loose, keep=keep)

    def absorb(
        self,
        subscribers: dict[str, Subscriber],
        accounts: dict[str, Account],
        buckets: dict[str, Bucket],
        buckets_by_account: dict[str, list[str]],
    ) -> None:
        """Take freshly loaded records: idle ones go straight to cold, the rest stay hot."""
        self.buckets.update(buckets)
        self.buckets_by_account.update(buckets_by_account)
        for key, account in accounts.items():
            self.hot_accounts[key] = account
        for key, subscriber in subscribers.items():
            self.hot_subscribers[key] = subscriber
            self.freeze((key,))

    def drop_vshards(self, vshards: set[int]) -> None:
        """Forget every subscriber and account of ``vshards`` (they moved to another owner)."""
        for key in [k for k, r in self.cold.items() if _HEAD.unpack_from(r)[1] in vshards]:
            if self._has_account(self.cold.pop(key)):
                self._accounts_cold -= 1
        for key in [k for k, s in self.hot_subscribers.items() if s.vshard in vshards]:
            del self.hot_subscribers[key]
        for key in [k for k, a in self.hot_accounts.items() if a.vshard in vshards]:
            del self.hot_accounts[key]
        for key in [k for k, b in self.buckets.items() if b.vshard in vshards]:
            bucket = self.buckets.pop(key)
            ids = self.buckets_by_account.get(bucket.account_id)
            if ids is not None and key in ids:
                ids.remove(key)
                if not ids:
                    del self.buckets_by_account[bucket.account_id]


class SubscriberMap(MutableMapping[str, Subscriber]):
    """``ShardState.subscribers`` over a :class:`Directory` (reading a cold key hydrates it)."""

    __slots__ = ("_d",)

    def __init__(self, directory: Directory) -> None:
        self._d = directory

    def __getitem__(self, key: str) -> Subscriber:
        found = self._d.hot_subscribers.get(key)
        if found is None and self._d.hydrate(key):
            found = self._d.hot_subscribers.get(key)
        if found is None:
            raise KeyError(key)
        return found

    def get(self, key: str, default: Subscriber | None = None) -> Subscriber | None:  # type: ignore[override]
        """``__getitem__`` without the KeyError: the domain's usual lookup, several per request."""
        directory = self._d
        found = directory.hot_subscribers.get(key)
        if found is None and directory.hydrate(key):
            found = directory.hot_subscribers.get(key)
        return default if found is None else found

    def __contains__(self, key: object) -> bool:
        return key in self._d.hot_subscribers or key in self._d.cold

    def __setitem__(self, key: str, value: Subscriber) -> None:
        self._d.hydrate(key)
        self._d.hot_subscribers[key] = value

    def __delitem__(self, key: str) -> None:
        self._d.hydrate(key)
        del self._d.hot_subscribers[key]

    def __iter__(self) -> Iterator[str]:
        yield from list(self._d.hot_subscribers)
        yield from list(self._d.cold)

    def __len__(self) -> int:
        return len(self._d.hot_subscribers) + len(self._d.cold)


class AccountMap(MutableMapping[str, Account]):
    """``ShardState.accounts`` over a :class:`Directory` (reading a cold key hydrates it)."""

    __slots__ = ("_d",)

    def __init__(self, directory: Directory) -> None:
        self._d = directory

    def __getitem__(self, key: str) -> Account:
        found = self._d.hot_accounts.get(key)
        if found is None:
            record = self._d.cold.get(key)
            if record is not None and Directory._has_account(record):
                self._d.hydrate(key)
                found = self._d.hot_accounts.get(key)
        if found is None:
            raise KeyError(key)
        return found

    def get(self, key: str, default: Account | None = None) -> Account | None:  # type: ignore[override]
        """``__getitem__`` without the KeyError: the domain's usual lookup, several per request."""
        directory = self._d
        found = directory.hot_accounts.get(key)
        if found is None:
            record = directory.cold.get(key)
            if record is not None and record[0] & _HAS_ACCOUNT:
                directory.hydrate(key)
                found = directory.hot_accounts.get(key)
        return default if found is None else found

    def __contains__(self, key: object) -> bool:
        if key in self._d.hot_accounts:
            return True
        record = self._d.cold.get(key) if isinstance(key, str) else None
        return record is not None and Directory._has_account(record)

    def __setitem__(self, key: str, value: Account) -> None:
        self._d.hydrate(key)
        self._d.hot_accounts[key] = value

    def __delitem__(self, key: str) -> None:
        self._d.hydrate(key)
        del self._d.hot_accounts[key]

    def __iter__(self) -> Iterator[str]:
        yield from list(self._d.hot_accounts)
        yield from [k for k, r in list(self._d.cold.items()) if Directory._has_account(r)]

    def __len__(self) -> int:
        return len(self._d.hot_accounts) + self._d._accounts_cold
