"""The journal reproduces every balance; audit finds each kind of tampering."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from billing.charging import apply_balance
from billing.ledger import audit, replay
from billing.protocol import BalanceCommand
from billing.scenario import Scenario, entry
from billing.state import EntryKind, JournalEntry
from billing.tariff import builtin_catalog

NOW = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
EUR = 1_000_000


@pytest.fixture
def sc() -> Scenario:
    """Two subscribers after some charging: a prepaid one and a postpaid one with bundles."""
    sc = Scenario(catalog=builtin_catalog(), now=NOW)
    sc.subscriber("alice", "payg", balance=2 * EUR)
    sc.subscriber("bob", "postpaid-monthly", credit_limit=5 * EUR)
    sc.initial("a1", "alice", entry(100, request=0))
    sc.update("a1", 1, "alice", entry(100, request=0, used=90))
    sc.initial("b1", "bob", entry(100, request=0), entry(10, request=0))
    sc.update("b1", 1, "bob", entry(100, request=0, used=100), entry(10, used=5000))
    apply_balance(
        sc.state,
        BalanceCommand(
            kind="topup", subscriber_id="alice", amount_micros=EUR, idempotency_key="t1"
        ),
        now=NOW,
    )
    sc.collect()
    return sc


def test_replay_reproduces_every_balance_and_bucket(sc: Scenario) -> None:
    balances = replay(sc.journal)
    assert balances.problems == []
    for account_id, account in sc.state.accounts.items():
        assert balances.accounts[account_id] == account.balance_micros
    for bucket_id, bucket in sc.state.buckets.items():
        assert balances.buckets[bucket_id] == bucket.units
    assert balances.accounts["alice"] == 3 * EUR - 200_000


def test_clean_state_audits_clean(sc: Scenario) -> None:
    assert audit(sc.state, sc.journal) == []


def test_audit_finds_a_balance_changed_without_a_journal_line(sc: Scenario) -> None:
    sc.state.accounts["alice"].balance_micros += 1
    (problem,) = audit(sc.state, sc.journal)
    assert "alice" in problem and "balance" in problem


def test_audit_finds_a_lost_journal_line(sc: Scenario) -> None:
    debits = [e for e in sc.journal if e.kind is EntryKind.DEBIT]
    sc.journal.remove(debits[0])
    assert any("journal" in p for p in audit(sc.state, sc.journal))


def test_audit_finds_a_line_applied_twice(sc: Scenario) -> None:
    sc.journal.append(sc.journal[-1])
    assert any("twice" in p for p in audit(sc.state, sc.journal))


def test_audit_finds_bucket_units_changed(sc: Scenario) -> None:
    bucket = next(iter(sc.state.buckets.values()))
    bucket.units -= 1
    assert any(bucket.bucket_id in p for p in audit(sc.state, sc.journal))


def test_audit_finds_holds_that_disagree_with_sessions(sc: Scenario) -> None:
    sc.state.accounts["alice"].reserved_micros += 5
    assert any("reserved" in p for p in audit(sc.state, sc.journal))
    sc.state.accounts["alice"].reserved_micros -= 5
    reservation = next(iter(sc.state.sessions["b1"].reservations.values()))
    bucket_id, units = next(iter(reservation.bucket_units.items()))
    reservation.bucket_units[bucket_id] = units + 1
    assert any("reserved" in p and bucket_id in p for p in audit(sc.state, sc.journal))


def test_audit_finds_a_prepaid_balance_below_zero(sc: Scenario) -> None:
    line = JournalEntry(0, "alice", "x", 0, EntryKind.ADJUSTMENT, -10 * EUR, None, 0, NOW)
    sc.journal.append(line)
    sc.state.accounts["alice"].balance_micros -= 10 * EUR
    problems = audit(sc.state, sc.journal)
    assert any("prepaid balance" in p for p in problems)


def test_audit_finds_an_account_missing_from_state_or_journal(sc: Scenario) -> None:
    sc.journal.append(JournalEntry(0, "ghost", "g", 0, EntryKind.TOPUP, 5, None, 0, NOW))
    assert any("ghost" in p for p in audit(sc.state, sc.journal))
    without = [e for e in sc.journal if e.account_id != "alice"]
    assert any("alice: no journal line" in p for p in audit(sc.state, without))


@pytest.mark.parametrize(
    "change",
    [
        {"kind": EntryKind.DEBIT, "amount_micros": 5},
        {"kind": EntryKind.TOPUP, "amount_micros": -5},
        {"kind": EntryKind.DEBIT, "amount_micros": -5, "units": 3, "bucket_id": "b"},
        {"kind": EntryKind.BUCKET_DEBIT, "amount_micros": 0, "units": 4, "bucket_id": "b"},
        {"kind": EntryKind.BUCKET_GRANT, "amount_micros": 0, "units": -4, "bucket_id": "b"},
        {"kind": EntryKind.BUCKET_DEBIT, "amount_micros": 3, "units": -4, "bucket_id": "b"},
    ],
)
def test_replay_flags_malformed_lines(change: dict[str, object]) -> None:
    line = JournalEntry(0, "a", "k", 0, EntryKind.TOPUP, 1, None, 0, NOW)
    assert replay([dataclasses.replace(line, **change)]).problems != []  # type: ignore[arg-type]
