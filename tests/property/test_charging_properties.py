"""Invariants of the charging domain under random workloads (hypothesis, derandomized).

- conservation: the journal reproduces every balance and bucket; every debit is an answered cost;
- concurrent grants on one balance never exceed what it covers (using every grant in full is
  always fully charged and leaves a prepaid balance >= 0);
- a repeated request changes nothing;
- expired buckets are never used;
- prices are never negative.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing.charging import apply_balance, release_orphans
from billing.ledger import audit
from billing.protocol import (
    BalanceCommand,
    CreditControlAnswer,
    CreditControlRequest,
    RequestedAction,
    RequestType,
    ResultCode,
)
from billing.scenario import Scenario, entry
from billing.state import EntryKind
from billing.tariff import builtin_catalog

CATALOG = builtin_catalog()
START = datetime(2026, 3, 2, 6, 0, tzinfo=UTC)
EUR = 1_000_000
PLANS = ["payg", "postpaid-monthly", "hybrid", "iot-pool"]
RATING_GROUPS = [100, 200, 10, 300]
DESTINATIONS = ["33140000000", "34910000000", "12125550000", "33900000000", None]
SETTINGS = settings(
    derandomize=True,
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

amounts = st.integers(min_value=0, max_value=3 * EUR)
usage = st.integers(min_value=0, max_value=2000)


def quantity(rating_group: int, n: int) -> int:
    """Scale a small number to a sensible amount of the rating group's unit."""
    return n * 100_000 if rating_group == 10 else (n if rating_group == 100 else n % 7)


step = st.tuples(
    st.sampled_from(["initial", "update", "terminate", "event", "topup", "wait", "repeat"]),
    st.integers(min_value=0, max_value=5),  # which subscriber / session
    st.sampled_from(RATING_GROUPS),
    usage,
    st.booleans(),
)


def new_scenario(plans: list[str], balances: list[int]) -> Scenario:
    sc = Scenario(catalog=CATALOG, now=START)
    for i, (plan, balance) in enumerate(zip(plans, balances, strict=True)):
        prepaid = plan in ("payg", "hybrid")
        joining = plan == "iot-pool" and "shared" in sc.state.accounts
        sc.subscriber(
            f"sub{i}",
            plan,
            balance=balance if prepaid else 0,
            credit_limit=balance if plan != "payg" and not joining else 0,
            account_id="shared" if plan == "iot-pool" else None,
        )
    return sc


def run(
    sc: Scenario, steps: list[tuple[str, int, int, int, bool]], count: int
) -> list[tuple[CreditControlRequest, CreditControlAnswer]]:
    """Drive random requests; returns every (request, answer) that reached the domain."""
    sent: list[tuple[CreditControlRequest, CreditControlAnswer]] = []
    numbers: dict[str, int] = {}
    for index, (action, who, rg, n, flag) in enumerate(steps):
        sub = f"sub{who % count}"
        sid = f"{sub}-s{who}"
        amount = quantity(rg, n)
        if action == "initial" and sid not in numbers:
            numbers[sid] = 0
            sc.destination = DESTINATIONS[n % len(DESTINATIONS)]
            request = sc.request(RequestType.INITIAL, sid, 0, sub, entry(rg, request=amount))
        elif action in ("update", "terminate") and sid in numbers:
            numbers[sid] += 1
            kind = RequestType.UPDATE if action == "update" else RequestType.TERMINATION
            ask = amount if flag and action == "update" else None
            request = sc.request(kind, sid, numbers[sid], sub, entry(rg, used=amount, request=ask))
            if action == "terminate":
                numbers.pop(sid)
        elif action == "event":
            what = RequestedAction.DIRECT_DEBITING if flag else RequestedAction.CHECK_BALANCE
            request = sc.request(
                RequestType.EVENT,
                f"ev{index}",
                0,
                sub,
                entry(rg, request=max(amount, 1)),
                action=what,
            )
        elif action == "topup":
            apply_balance(
                sc.state,
                BalanceCommand("topup", sub, amount + 1, f"top{index}"),
                now=sc.now,
            )
            sc.collect()
            continue
        elif action == "wait":
            sc.advance(n * 7)
            release_orphans(sc.state, now=sc.now)
            sc.collect()
            continue
        elif action == "repeat" and sent:
            request = sent[n % len(sent)][0]
        else:
            continue
        sent.append((request, sc.send(request)))
    return sent


