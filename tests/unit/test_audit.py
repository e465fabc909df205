"""failover.audit: a consistent run passes, and each kind of violation is caught."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from rich.console import Console

from failover.audit import (
    AccountRow,
    BucketRow,
    Check,
    ClientAnswer,
    JournalRow,
    Ledger,
    SessionRow,
    _reserved,
    check,
    render,
    summary_lines,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _t(seconds: int) -> datetime:
    return T0 + timedelta(seconds=seconds)


def _good() -> tuple[list[ClientAnswer], Ledger]:
    """Account A (prepaid, opened with 10) charged 3 by s1#1; a bucket of 100 units used 40 by
    s2#1; session s3 holds 2 micros and 5 units open."""
    journal = (
        JournalRow(1, "open:A", 0, "A", "opening", 10, committed_at=_t(0)),
        JournalRow(1, "grant:B", 0, "A", "bucket_grant", 0, 100, "B", committed_at=_t(0)),
        JournalRow(1, "cc:s1#1", 0, "A", "debit", -3, None, None, "s1", 1, _t(1)),
        JournalRow(1, "cc:s2#1", 0, "A", "bucket_debit", 0, -40, "B", "s2", 1, _t(2)),
    )
    ledger = Ledger(
        journal=journal,
        accounts=(AccountRow(1, "A", "prepaid", 7, 0, 2),),
        buckets=(BucketRow(1, "B", "A", 60, 5),),
        sessions=(SessionRow(1, "s3", "A", 2, {"B": 5}),),
        answer_keys=frozenset({"cc:s1#1", "cc:s2#1", "cc:s3#0"}),
    )
    answers = [
        ClientAnswer("s1", 0, 2001, 0, "sub-A", "cc:s1#0"),
        ClientAnswer("s1", 1, 2001, 3, "sub-A", "cc:s1#1"),
        ClientAnswer("s1", 1, 2001, 3, "sub-A", "cc:s1#1"),  # a retransmission, same answer
        ClientAnswer("s2", 1, 2001, 40, "sub-A", "cc:s2#1"),  # priced bundle units: no money
        ClientAnswer("s3", 0, 2001, 0, "sub-A", "cc:s3#0"),
        ClientAnswer("s4", 0, 3004, 0, "sub-A"),  # busy: nothing promised
    ]
    ledger = replace(ledger, answer_keys=ledger.answer_keys | {"cc:s1#0"})
    return answers, ledger


def _only(answers: list[ClientAnswer], ledger: Ledger) -> set[Check]:
    return {v.check for v in check(answers, ledger).violations}


def test_a_consistent_run_passes() -> None:
    answers, ledger = _good()
    report = check(answers, ledger)
    assert report.ok, summary_lines(report.violations)
    assert report.checked[Check.ANSWER_IN_JOURNAL] == 2
    assert report.checked[Check.BALANCE_IS_JOURNAL] == 2


def test_successful_answer_missing_from_journal() -> None:
    answers, ledger = _good()
    ledger = replace(ledger, journal=tuple(r for r in ledger.journal if r.session_id != "s1"))
    ledger = replace(ledger, accounts=(replace(ledger.accounts[0], balance_micros=10),))
    assert _only(answers, ledger) == {Check.ANSWER_IN_JOURNAL}


def test_answer_cost_differs_from_journal() -> None:
    answers, ledger = _good()
    answers[1] = replace(answers[1], cost_micros=4)
    answers[2] = replace(answers[2], cost_micros=4)
    assert _only(answers, ledger) == {Check.ANSWER_IN_JOURNAL}


def test_answer_not_durable() -> None:
    answers, ledger = _good()
    ledger = replace(ledger, answer_keys=ledger.answer_keys - {"cc:s3#0"})
    assert _only(answers, ledger) == {Check.ANSWER_DURABLE}


def test_retransmission_answered_differently() -> None:
    answers, ledger = _good()
    answers.append(ClientAnswer("s1", 1, 2001, 6, "sub-A", "cc:s1#1"))
    assert _only(answers, ledger) == {Check.ANSWER_STABLE}


def test_failure_then_success_is_not_instability() -> None:
    answers, ledger = _good()
    answers.insert(0, ClientAnswer("s1", 1, 3004, 0, "sub-A"))
    assert check(answers, ledger).ok


def test_key_applied_twice_on_two_vshards() -> None:
    answers, ledger = _good()
    twice = replace(ledger.journal[2], vshard=2)
    ledger = replace(
        ledger,
        journal=(*ledger.journal, twice),
        accounts=(*ledger.accounts, AccountRow(2, "A", "prepaid", -3, 0, 0)),
    )
    found = check(answers, ledger).violations
    assert Check.KEY_ONCE in {v.check for v in found}
    assert any("applied 2 times" in v.detail for v in found)


