"""The post-run auditor of the chaos harness: did any fault lose money or charge twice?

Inputs are what the client saw (:class:`ClientAnswer`, one per answer received) and what
PostgreSQL holds afterwards (:class:`Ledger`: journal, accounts, buckets, open sessions, answer
keys), loaded by :func:`load_ledger`. :func:`check` is pure, so every check is unit-tested with
hand-made violating inputs. Each check is one of DESIGN.md's invariants seen from outside:

- ``answer_in_journal`` (invariant 2): every successful answer that moved money has its journal
  entries, and what they moved equals the cost the answer reported;
- ``answer_durable`` (invariant 2): every successful answer's idempotency key is in the answers
  table (when the client knows the key);
- ``answer_stable`` (invariant 3): a repeated request got the same answer as the first time;
- ``key_once`` (invariant 3): no idempotency key was applied twice, and no request of a session
  was journalled under two keys;
- ``balance_is_journal`` (invariant 4): every balance and bucket equals the sum of its journal
  (the opening balance is the journal's OPENING entry), and every journal row has its account;
- ``reservations_consistent`` (invariant 4): reserved money and units equal what open sessions
  hold, are never negative, and never exceed what the balance covers;
- ``never_below_floor`` (invariant 4): replaying each prepaid account's journal commit by
  commit, the balance never went below its floor (nothing was granted beyond what it covered).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

SUCCESS = 2001
PREPAID = "prepaid"


class Check(StrEnum):
    ANSWER_IN_JOURNAL = "answer_in_journal"
    ANSWER_DURABLE = "answer_durable"
    ANSWER_STABLE = "answer_stable"
    KEY_ONCE = "key_once"
    BALANCE_IS_JOURNAL = "balance_is_journal"
    RESERVATIONS_CONSISTENT = "reservations_consistent"
    NEVER_BELOW_FLOOR = "never_below_floor"


@dataclass(frozen=True, slots=True)
class ClientAnswer:
    """One answer the client received (retransmissions included, each as its own record)."""

    session_id: str
    request_number: int
    result_code: int
    cost_micros: int
    subscriber_id: str = ""
    idempotency_key: str | None = None  # when the client knows it (top-ups: the caller's key)
    uncharged_micros: int = 0  # usage a capped prepaid balance could not cover (not debited)


@dataclass(frozen=True, slots=True)
class JournalRow:
    vshard: int
    idempotency_key: str
    line: int
    account_id: str
    kind: str
    amount_micros: int
    units: int = 0
    bucket_id: str | None = None
    session_id: str | None = None
    request_number: int | None = None
    committed_at: datetime | None = None  # one value per transaction (now() in PostgreSQL)


@dataclass(frozen=True, slots=True)
class AccountRow:
    vshard: int
    account_id: str
    payment_mode: str
    balance_micros: int
    credit_limit_micros: int
    reserved_micros: int


@dataclass(frozen=True, slots=True)
class BucketRow:
    vshard: int
    bucket_id: str
    account_id: str
    units: int
    reserved_units: int


@dataclass(frozen=True, slots=True)
class SessionRow:
    """An open session and what its reservations hold in total."""

    vshard: int
    session_id: str
    account_id: str
    reserved_micros: int
    reserved_units: dict[str, int] = field(default_factory=dict)  # bucket id -> units


@dataclass(frozen=True, slots=True)
class Ledger:
    """What PostgreSQL holds after the run."""

    journal: tuple[JournalRow, ...] = ()
    accounts: tuple[AccountRow, ...] = ()
    buckets: tuple[BucketRow, ...] = ()
    sessions: tuple[SessionRow, ...] = ()
    answer_keys: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Violation:
    check: Check
    subject: str  # what is wrong: an account, a key, a session/request
    detail: str


@dataclass(frozen=True, slots=True)
class AuditReport:
    """Violations, and how many items each check looked at (a check that saw nothing is shown)."""

    violations: tuple[Violation, ...]
    checked: dict[Check, int]

    @property
    def ok(self) -> bool:
        return not self.violations

    def by_check(self) -> dict[Check, list[Violation]]:
        out: dict[Check, list[Violation]] = {c: [] for c in Check}
        for v in self.violations:
            out[v.check].append(v)
        return out


def check(answers: Sequence[ClientAnswer], ledger: Ledger) -> AuditReport:
    """Run every check; return all violations (an empty tuple means the run kept every invariant)."""
    found: list[Violation] = []
    checked: dict[Check, int] = {}
    checked[Check.ANSWER_IN_JOURNAL] = _answers_in_journal(answers, ledger, found)
    checked[Check.ANSWER_DURABLE] = _answers_durable(answers, ledger, found)
    checked[Check.ANSWER_STABLE] = _answers_stable(answers, found)
    checked[Check.KEY_ONCE] = _keys_once(ledger, found)
    checked[Check.BALANCE_IS_JOURNAL] = _balances(ledger, found)
    checked[Check.RESERVATIONS_CONSISTENT] = _reservations(ledger, found)
    checked[Check.NEVER_BELOW_FLOOR] = _floors(ledger, found)
    return AuditReport(tuple(found), checked)


def _answers_in_journal(
    answers: Sequence[ClientAnswer], ledger: Ledger, found: list[Violation]
) -> int:
    """A successful answer with a cost has journal entries debiting exactly that cost."""
    money: dict[tuple[str, int], int] = defaultdict(int)
    present: set[tuple[str, int]] = set()
    used_buckets: set[tuple[str, int]] = set()
    for row in ledger.journal:
        if row.session_id is not None and row.request_number is not None:
            key = (row.session_id, row.request_number)
            present.add(key)
            money[key] -= row.amount_micros
            if row.bucket_id is not None:
                used_buckets.add(key)
    seen = 0
    firsts: dict[tuple[str, int], ClientAnswer] = {}
    for a in answers:  # the first success per request; later ones are answer_stable's concern
        if a.result_code == SUCCESS:
            firsts.setdefault((a.session_id, a.request_number), a)
    for a in firsts.values():
        if a.cost_micros == 0:
            continue
        seen += 1
        key = (a.session_id, a.request_number)
        subject = f"{a.session_id}#{a.request_number}"
        if key not in present:
            found.append(
                Violation(
                    Check.ANSWER_IN_JOURNAL,
                    subject,
                    f"answered success with cost {a.cost_micros} but nothing is in the journal",
                )
            )
        elif key not in used_buckets and money[key] not in (
            a.cost_micros,
            a.cost_micros - a.uncharged_micros,
        ):
            # Only money-only requests are compared: units taken from a bundle have a price in
            # the answer's cost but move no money.
            found.append(
                Violation(
                    Check.ANSWER_IN_JOURNAL,
                    subject,
                    f"answer said cost {a.cost_micros}, journal moved {money[key]}",
                )
            )
    return seen


def _answers_durable(
    answers: Sequence[ClientAnswer], ledger: Ledger, found: list[Violation]
) -> int:
    seen = 0
    for key in sorted(
        {a.idempotency_key for a in answers if a.result_code == SUCCESS and a.idempotency_key}
    ):
        seen += 1
        if key not in ledger.answer_keys:
            found.append(
                Violation(Check.ANSWER_DURABLE, key, "answered success but no stored answer")
            )
    return seen


def _answers_stable(answers: Sequence[ClientAnswer], found: list[Violation]) -> int:
    """Every answer to one request (session id + request number) agrees with the first one."""
    first: dict[tuple[str, int], ClientAnswer] = {}
    for a in answers:
        key = (a.session_id, a.request_number)
        was = first.setdefault(key, a)
        if was.result_code != SUCCESS or a.result_code != SUCCESS:
            continue  # a failure (busy, unavailable) may be followed by the real answer
        if was.cost_micros != a.cost_micros:
            found.append(
                Violation(
                    Check.ANSWER_STABLE,
                    f"{a.session_id}#{a.request_number}",
                    f"repeated request answered cost {a.cost_micros}, first time {was.cost_micros}",
                )
            )
    return len(first)


def _keys_once(ledger: Ledger, found: list[Violation]) -> int:
    by_key: dict[tuple[str, int], list[JournalRow]] = defaultdict(list)
    keys_of_request: dict[tuple[str, int], set[str]] = defaultdict(set)
    for row in ledger.journal:
        by_key[(row.idempotency_key, row.line)].append(row)
        if row.session_id is not None and row.request_number is not None:
            keys_of_request[(row.session_id, row.request_number)].add(row.idempotency_key)
    for (key, line), rows in sorted(by_key.items()):
        if len(rows) > 1:
            found.append(
                Violation(
                    Check.KEY_ONCE,
                    f"{key} line {line}",
                    f"applied {len(rows)} times (vshards {sorted(r.vshard for r in rows)})",
                )
            )
    for (session, number), keys in sorted(keys_of_request.items()):
        if len(keys) > 1:  # one request has one key (``cc:{session}#{number}``), many lines
            found.append(
                Violation(
                    Check.KEY_ONCE,
                    f"{session}#{number}",
                    f"journalled under several keys: {sorted(keys)}",
                )
            )
    return len(by_key)


def _balances(ledger: Ledger, found: list[Violation]) -> int:
    money: dict[tuple[int, str], int] = defaultdict(int)
    units: dict[tuple[int, str], int] = defaultdict(int)
    for row in ledger.journal:
        money[(row.vshard, row.account_id)] += row.amount_micros
        if row.bucket_id is not None:
            units[(row.vshard, row.bucket_id)] += row.units
    accounts = {(a.vshard, a.account_id): a for a in ledger.accounts}
    for key, acc in sorted(accounts.items()):
        if acc.balance_micros != money.get(key, 0):
            found.append(
                Violation(
                    Check.BALANCE_IS_JOURNAL,
                    acc.account_id,
                    f"balance {acc.balance_micros} but journal sums to {money.get(key, 0)}",
                )
            )
    for key in sorted(set(money) - set(accounts)):
        found.append(
            Violation(
                Check.BALANCE_IS_JOURNAL,
                key[1],
                f"journal rows for an account that does not exist on vshard {key[0]}",
            )
        )
    for b in sorted(ledger.buckets, key=lambda b: (b.vshard, b.bucket_id)):
        total = units.get((b.vshard, b.bucket_id), 0)
        if b.units != total:
            found.append(
                Violation(
                    Check.BALANCE_IS_JOURNAL,
                    b.bucket_id,
                    f"bucket holds {b.units} units but journal sums to {total}",
                )
            )
    return len(accounts) + len(ledger.buckets)


def _reservations(ledger: Ledger, found: list[Violation]) -> int:
    held: dict[tuple[int, str], int] = defaultdict(int)
    held_units: dict[str, int] = defaultdict(int)
    for s in ledger.sessions:
        held[(s.vshard, s.account_id)] += s.reserved_micros
        for bucket_id, n in s.reserved_units.items():
            held_units[bucket_id] += n

    def bad(subject: str, detail: str) -> None:
        found.append(Violation(Check.RESERVATIONS_CONSISTENT, subject, detail))

    for a in sorted(ledger.accounts, key=lambda a: (a.vshard, a.account_id)):
        total = held.get((a.vshard, a.account_id), 0)
        if a.reserved_micros < 0:
            bad(a.account_id, f"reserved {a.reserved_micros} is negative")
        if a.reserved_micros != total:
            bad(a.account_id, f"reserved {a.reserved_micros} but open sessions hold {total}")
        covered = max(0, a.balance_micros - _floor(a))
        if a.reserved_micros > covered:
            bad(
                a.account_id,
                f"reserved {a.reserved_micros} beyond what the balance covers ({covered})",
            )
    for b in sorted(ledger.buckets, key=lambda b: (b.vshard, b.bucket_id)):
        if b.reserved_units < 0:
            bad(b.bucket_id, f"reserved units {b.reserved_units} are negative")
        if b.reserved_units != held_units.get(b.bucket_id, 0):
            bad(
                b.bucket_id,
                f"reserved units {b.reserved_units} but open sessions hold "
                f"{held_units.get(b.bucket_id, 0)}",
            )
        if b.reserved_units > max(0, b.units):
            bad(b.bucket_id, f"reserved units {b.reserved_units} beyond its {b.units} units")
    return len(ledger.accounts) + len(ledger.buckets)


def _floor(account: AccountRow) -> int:
    """The lowest balance an account may reach: 0 for prepaid, minus the credit limit otherwise."""
    return 0 if account.payment_mode == PREPAID else -account.credit_limit_micros


def _floors(ledger: Ledger, found: list[Violation]) -> int:
    """Replay each prepaid account's journal one commit at a time; the balance stays >= floor."""
    prepaid = {(a.vshard, a.account_id): a for a in ledger.accounts if a.payment_mode == PREPAID}
    commits: dict[tuple[int, str], dict[Any, int]] = defaultdict(lambda: defaultdict(int))
    for row in ledger.journal:
        key = (row.vshard, row.account_id)
        if key in prepaid:
            commits[key][row.committed_at] += row.amount_micros
    for key, by_commit in sorted(commits.items()):
        floor = _floor(prepaid[key])
        balance = 0
        order = sorted(by_commit, key=lambda t: (t is not None, t))
        for at in order:
            balance += by_commit[at]
            if balance < floor:
                found.append(
                    Violation(
                        Check.NEVER_BELOW_FLOOR,
                        key[1],
                        f"balance reached {balance} (floor {floor}) at commit {at}",
                    )
                )
                break
    return len(prepaid)