@SETTINGS
@given(
    plans=st.lists(st.sampled_from(PLANS), min_size=1, max_size=4),
    balances=st.lists(amounts, min_size=4, max_size=4),
    steps=st.lists(step, max_size=40),
)
def test_conservation_journal_reproduces_balances_and_debits_are_answered_costs(
    plans: list[str], balances: list[int], steps: list[tuple[str, int, int, int, bool]]
) -> None:
    sc = new_scenario(plans, balances[: len(plans)])
    sent = run(sc, steps, len(plans))
    assert audit(sc.state, sc.journal) == []
    # Nothing created or destroyed: money moved only by the lines written for it, and every
    # debit line belongs to an answered cost (each answer's cost counted once).
    answered = {}
    for request, answer in sent:
        answered[request.idempotency_key] = answer.cost_micros
    debits: dict[str, int] = {}
    for line in sc.journal:
        if line.kind is EntryKind.DEBIT:
            debits[line.idempotency_key] = debits.get(line.idempotency_key, 0) - line.amount_micros
    for key, debited in debits.items():
        assert debited == answered[key]
    credits = sum(e.amount_micros for e in sc.journal if e.amount_micros > 0)
    total = sum(a.balance_micros for a in sc.state.accounts.values())
    assert total == credits - sum(debits.values())


@SETTINGS
@given(
    plan=st.sampled_from(PLANS),
    funds=amounts,
    asks=st.lists(st.tuples(st.sampled_from(RATING_GROUPS), usage), min_size=1, max_size=12),
    destination=st.sampled_from(DESTINATIONS),
)
def test_concurrent_grants_on_one_balance_never_exceed_what_it_covers(
    plan: str, funds: int, asks: list[tuple[int, int]], destination: str | None
) -> None:
    sc = Scenario(catalog=CATALOG, now=START, destination=destination)
    prepaid = plan in ("payg", "hybrid")
    for i in range(3):
        sc.subscriber(
            f"m{i}",
            plan,
            balance=funds if prepaid and i == 0 else 0,
            credit_limit=funds if plan != "payg" and i == 0 else 0,
            account_id="pool",
        )
    grants = []
    for i, (rg, n) in enumerate(asks):
        answer = sc.initial(f"s{i}", f"m{i % 3}", entry(rg, request=quantity(rg, n)))
        for grant in answer.services:
            if grant.result_code is ResultCode.SUCCESS and grant.granted is not None:
                grants.append((f"s{i}", f"m{i % 3}", rg, grant.granted))
    account = sc.state.accounts["pool"]
    floor = -account.credit_limit_micros
    assert account.reserved_micros <= account.balance_micros - floor
    for bucket in sc.state.buckets.values():
        assert bucket.reserved_units <= bucket.units
    # Every session uses its whole grant at once: all of it is charged, nothing is uncharged.
    for sid, sub, rg, granted in grants:
        used = granted.time_s or granted.total_octets or granted.service_units
        answer = sc.terminate(sid, 1, sub, entry(rg, used=used))
        assert answer.services[0].uncharged_micros == 0
    assert account.balance_micros >= floor
    assert account.reserved_micros == 0
    assert audit(sc.state, sc.journal) == []


