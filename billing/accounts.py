"""Accounts and buckets: provisioning, back-office balance movements, and the journal writer.

Every balance movement goes through :class:`Poster`, which changes the balance or bucket, appends
the :class:`~billing.state.JournalEntry` that explains it, and records the touched objects in
``state.pending``. That single path is what makes the journal reproduce every balance
(DESIGN.md invariant 4) and what lets the persistence layer write one step in one transaction.

Funds of an account, in money: ``available = balance - floor - reserved`` where the floor is 0
for prepaid money and ``-credit_limit`` where postpaid credit may be used. Bucket units are
available as ``units - reserved_units`` while the bucket is usable. Reservations never exceed
what is available; a prepaid balance never goes below its floor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from billing.protocol import BalanceCommand, BalanceResult, PaymentMode, ServiceKind
from billing.state import Account, Bucket, EntryKind, JournalEntry, ShardState, Subscriber
from billing.tariff import Plan

BALANCE_KINDS = {
    "topup": EntryKind.TOPUP,
    "adjustment": EntryKind.ADJUSTMENT,
    "refund": EntryKind.REFUND,
}
AMOUNT_MAX_MICROS = 10**15  # one billion currency units: a bound on any single movement


class ChargingError(ValueError):
    """A command the domain refuses; ``field`` names what is wrong, the message says why."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True, slots=True)
class BucketView:
    bucket_id: str
    bundle_id: str
    service: ServiceKind
    units: int
    reserved_units: int
    available_units: int  # 0 when the bucket is not usable now
    usable: bool
    expires_at: datetime | None


@dataclass(frozen=True, slots=True)
class BalanceView:
    """What a subscriber's account holds now: money, what sessions hold, and the buckets."""

    subscriber_id: str
    account_id: str
    payment_mode: PaymentMode
    currency: str
    balance_micros: int
    credit_limit_micros: int
    reserved_micros: int
    available_micros: int  # balance + usable credit - reservations, never negative
    buckets: tuple[BucketView, ...]


# Enum members bound once: a member looked up on its class costs ~60 ns in Python 3.11.
_POSTPAID = PaymentMode.POSTPAID
_HYBRID = PaymentMode.HYBRID


def money_floor(account: Account, consumption_order: Sequence[str]) -> int:
    """The lowest the balance may go by charging: 0 for prepaid money, ``-credit_limit`` for credit.

    A prepaid account never uses credit; a postpaid one always may; a hybrid one may when its
    plan's consumption order names ``credit``.
    """
    mode = account.payment_mode
    if mode is _POSTPAID or (mode is _HYBRID and "credit" in consumption_order):
        return -account.credit_limit_micros
    return 0


def available_micros(account: Account, floor: int) -> int:
    """Money that may still be reserved or charged without crossing the floor (never negative)."""
    free = account.balance_micros - floor - account.reserved_micros
    return free if free > 0 else 0


class Poster:
    """Writes the journal lines of one idempotency key, applying each to its balance or bucket.

    Lines are numbered from 0 in the order they are posted, so ``(vshard, key, line)`` is unique
    and a replay of the journal reproduces every balance and bucket exactly.
    """

    __slots__ = ("at", "key", "line", "record_id", "request_number", "session_id", "state")

    def __init__(
        self,
        state: ShardState,
        key: str,
        at: datetime,
        session_id: str | None = None,
        request_number: int | None = None,
        record_id: str | None = None,
    ) -> None:
        self.state = state
        self.key = key
        self.at = at
        self.session_id = session_id
        self.request_number = request_number
        self.record_id = record_id
        self.line = 0

    def money(
        self,
        account: Account,
        kind: EntryKind,
        amount_micros: int,
        *,
        rating_group: int | None = None,
        note: str = "",
    ) -> None:
        """Add ``amount_micros`` (signed) to the account's balance, with its journal line."""
        account.balance_micros += amount_micros
        self._post(account, kind, amount_micros, None, 0, rating_group, note)

    def units(
        self,
        account: Account,
        bucket: Bucket,
        kind: EntryKind,
        units: int,
        *,
        rating_group: int | None = None,
        note: str = "",
    ) -> None:
        """Add ``units`` (signed) to the bucket, with its journal line."""
        bucket.units += units
        assert bucket.units >= bucket.reserved_units >= 0, "bucket below what it holds"
        self.state.pending.buckets[bucket.bucket_id] = bucket
        self._post(account, kind, 0, bucket.bucket_id, units, rating_group, note)

    def _post(
        self,
        account: Account,
        kind: EntryKind,
        amount_micros: int,
        bucket_id: str | None,
        units: int,
        rating_group: int | None,
        note: str,
    ) -> None:
        pending = self.state.pending
        pending.accounts[account.account_id] = account
        pending.journal.append(
            JournalEntry(  # positional, in field order: this runs for every journal line
                account.vshard,
                account.account_id,
                self.key,
                self.line,
                kind,
                amount_micros,
                bucket_id,
                units,
                self.at,
                self.session_id,
                self.request_number,
                rating_group,
                self.record_id,
                note,
            )
        )
        self.line += 1


