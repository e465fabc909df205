"""Sample records for the store's tests and benchmarks (no I/O, no clock).

Every field is set to something other than its default where one exists, so a round trip
through PostgreSQL that dropped or altered a field would be noticed.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from billing.protocol import (
    BalanceResult,
    CheckBalanceResult,
    CreditControlAnswer,
    FinalUnitAction,
    FinalUnitIndication,
    PaymentMode,
    ResultCode,
    ServiceGrant,
    ServiceKind,
    Units,
)
from billing.state import (
    Account,
    Bucket,
    Changes,
    EntryKind,
    JournalEntry,
    Reservation,
    Session,
    Subscriber,
)

T0 = datetime(2026, 1, 1, 12, 0, 0, 123456, tzinfo=UTC)


def account(
    account_id: str,
    vshard: int,
    *,
    balance_micros: int = 0,
    reserved_micros: int = 0,
    payment_mode: PaymentMode = PaymentMode.PREPAID,
) -> Account:
    return Account(
        account_id=account_id, vshard=vshard, payment_mode=payment_mode, currency="EUR",
        plan_id="plan-basic", balance_micros=balance_micros, credit_limit_micros=5_000_000,
        reserved_micros=reserved_micros, created_at=T0, usage_counters={"voice:2026-01": 60},
    )  # fmt: skip


def subscriber(subscriber_id: str, vshard: int, account_id: str) -> Subscriber:
    return Subscriber(
        subscriber_id=subscriber_id, vshard=vshard, account_id=account_id,
        account_vshard=vshard, plan_id="plan-basic", created_at=T0,
    )  # fmt: skip


def bucket(
    bucket_id: str, account_id: str, vshard: int, *, units: int = 0, reserved_units: int = 0
) -> Bucket:
    return Bucket(
        bucket_id=bucket_id, account_id=account_id, vshard=vshard, bundle_id="data-1g",
        service=ServiceKind.DATA, destination_groups=("home", "it's eu"), rating_groups=(10, 20),
        units=units, reserved_units=reserved_units, priority=3, valid_from=T0,
        expires_at=T0 + timedelta(days=30),
    )  # fmt: skip


def session(
    session_id: str,
    vshard: int,
    subscriber_id: str,
    account_id: str,
    *,
    reservations: dict[int, Reservation] | None = None,
) -> Session:
    return Session(
        session_id=session_id, vshard=vshard, subscriber_id=subscriber_id,
        account_id=account_id, plan_id="plan-basic", destination="+3912345", visited_plmn=None,
        started_at=T0, last_seen_at=T0 + timedelta(seconds=30),
        expires_at=T0 + timedelta(hours=1), next_request_number=2,
        reservations=dict(reservations or {}),
    )  # fmt: skip


def reservation(
    rating_group: int, *, money_micros: int = 0, bucket_units: dict[str, int] | None = None
) -> Reservation:
    return Reservation(
        rating_group=rating_group, service=ServiceKind.DATA, granted_units=1_000_000,
        money_micros=money_micros, bucket_units=dict(bucket_units or {}),
        expires_at=T0 + timedelta(minutes=10), granted_at=T0,
        tariff_switch_at=T0 + timedelta(minutes=5),
    )  # fmt: skip


def entry(
    vshard: int,
    account_id: str,
    key: str,
    *,
    line: int = 0,
    amount_micros: int = 0,
    bucket_id: str | None = None,
    units: int = 0,
    kind: EntryKind = EntryKind.DEBIT,
) -> JournalEntry:
    return JournalEntry(
        vshard=vshard, account_id=account_id, idempotency_key=key, line=line, kind=kind,
        amount_micros=amount_micros, bucket_id=bucket_id, units=units, at=T0,
        session_id="sess-1", request_number=1, rating_group=10, record_id="cdr-1",
        note="sample",
    )  # fmt: skip


def answer(session_id: str, request_number: int) -> CreditControlAnswer:
    """An answer using every field and nested type (grants, units, final unit, enums, times)."""
    grant = ServiceGrant(
        rating_group=10, service_identifier=7, result_code=ResultCode.SUCCESS,
        granted=Units(total_octets=1_000_000, time_s=60), validity_time_s=600,
        final_unit=FinalUnitIndication(FinalUnitAction.REDIRECT, "http://topup.example"),
        tariff_time_change=T0 + timedelta(hours=2), quota_threshold=100_000,
        cost_micros=1_500, error_message="", uncharged_micros=7,
    )  # fmt: skip
    denied = ServiceGrant(
        rating_group=None, service_identifier=None, result_code=ResultCode.CREDIT_LIMIT_REACHED,
        error_message="no funds: “quoted” ünïcode",
    )  # fmt: skip
    return CreditControlAnswer(
        session_id=session_id, request_number=request_number, result_code=ResultCode.SUCCESS,
        services=(grant, denied), cost_micros=1_500,
        check_balance_result=CheckBalanceResult.ENOUGH_CREDIT, error_message="partial",
        balance_after_micros=-42,
    )  # fmt: skip


def balance_result(key: str, account_id: str, amount_micros: int) -> BalanceResult:
    return BalanceResult(
        idempotency_key=key, kind="topup", subscriber_id="sub-" + account_id,
        account_id=account_id, amount_micros=amount_micros, balance_after_micros=amount_micros,
    )  # fmt: skip


def debit_batch(accounts: list[Account], tag: str | int) -> Changes:
    """What a batch of one charging request per account writes: a debit journal row, the
    account's new balance and the answer (the benchmark's unit of work)."""
    changes = Changes()
    for i, acc in enumerate(accounts):
        acc.balance_micros -= 1_000
        key = f"cc:s{tag}-{i}#1"
        changes.accounts[acc.account_id] = acc
        changes.journal.append(
            JournalEntry(
                vshard=acc.vshard, account_id=acc.account_id, idempotency_key=key, line=0,
                kind=EntryKind.DEBIT, amount_micros=-1_000, bucket_id=None, units=0, at=T0,
                session_id=f"s{tag}-{i}", request_number=1, rating_group=10,
            )
        )  # fmt: skip
        changes.answers[key] = (
            acc.vshard,
            CreditControlAnswer(
                session_id=f"s{tag}-{i}", request_number=1, result_code=ResultCode.SUCCESS,
                cost_micros=1_000, balance_after_micros=acc.balance_micros,
            ),
        )  # fmt: skip
    return changes