def test_request_charged_under_two_keys() -> None:
    answers, ledger = _good()
    again = replace(ledger.journal[2], idempotency_key="cc:s1#1-retry")
    ledger = replace(
        ledger,
        journal=(*ledger.journal, again),
        accounts=(replace(ledger.accounts[0], balance_micros=4),),
    )
    found = {v.check for v in check(answers, ledger).violations}
    assert Check.KEY_ONCE in found
    assert Check.ANSWER_IN_JOURNAL in found  # journal moved 6 for an answer of 3


def test_balance_differs_from_journal() -> None:
    answers, ledger = _good()
    ledger = replace(ledger, accounts=(replace(ledger.accounts[0], balance_micros=8),))
    assert _only(answers, ledger) == {Check.BALANCE_IS_JOURNAL}


def test_bucket_differs_from_journal() -> None:
    answers, ledger = _good()
    ledger = replace(ledger, buckets=(replace(ledger.buckets[0], units=61),))
    assert _only(answers, ledger) == {Check.BALANCE_IS_JOURNAL}


def test_journal_rows_without_an_account() -> None:
    answers, ledger = _good()
    stray = JournalRow(1, "topup:x", 0, "GHOST", "topup", 5, committed_at=_t(3))
    ledger = replace(ledger, journal=(*ledger.journal, stray))
    assert _only(answers, ledger) == {Check.BALANCE_IS_JOURNAL}


def test_reserved_money_not_held_by_sessions() -> None:
    answers, ledger = _good()
    ledger = replace(ledger, sessions=(replace(ledger.sessions[0], reserved_micros=1),))
    assert _only(answers, ledger) == {Check.RESERVATIONS_CONSISTENT}


def test_reservation_beyond_what_the_balance_covers() -> None:
    answers, ledger = _good()
    ledger = replace(
        ledger,
        accounts=(replace(ledger.accounts[0], reserved_micros=9),),
        sessions=(replace(ledger.sessions[0], reserved_micros=9),),
    )
    found = check(answers, ledger).violations
    assert {v.check for v in found} == {Check.RESERVATIONS_CONSISTENT}
    assert "beyond what the balance covers" in found[0].detail


def test_postpaid_reservation_may_use_the_credit_limit() -> None:
    answers, ledger = _good()
    ledger = replace(
        ledger,
        accounts=(replace(ledger.accounts[0], payment_mode="postpaid", credit_limit_micros=5),),
        sessions=(replace(ledger.sessions[0], reserved_micros=9),),
    )
    ledger = replace(ledger, accounts=(replace(ledger.accounts[0], reserved_micros=9),))
    assert check(answers, ledger).ok


def test_bucket_over_reserved_and_negative() -> None:
    answers, ledger = _good()
    ledger = replace(
        ledger,
        buckets=(replace(ledger.buckets[0], reserved_units=70),),
        sessions=(replace(ledger.sessions[0], reserved_units={"B": 70}),),
    )
    assert _only(answers, ledger) == {Check.RESERVATIONS_CONSISTENT}
    ledger = replace(
        ledger,
        buckets=(replace(ledger.buckets[0], reserved_units=-1),),
        sessions=(replace(ledger.sessions[0], reserved_units={"B": -1}),),
    )
    assert _only(answers, ledger) == {Check.RESERVATIONS_CONSISTENT}


def test_prepaid_balance_that_dipped_below_zero_mid_run() -> None:
    """Final balance fine (a top-up came later), but a commit took it below zero on the way."""
    answers, ledger = _good()
    overdraw = JournalRow(1, "cc:s5#0", 0, "A", "debit", -12, None, None, "s5", 0, _t(5))
    topup = JournalRow(1, "topup:k", 0, "A", "topup", 12, committed_at=_t(6))
    ledger = replace(ledger, journal=(*ledger.journal, overdraw, topup))
    found = check(answers, ledger).violations
    assert {v.check for v in found} == {Check.NEVER_BELOW_FLOOR}


def test_render_prints_every_check() -> None:
    answers, ledger = _good()
    ledger = replace(ledger, accounts=(replace(ledger.accounts[0], balance_micros=8),))
    console = Console(record=True, width=200)
    console.print(render(check(answers, ledger)))
    text = console.export_text()
    for name in Check:
        assert name.value in text
    assert "FAIL" in text and "PASS" in text


@pytest.mark.parametrize(
    ("jsonb", "expected"),
    [
        (None, (0, {})),
        (
            {"1": {"money_micros": 5, "bucket_units": {"B": 2}}, "2": {"money_micros": 1}},
            (6, {"B": 2}),
        ),
    ],
)
def test_reservations_json_totals(jsonb: object, expected: tuple[int, dict[str, int]]) -> None:
    assert _reserved(jsonb) == expected