def provision_subscriber(
    state: ShardState,
    *,
    subscriber_id: str,
    vshard: int,
    plan: Plan,
    payment_mode: PaymentMode | None,
    initial_balance_micros: int,
    credit_limit_micros: int,
    currency: str | None,
    now: datetime,
    account_id: str | None = None,
    account_vshard: int | None = None,
) -> Subscriber:
    """Create a subscriber charging its own account, or joining the shared account ``account_id``.

    A new account gets an OPENING journal line with its initial balance and one bucket per bundle
    of the plan version in force (each with a BUCKET_GRANT line); a plan without bundles creates
    no buckets. Joining an existing shared account creates neither: the pool is the account's.
    Raises :class:`ChargingError` naming the field on bad input, and changes nothing then.
    """
    if not subscriber_id:
        raise ChargingError("subscriber_id", "must not be empty")
    if subscriber_id in state.subscribers:
        raise ChargingError("subscriber_id", f"subscriber {subscriber_id!r} already exists")
    if vshard < 0:
        raise ChargingError("vshard", f"must be >= 0, got {vshard}")
    if now.tzinfo is None:
        raise ChargingError("now", "must be timezone-aware")
    version = plan.version_at(now)
    order = version.consumption_order
    if "bundles" in order and any(
        m in order and order.index(m) < order.index("bundles") for m in ("prepaid", "credit")
    ):  # the same rule as billing.quota.order_problem (which imports this module)
        raise ChargingError(
            "plan",
            f"{plan.plan_id!r}: consumption order {list(order)} spends money before "
            "bundles: not supported",
        )
    own_id = account_id if account_id is not None else subscriber_id
    if not own_id:
        raise ChargingError("account_id", "must not be empty")
    home = account_vshard if account_vshard is not None else vshard
    account = state.accounts.get(own_id)
    if account is not None:
        if account_id is None:
            raise ChargingError("account_id", f"account {own_id!r} already exists")
        if initial_balance_micros or credit_limit_micros:
            raise ChargingError(
                "initial_balance_micros",
                f"joining the existing account {own_id!r}: balance and credit limit are the "
                "account's, pass 0",
            )
        if currency is not None and currency != account.currency:
            raise ChargingError(
                "currency", f"{currency!r} differs from account {own_id!r}'s {account.currency!r}"
            )
        if payment_mode is not None and payment_mode is not account.payment_mode:
            raise ChargingError(
                "payment_mode",
                f"{payment_mode} differs from account {own_id!r}'s {account.payment_mode}",
            )
        if account.vshard != home:
            raise ChargingError(
                "account_vshard", f"account {own_id!r} lives on vshard {account.vshard}, not {home}"
            )
    else:
        mode = payment_mode if payment_mode is not None else version.payment_mode
        if not 0 <= initial_balance_micros <= AMOUNT_MAX_MICROS:
            raise ChargingError(
                "initial_balance_micros",
                f"must be in [0, {AMOUNT_MAX_MICROS}], got {initial_balance_micros}",
            )
        if not 0 <= credit_limit_micros <= AMOUNT_MAX_MICROS:
            raise ChargingError(
                "credit_limit_micros",
                f"must be in [0, {AMOUNT_MAX_MICROS}], got {credit_limit_micros}",
            )
        if credit_limit_micros and mode in (PaymentMode.PREPAID, PaymentMode.RATED_ONLY):
            raise ChargingError(
                "credit_limit_micros",
                f"a {mode} account has no credit limit, got {credit_limit_micros}",
            )
        account = Account(
            account_id=own_id,
            vshard=home,
            payment_mode=mode,
            currency=currency if currency is not None else version.currency,
            plan_id=plan.plan_id,
            balance_micros=0,
            credit_limit_micros=credit_limit_micros,
            reserved_micros=0,
            created_at=now,
        )
        state.accounts[own_id] = account
        poster = Poster(state, f"open:{own_id}", now)
        poster.money(account, EntryKind.OPENING, initial_balance_micros, note=plan.plan_id)
        if version.bundles:
            stamp = f"{int(now.timestamp()):x}"  # ids stay unique when a bundle is renewed
            expiries: dict[int | None, datetime | None] = {None: None}  # one object per expiry
            for spec in version.bundles:
                days = spec.validity_days
                if days is not None and days not in expiries:
                    expiries[days] = now + timedelta(days=days)
                bucket = Bucket(
                    bucket_id=f"{own_id}/{spec.bundle_id}/{stamp}",
                    account_id=own_id,
                    vshard=home,
                    bundle_id=spec.bundle_id,
                    service=spec.service,
                    destination_groups=spec.destination_groups,
                    rating_groups=spec.rating_groups,
                    units=0,
                    reserved_units=0,
                    priority=spec.priority,
                    valid_from=now,
                    expires_at=expiries[days],
                )
                index_bucket(state, bucket)
                poster.units(
                    account, bucket, EntryKind.BUCKET_GRANT, spec.units, note=spec.bundle_id
                )
    subscriber = Subscriber(
        subscriber_id=subscriber_id,
        vshard=vshard,
        account_id=account.account_id,
        account_vshard=account.vshard,
        plan_id=plan.plan_id,
        created_at=now,
    )
    state.subscribers[subscriber_id] = subscriber
    state.pending.subscribers[subscriber_id] = subscriber
    return subscriber