# --- Loading from PostgreSQL ---------------------------------------------------------------------


def _reserved(reservations: Any) -> tuple[int, dict[str, int]]:
    """Total money and units per bucket held by a session's reservations (jsonb by rating group)."""
    money = 0
    units: dict[str, int] = defaultdict(int)
    for r in (reservations or {}).values():
        money += int(r.get("money_micros", 0))
        for bucket_id, n in (r.get("bucket_units") or {}).items():
            units[bucket_id] += int(n)
    return money, dict(units)


def load_ledger(dsn: str) -> Ledger:
    """Read journal, accounts, buckets, open sessions and answer keys (sync psycopg)."""
    import psycopg

    with psycopg.connect(dsn) as conn:
        journal = tuple(
            JournalRow(*row)
            for row in conn.execute(
                "SELECT vshard, idempotency_key, line, account_id, kind, amount_micros, units,"
                " bucket_id, session_id, request_number, committed_at FROM journal"
            )
        )
        accounts = tuple(
            AccountRow(*row)
            for row in conn.execute(
                "SELECT vshard, account_id, payment_mode, balance_micros, credit_limit_micros,"
                " reserved_micros FROM accounts"
            )
        )
        buckets = tuple(
            BucketRow(*row)
            for row in conn.execute(
                "SELECT vshard, bucket_id, account_id, units, reserved_units FROM buckets"
            )
        )
        sessions = tuple(
            SessionRow(vshard, session_id, account_id, *_reserved(reservations))
            for vshard, session_id, account_id, reservations in conn.execute(
                "SELECT vshard, session_id, account_id, reservations FROM sessions"
            )
        )
        keys = frozenset(k for (k,) in conn.execute("SELECT idempotency_key FROM answers"))
    return Ledger(journal, accounts, buckets, sessions, keys)


# --- Printing ------------------------------------------------------------------------------------


def render(report: AuditReport, *, examples: int = 3) -> Any:
    """A rich Table: one row per check with what it looked at, its violations and examples."""
    from rich.table import Table

    table = Table(title="Invariant checks")
    table.add_column("check")
    table.add_column("checked", justify="right")
    table.add_column("violations", justify="right")
    table.add_column("result")
    table.add_column("examples", overflow="fold")
    for name, violations in report.by_check().items():
        shown = "; ".join(f"{v.subject}: {v.detail}" for v in violations[:examples])
        table.add_row(
            name.value,
            str(report.checked.get(name, 0)),
            str(len(violations)),
            "[green]PASS[/green]" if not violations else "[red]FAIL[/red]",
            shown,
        )
    return table


def summary_lines(violations: Iterable[Violation]) -> list[str]:
    """Plain text lines, for logs and assertion messages."""
    return [f"{v.check.value}: {v.subject}: {v.detail}" for v in violations]