@SETTINGS
@given(
    plans=st.lists(st.sampled_from(PLANS), min_size=1, max_size=3),
    balances=st.lists(amounts, min_size=3, max_size=3),
    steps=st.lists(step, min_size=1, max_size=30),
    pick=st.integers(min_value=0, max_value=10**6),
)
def test_a_repeated_request_changes_nothing(
    plans: list[str],
    balances: list[int],
    steps: list[tuple[str, int, int, int, bool]],
    pick: int,
) -> None:
    sc = new_scenario(plans, balances[: len(plans)])
    sent = run(sc, steps, len(plans))
    if not sent:
        return
    stored = [(r, a) for r, a in sent if r.idempotency_key in sc.state.answers]
    if not stored:
        return
    request, answer = stored[pick % len(stored)]
    before = {k: (a.balance_micros, a.reserved_micros) for k, a in sc.state.accounts.items()}
    units = {k: (b.units, b.reserved_units) for k, b in sc.state.buckets.items()}
    journal = len(sc.journal)
    sessions = set(sc.state.sessions)
    again = sc.send(request)
    assert again == sc.state.answers[request.idempotency_key]
    assert again is answer or request.request_type is not RequestType.EVENT or again == answer
    assert {
        k: (a.balance_micros, a.reserved_micros) for k, a in sc.state.accounts.items()
    } == before
    assert {k: (b.units, b.reserved_units) for k, b in sc.state.buckets.items()} == units
    assert len(sc.journal) == journal and set(sc.state.sessions) == sessions


@SETTINGS
@given(
    days=st.integers(min_value=0, max_value=60),
    seconds=st.integers(min_value=0, max_value=86_400),
    rg=st.sampled_from([100, 200, 10]),
    n=usage,
)
def test_expired_buckets_are_never_used(days: int, seconds: int, rg: int, n: int) -> None:
    sc = Scenario(catalog=CATALOG, now=START)
    sc.subscriber("bob", "postpaid-monthly", credit_limit=1000 * EUR)
    before = {b.bucket_id: b.units for b in sc.state.buckets.values()}
    sc.now = START + timedelta(days=days, seconds=seconds)
    amount = max(quantity(rg, n), 1)
    sc.initial("s1", "bob", entry(rg, request=amount))
    sc.advance(30)
    sc.terminate("s1", 1, "bob", entry(rg, used=amount))
    sc.event("e1", "bob", RequestedAction.DIRECT_DEBITING, entry(rg, request=amount))
    for bucket in sc.state.buckets.values():
        if bucket.expires_at is not None and bucket.expires_at <= sc.now - timedelta(seconds=30):
            assert bucket.units == before[bucket.bucket_id]
    for line in sc.journal:
        if line.kind is EntryKind.BUCKET_DEBIT:
            bucket = sc.state.buckets[line.bucket_id or ""]
            assert bucket.expires_at is None or START + timedelta(days=days, seconds=seconds) < (
                bucket.expires_at
            )
    assert audit(sc.state, sc.journal) == []


@SETTINGS
@given(
    plan=st.sampled_from(PLANS),
    rg=st.sampled_from(RATING_GROUPS),
    n=usage,
    offset=st.integers(min_value=0, max_value=14 * 86_400),
    destination=st.sampled_from(DESTINATIONS),
)
def test_prices_are_never_negative(
    plan: str, rg: int, n: int, offset: int, destination: str | None
) -> None:
    sc = Scenario(catalog=CATALOG, now=START + timedelta(seconds=offset), destination=destination)
    sc.subscriber("x", plan, balance=EUR if plan in ("payg", "hybrid") else 0, credit_limit=0)
    amount = quantity(rg, n)
    answers = [
        sc.event("p", "x", RequestedAction.PRICE_ENQUIRY, entry(rg, request=max(amount, 1))),
        sc.initial("s", "x", entry(rg, request=amount)),
        sc.terminate("s", 1, "x", entry(rg, used=amount)),
    ]
    for answer in answers:
        assert answer.cost_micros >= 0
        assert all(g.cost_micros >= 0 and g.uncharged_micros >= 0 for g in answer.services)
    assert all(line.amount_micros <= 0 for line in sc.journal if line.kind is EntryKind.DEBIT)