def apply_balance(state: ShardState, command: BalanceCommand, *, now: datetime) -> BalanceResult:
    """Apply a top-up, adjustment or refund exactly once per idempotency key.

    A repeated key with the same content returns the original result and moves nothing; a key
    reused with different content raises :class:`ChargingError` naming the key. Top-ups and refunds
    credit a positive amount; an adjustment is signed but may not take the balance below what is
    available (the balance floor net of reservations), so it never breaks invariant 4.
    """
    key = command.idempotency_key
    if not key:
        raise ChargingError("idempotency_key", "must not be empty")
    stored = state.balance_results.get(key)
    kind = BALANCE_KINDS.get(command.kind)
    if stored is not None:
        if (stored.kind, stored.subscriber_id, stored.amount_micros) != (
            command.kind,
            command.subscriber_id,
            command.amount_micros,
        ):
            raise ChargingError(
                "idempotency_key",
                f"key {key!r} was already used for a different command "
                f"({stored.kind} {stored.amount_micros} for {stored.subscriber_id!r})",
            )
        return stored
    if kind is None:
        raise ChargingError("kind", f"must be one of {sorted(BALANCE_KINDS)}, got {command.kind!r}")
    amount = command.amount_micros
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise ChargingError("amount_micros", f"must be an int of micros, got {amount!r}")
    if kind is EntryKind.ADJUSTMENT:
        if amount == 0 or abs(amount) > AMOUNT_MAX_MICROS:
            raise ChargingError(
                "amount_micros", f"must be non-zero and within ±{AMOUNT_MAX_MICROS}, got {amount}"
            )
    elif not 0 < amount <= AMOUNT_MAX_MICROS:
        raise ChargingError("amount_micros", f"must be in (0, {AMOUNT_MAX_MICROS}], got {amount}")
    subscriber = state.subscribers.get(command.subscriber_id)
    if subscriber is None:
        raise ChargingError("subscriber_id", f"unknown subscriber {command.subscriber_id!r}")
    account = state.accounts.get(subscriber.account_id)
    if account is None:
        raise ChargingError(
            "subscriber_id",
            f"account {subscriber.account_id!r} of {command.subscriber_id!r} is not held here "
            f"(vshard {subscriber.account_vshard})",
        )
    if amount < 0:
        floor = (
            -account.credit_limit_micros if account.payment_mode is not PaymentMode.PREPAID else 0
        )
        free = available_micros(account, floor)
        if -amount > free:
            raise ChargingError(
                "amount_micros",
                f"adjustment {amount} exceeds the {free} micros available on account "
                f"{account.account_id!r}",
            )
    Poster(state, key, now).money(account, kind, amount, note=command.reason)
    result = BalanceResult(
        idempotency_key=key,
        kind=command.kind,
        subscriber_id=command.subscriber_id,
        account_id=account.account_id,
        amount_micros=amount,
        balance_after_micros=account.balance_micros,
    )
    state.balance_results[key] = result
    state.pending.balance_results[key] = (account.vshard, result)
    state.answer_log.append((now, key))  # pruned by the answers' retention horizon
    return result


