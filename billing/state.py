"""The state an owner keeps for its vshards, and the record of what one step changed.

Entities are plain mutable records (the owner mutates them in one synchronous step per batch);
:class:`Changes` collects everything a step touched so the persistence layer can write it in one
fenced transaction before any answer leaves the owner (DESIGN.md invariant 2). If that commit
fails, the owner discards its in-memory state for the affected vshards and reloads it from
PostgreSQL, which is the truth.

Invariants kept here and checked by :func:`billing.ledger.audit`:
- ``account.balance_micros`` equals the sum of the account's journal ``amount_micros``;
- ``bucket.units`` equals the sum of the bucket's journal ``units``;
- ``account.reserved_micros`` equals the money held by the account's open reservations, and
  ``bucket.reserved_units`` the units held in that bucket.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from billing._frozen import fast_init
from billing.protocol import BalanceResult, CreditControlAnswer, PaymentMode, ServiceKind


@dataclass(slots=True)
class Subscriber:
    """A subscriber identity (MSISDN/IMSI/...) and the account it charges."""

    subscriber_id: str
    vshard: int
    account_id: str
    account_vshard: int
    plan_id: str
    created_at: datetime


@dataclass(slots=True)
class Account:
    """A balance holder: one subscriber's own account, or a shared (family/enterprise/IoT) one.

    ``balance_micros`` is prepaid funds (for postpaid it goes negative as usage is charged);
    ``credit_limit_micros`` is how far below zero a postpaid or hybrid account may go.
    """

    account_id: str
    vshard: int
    payment_mode: PaymentMode
    currency: str
    plan_id: str
    balance_micros: int
    credit_limit_micros: int
    reserved_micros: int
    created_at: datetime
    usage_counters: dict[str, int] = field(default_factory=dict)  # tier counters per cycle


@dataclass(slots=True)
class Bucket:
    """A unit allowance (bundle instance) of an account, usable in [valid_from, expires_at)."""

    bucket_id: str
    account_id: str
    vshard: int
    bundle_id: str
    service: ServiceKind
    destination_groups: tuple[str, ...]  # empty = any destination
    rating_groups: tuple[int, ...]  # empty = any rating group
    units: int
    reserved_units: int
    priority: int  # lower is consumed first
    valid_from: datetime
    expires_at: datetime | None

    def usable_at(self, at: datetime) -> bool:
        return self.valid_from <= at and (self.expires_at is None or at < self.expires_at)


@dataclass(slots=True)
class Reservation:
    """What one service entry of a session holds: money and/or bucket units, until reported."""

    rating_group: int
    service: ServiceKind
    granted_units: int
    money_micros: int
    bucket_units: dict[str, int]
    expires_at: datetime  # end of validity time
    granted_at: datetime | None = None  # start of the usage window the grant covers
    tariff_switch_at: datetime | None = None  # tariff switch inside the window, if any


@dataclass(slots=True)
class Session:
    """An open credit-control session: lives on its account's vshard."""

    session_id: str
    vshard: int
    subscriber_id: str
    account_id: str
    plan_id: str
    destination: str | None
    visited_plmn: str | None
    started_at: datetime
    last_seen_at: datetime
    expires_at: datetime  # orphan deadline: released if nothing is heard by then
    next_request_number: int
    reservations: dict[int, Reservation] = field(default_factory=dict)


class EntryKind(StrEnum):
    OPENING = "opening"  # the balance an account was created with
    TOPUP = "topup"
    ADJUSTMENT = "adjustment"
    REFUND = "refund"
    DEBIT = "debit"  # money charged for usage
    BUCKET_GRANT = "bucket_grant"  # units added to a bucket (bundle provisioned/renewed)
    BUCKET_DEBIT = "bucket_debit"  # units consumed from a bucket
    BUCKET_EXPIRY = "bucket_expiry"  # units removed because the bucket expired


@fast_init
@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One balance movement. The journal alone reproduces every balance and bucket.

    ``(vshard, idempotency_key, line)`` is unique: the database refuses a second application of
    the same key even if an owner's memory lost it.
    """

    vshard: int
    account_id: str
    idempotency_key: str
    line: int
    kind: EntryKind
    amount_micros: int  # signed effect on account.balance_micros
    bucket_id: str | None
    units: int  # signed effect on bucket.units
    at: datetime
    session_id: str | None = None
    request_number: int | None = None
    rating_group: int | None = None
    record_id: str | None = None
    note: str = ""


@dataclass(slots=True)
class Changes:
    """Everything one step touched, for the persistence layer to write in one transaction."""

    accounts: dict[str, Account] = field(default_factory=dict)
    buckets: dict[str, Bucket] = field(default_factory=dict)
    subscribers: dict[str, Subscriber] = field(default_factory=dict)
    sessions: dict[str, Session] = field(default_factory=dict)
    ended_sessions: dict[str, int] = field(default_factory=dict)  # session_id -> vshard
    journal: list[JournalEntry] = field(default_factory=list)
    answers: dict[str, tuple[int, CreditControlAnswer]] = field(
        default_factory=dict
    )  # key -> (vshard, answer)
    balance_results: dict[str, tuple[int, BalanceResult]] = field(default_factory=dict)

    def is_empty(self) -> bool:
        return not (
            self.balance_results
            or self.accounts
            or self.buckets
            or self.subscribers
            or self.sessions
            or self.ended_sessions
            or self.journal
            or self.answers
        )


@dataclass(slots=True)
class ShardState:
    """The in-memory state of the vshards one owner holds."""

    subscribers: dict[str, Subscriber] = field(default_factory=dict)
    accounts: dict[str, Account] = field(default_factory=dict)
    buckets: dict[str, Bucket] = field(default_factory=dict)
    buckets_by_account: dict[str, list[str]] = field(default_factory=dict)
    sessions: dict[str, Session] = field(default_factory=dict)
    answers: dict[str, CreditControlAnswer] = field(
        default_factory=dict
    )  # idempotency key -> answer
    pending: Changes = field(default_factory=Changes)
    # (time answered, idempotency key) in answer order, for prune_answers' retention horizon.
    answer_log: deque[tuple[datetime, str]] = field(default_factory=deque)
    balance_results: dict[str, BalanceResult] = field(default_factory=dict)  # key -> result

    def take_changes(self) -> Changes:
        """Hand over what changed since the last call, and start a new record."""
        changes, self.pending = self.pending, Changes()
        return changes
