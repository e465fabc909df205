"""The journal as the truth: replay it into balances, and audit a state against it.

Every balance movement is a :class:`~billing.state.JournalEntry` (DESIGN.md invariant 4), so the
journal alone must reproduce every account balance and bucket. :func:`replay` does exactly that;
:func:`audit` compares a :class:`~billing.state.ShardState` with a replay and with its own open
reservations, and lists every violation (an empty list means the state is conserved).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from billing.protocol import PaymentMode
from billing.state import EntryKind, JournalEntry, ShardState

_MONEY_KINDS = frozenset(
    {EntryKind.OPENING, EntryKind.TOPUP, EntryKind.ADJUSTMENT, EntryKind.REFUND, EntryKind.DEBIT}
)
_UNIT_KINDS = frozenset({EntryKind.BUCKET_GRANT, EntryKind.BUCKET_DEBIT, EntryKind.BUCKET_EXPIRY})


@dataclass(slots=True)
class Balances:
    """What a journal adds up to: money per account, units per bucket, and what went wrong."""

    accounts: dict[str, int] = field(default_factory=dict)
    buckets: dict[str, int] = field(default_factory=dict)
    bucket_accounts: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def replay(journal: Iterable[JournalEntry]) -> Balances:
    """Sum the journal into balances, checking each line's shape on the way.

    Problems recorded: a repeated ``(vshard, key, line)``; a money kind that moves units or a
    unit kind that moves money; a debit that credits; a grant that removes units.
    """
    result = Balances()
    accounts = result.accounts
    buckets = result.buckets
    seen: set[tuple[int, str, int]] = set()
    for entry in journal:
        ident = (entry.vshard, entry.idempotency_key, entry.line)
        where = f"{entry.idempotency_key}#{entry.line}"
        if ident in seen:
            result.problems.append(f"{where}: line applied twice")
            continue
        seen.add(ident)
        accounts[entry.account_id] = accounts.get(entry.account_id, 0) + entry.amount_micros
        kind = entry.kind
        if kind in _MONEY_KINDS:
            if entry.units or entry.bucket_id is not None:
                result.problems.append(f"{where}: {kind} moves bucket units")
            if kind is EntryKind.DEBIT and entry.amount_micros > 0:
                result.problems.append(f"{where}: debit credits {entry.amount_micros}")
            if kind in (EntryKind.TOPUP, EntryKind.REFUND) and entry.amount_micros <= 0:
                result.problems.append(f"{where}: {kind} of {entry.amount_micros}")
        elif kind in _UNIT_KINDS:
            if entry.amount_micros or entry.bucket_id is None:
                result.problems.append(f"{where}: {kind} moves money or names no bucket")
                continue
            if (kind is EntryKind.BUCKET_GRANT) != (entry.units >= 0):
                result.problems.append(f"{where}: {kind} of {entry.units} units")
            buckets[entry.bucket_id] = buckets.get(entry.bucket_id, 0) + entry.units
            owner = result.bucket_accounts.setdefault(entry.bucket_id, entry.account_id)
            if owner != entry.account_id:
                result.problems.append(f"{where}: bucket {entry.bucket_id} of two accounts")
    return result


def audit(state: ShardState, journal: Iterable[JournalEntry]) -> list[str]:
    """Every way ``state`` disagrees with ``journal`` or breaks an invariant (empty = conserved).

    Checks: each account balance and each bucket's units equal the journal's sums; reserved money
    and units equal what open sessions hold; nothing holds a negative amount; a prepaid balance
    is never below 0; buckets hold no more than they have.
    """
    balances = replay(journal)
    problems = list(balances.problems)
    held_money: dict[str, int] = {}
    held_units: dict[str, int] = {}
    for session in state.sessions.values():
        for reservation in session.reservations.values():
            if reservation.money_micros < 0:
                problems.append(f"session {session.session_id}: negative hold")
            held_money[session.account_id] = (
                held_money.get(session.account_id, 0) + reservation.money_micros
            )
            for bucket_id, units in reservation.bucket_units.items():
                if units < 0:
                    problems.append(f"session {session.session_id}: negative unit hold")
                held_units[bucket_id] = held_units.get(bucket_id, 0) + units
    for account_id, account in state.accounts.items():
        journaled = balances.accounts.get(account_id)
        if journaled is None:
            problems.append(f"account {account_id}: no journal line")
        elif journaled != account.balance_micros:
            problems.append(
                f"account {account_id}: balance {account.balance_micros} != journal {journaled}"
            )
        held = held_money.get(account_id, 0)
        if account.reserved_micros != held:
            problems.append(
                f"account {account_id}: reserved {account.reserved_micros} != held {held}"
            )
        if account.payment_mode is PaymentMode.PREPAID and account.balance_micros < 0:
            problems.append(f"account {account_id}: prepaid balance {account.balance_micros} < 0")
        if account.payment_mode is PaymentMode.PREPAID and (
            account.reserved_micros > account.balance_micros
        ):
            problems.append(f"account {account_id}: reserved more than the prepaid balance")
    for account_id in balances.accounts:
        if account_id not in state.accounts:
            problems.append(f"account {account_id}: in the journal but not in the state")
    for bucket_id, bucket in state.buckets.items():
        journaled = balances.buckets.get(bucket_id, 0)
        if journaled != bucket.units:
            problems.append(f"bucket {bucket_id}: units {bucket.units} != journal {journaled}")
        held = held_units.get(bucket_id, 0)
        if bucket.reserved_units != held:
            problems.append(f"bucket {bucket_id}: reserved {bucket.reserved_units} != held {held}")
        if not 0 <= bucket.reserved_units <= bucket.units:
            problems.append(
                f"bucket {bucket_id}: reserved {bucket.reserved_units} of {bucket.units}"
            )
    return problems