def account_buckets(state: ShardState, account_id: str) -> list[Bucket]:
    """The account's buckets in consumption order: lowest priority first, then earliest expiry,
    then id. The index is re-sorted in place, so a loader may fill it in any order."""
    ids = state.buckets_by_account.get(account_id)
    if not ids:
        return []
    buckets = state.buckets
    found = [buckets[i] for i in ids]
    if len(found) > 1 and not _in_order(found):
        found.sort(key=consumption_key)
        ids[:] = [b.bucket_id for b in found]
    return found


def _in_order(buckets: list[Bucket]) -> bool:
    """True when ``buckets`` are already in consumption order (the usual case: no sort)."""
    prev = buckets[0]
    for bucket in buckets[1:]:
        if bucket.priority != prev.priority:
            if bucket.priority < prev.priority:
                return False
        elif bucket.expires_at != prev.expires_at:
            if prev.expires_at is None or (
                bucket.expires_at is not None and bucket.expires_at < prev.expires_at
            ):
                return False
        elif bucket.bucket_id < prev.bucket_id:
            return False
        prev = bucket
    return True


def index_bucket(state: ShardState, bucket: Bucket) -> None:
    """Add ``bucket`` to the state and to its account's list, keeping consumption order:
    lowest priority first, then earliest expiry, then id. Loaders must add buckets this way."""
    state.buckets[bucket.bucket_id] = bucket
    ids = state.buckets_by_account.setdefault(bucket.account_id, [])
    ids.append(bucket.bucket_id)
    if len(ids) > 1:
        ids.sort(key=lambda i: consumption_key(state.buckets[i]))


def consumption_key(bucket: Bucket) -> tuple[int, float, str]:
    expiry = bucket.expires_at.timestamp() if bucket.expires_at is not None else float("inf")
    return (bucket.priority, expiry, bucket.bucket_id)


def balance_view(state: ShardState, subscriber_id: str, *, now: datetime) -> BalanceView:
    """The subscriber's account as it stands at ``now``; expired buckets show 0 available."""
    subscriber = state.subscribers.get(subscriber_id)
    if subscriber is None:
        raise ChargingError("subscriber_id", f"unknown subscriber {subscriber_id!r}")
    account = state.accounts.get(subscriber.account_id)
    if account is None:
        raise ChargingError("subscriber_id", f"account {subscriber.account_id!r} is not held here")
    floor = -account.credit_limit_micros if account.payment_mode is not PaymentMode.PREPAID else 0
    views = []
    for bucket in account_buckets(state, account.account_id):
        usable = bucket.usable_at(now)
        views.append(
            BucketView(
                bucket_id=bucket.bucket_id,
                bundle_id=bucket.bundle_id,
                service=bucket.service,
                units=bucket.units,
                reserved_units=bucket.reserved_units,
                available_units=bucket.units - bucket.reserved_units if usable else 0,
                usable=usable,
                expires_at=bucket.expires_at,
            )
        )
    return BalanceView(
        subscriber_id=subscriber_id,
        account_id=account.account_id,
        payment_mode=account.payment_mode,
        currency=account.currency,
        balance_micros=account.balance_micros,
        credit_limit_micros=account.credit_limit_micros,
        reserved_micros=account.reserved_micros,
        available_micros=available_micros(account, floor),
        buckets=tuple(views),
    )


def expire_buckets(state: ShardState, *, now: datetime) -> list[str]:
    """Remove the units of buckets expired at ``now`` (BUCKET_EXPIRY lines), and drop them.

    A bucket still holding units for a session is left until that reservation is released (the
    units were granted while valid). The zeroed bucket is written through ``pending.buckets``
    and leaves memory; the persistence layer keeps its row for audit.
    """
    expired: list[str] = []
    for account_id, ids in list(state.buckets_by_account.items()):
        keep: list[str] = []
        for bucket_id in ids:
            bucket = state.buckets[bucket_id]
            if bucket.expires_at is None or now < bucket.expires_at or bucket.reserved_units:
                keep.append(bucket_id)
                continue
            account = state.accounts[account_id]
            if bucket.units:
                Poster(state, f"expire:{bucket_id}", now).units(
                    account, bucket, EntryKind.BUCKET_EXPIRY, -bucket.units, note=bucket.bundle_id
                )
            state.pending.buckets[bucket_id] = bucket
            del state.buckets[bucket_id]
            expired.append(bucket_id)
        if keep:
            state.buckets_by_account[account_id] = keep
        else:
            del state.buckets_by_account[account_id]
    return expired
