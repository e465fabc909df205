"""A stateful test: random sessions, top-ups, retransmissions, out-of-order updates and orphan
timeouts against a simple reference model of the expected balances, checked after every step.

The model is a separate, deliberately naive implementation for three accounts: prepaid and
postpaid on ``payg`` (no bundles, overuse capped), and postpaid on a ``postpaid-monthly`` with
small bundles (overuse charged). A grant holds free bucket units, then the worst-case price of
what the money can afford; a report releases the rating group's hold, takes free bucket units,
then charges the price of the rest (from the grant's start), capped at the free money where the
plan says so; a silent session is dropped after ``2 x 3600 s``; a repeated request changes
nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    multiple,
    precondition,
    rule,
)

from billing.charging import apply_balance, release_orphans
from billing.ledger import audit
from billing.protocol import (
    BalanceCommand,
    CreditControlAnswer,
    CreditControlRequest,
    PaymentMode,
    RequestType,
    ResultCode,
    ServiceKind,
)
from billing.rating import UsageEvent, affordable_units, rate, reservation_price
from billing.scenario import Scenario, entry
from billing.tariff import Plan, builtin_catalog, load_plan, template_text

PM_SMALL = (
    template_text("postpaid-monthly")
    .replace("plan_id: postpaid-monthly", "plan_id: pm-small")
    .replace("units: 30000,", "units: 600,")
    .replace("units: 500,", "units: 5,")
    .replace("units: 21474836480,", "units: 2000000,")
)
CATALOG = builtin_catalog().with_plan(load_plan(PM_SMALL, source="pm-small"))
START = datetime(2026, 3, 6, 18, 52, tzinfo=UTC)  # Friday: peak ends at 20:00 Paris (19:00 UTC)
DESTINATION = "33140000000"
ORPHAN_AFTER = timedelta(seconds=2 * 3600)  # both plans: factor 2 x 3600 s
SERVICES = {100: ServiceKind.VOICE, 200: ServiceKind.SMS, 10: ServiceKind.DATA}
# name -> (plan, payment mode, opening balance, credit limit, capped, default quotas by rg)
SUBSCRIBERS = {
    "pre": ("payg", PaymentMode.PREPAID, 500_000, 0, True, {100: 300, 200: 1, 10: 10_485_760}),
    "post": (
        "payg",
        PaymentMode.POSTPAID,
        500_000,
        2_000_000,
        True,
        {100: 300, 200: 1, 10: 10_485_760},
    ),
    "bun": (
        "pm-small",
        PaymentMode.POSTPAID,
        0,
        2_000_000,
        False,
        {100: 600, 200: 1, 10: 52_428_800},
    ),
}
BUNDLES = {"bun": {ServiceKind.VOICE: 600, ServiceKind.SMS: 5, ServiceKind.DATA: 2_000_000}}


@dataclass
class Hold:
    money: int
    units: int  # bucket units
    start: datetime


@dataclass
class ModelSession:
    subscriber: str
    holds: dict[int, Hold] = field(default_factory=dict)  # by rating group
    deadline: datetime = START
    next_number: int = 1
    skipped: list[int] = field(default_factory=list)


@dataclass
class ModelAccount:
    plan: Plan
    balance: int
    floor: int
    capped: bool
    quotas: dict[int, int]
    buckets: dict[ServiceKind, list[int]]  # service -> [units, reserved]
    holds: int = 0

    def free(self) -> int:
        return max(0, self.balance - self.floor - self.holds)


def amount_of(rg: int, n: int) -> int:
    return n * 50_000 if rg == 10 else (n if rg == 100 else 1 + n % 3)


class ChargingMachine(RuleBasedStateMachine):
    sessions = Bundle("sessions")

    def __init__(self) -> None:
        super().__init__()
        self.sc = Scenario(catalog=CATALOG, now=START, destination=DESTINATION)
        self.accounts: dict[str, ModelAccount] = {}
        for name, (plan_id, mode, balance, limit, capped, quotas) in SUBSCRIBERS.items():
            self.sc.subscriber(
                name, plan_id, balance=balance, credit_limit=limit, payment_mode=mode
            )
            buckets = {k: [v, 0] for k, v in BUNDLES.get(name, {}).items()}
            self.accounts[name] = ModelAccount(
                CATALOG.get(plan_id), balance, -limit, capped, quotas, buckets
            )
        self.model: dict[str, ModelSession] = {}
        self.sent: list[tuple[CreditControlRequest, CreditControlAnswer]] = []
        self.topups: dict[str, tuple[str, int]] = {}
        self.count = 0

    # --- the model ------------------------------------------------------------------------------

    def _grant(self, account: ModelAccount, rg: int, wanted: int) -> tuple[int, Hold]:
        """Bucket units first, then what the free money covers at the worst-case price."""
        wanted = wanted or account.quotas[rg]
        now = self.sc.now
        bucket = account.buckets.get(SERVICES[rg])
        units = min(wanted, bucket[0] - bucket[1]) if bucket else 0
        left = wanted - units
        usage = UsageEvent(SERVICES[rg], left, now, rg, DESTINATION)
        paid = affordable_units(usage, account.plan, account.free(), at=now) if left else 0
        money = 0
        if paid:
            held = UsageEvent(SERVICES[rg], paid, now, rg, DESTINATION)
            money = reservation_price(held, account.plan, at=now)
        return units + paid, Hold(money, units, now)

    def _charge(self, account: ModelAccount, rg: int, used: int, start: datetime) -> int:
        """Free bucket units first, then the price of the rest (capped: up to the free money)."""
        bucket = account.buckets.get(SERVICES[rg])
        if bucket:
            take = min(used, bucket[0] - bucket[1])
            bucket[0] -= take
            used -= take
        if not used:
            return 0
        usage = UsageEvent(SERVICES[rg], used, start, rg, DESTINATION)
        cost = rate(usage, account.plan, at=start).cost_micros
        charged = min(cost, account.free()) if account.capped else cost
        account.balance -= charged
        return charged

    def _release(self, account: ModelAccount, rg: int, hold: Hold) -> None:
        account.holds -= hold.money
        if hold.units:
            account.buckets[SERVICES[rg]][1] -= hold.units

    def _expire(self) -> None:
        for sid, session in list(self.model.items()):
            if session.deadline <= self.sc.now:
                self._drop(sid)

    def _drop(self, sid: str) -> None:
        session = self.model.pop(sid)
        account = self.accounts[session.subscriber]
        for rg, hold in session.holds.items():
            self._release(account, rg, hold)

    def _report(
        self, sid: str, rg: int, used: int | None, wanted: int | None
    ) -> tuple[int, int, bool]:
        """Apply one service entry to the model: (charged, granted, released session)."""
        session = self.model[sid]
        account = self.accounts[session.subscriber]
        old = session.holds.pop(rg, None) if used is not None or wanted is not None else None
        if old is not None:
            self._release(account, rg, old)
        charged = 0
        if used:
            start = old.start if old is not None else self.sc.now
            charged = self._charge(account, rg, used, start)
        granted = 0
        if wanted is not None:
            granted, hold = self._grant(account, rg, wanted)
            if granted:
                account.holds += hold.money
                if hold.units:
                    account.buckets[SERVICES[rg]][1] += hold.units
                session.holds[rg] = hold
        return charged, granted, False

    # --- rules ----------------------------------------------------------------------------------

    @rule(
        target=sessions,
        who=st.sampled_from(sorted(SUBSCRIBERS)),
        rg=st.sampled_from(sorted(SERVICES)),
        n=st.integers(0, 400),
    )
    def initial(self, who: str, rg: int, n: int) -> object:
        self.count += 1
        sid = f"s{self.count}"
        wanted = amount_of(rg, n)
        self.model[sid] = ModelSession(who, deadline=self.sc.now + ORPHAN_AFTER)
        _, granted, _ = self._report(sid, rg, None, wanted)
        answer = self._send(sc_request(self.sc, RequestType.INITIAL, sid, 0, who, rg, None, wanted))
        if granted:
            assert answer.result_code is ResultCode.SUCCESS
            assert answer.services[0].granted is not None
            return sid
        assert answer.result_code is ResultCode.CREDIT_LIMIT_REACHED
        self.model.pop(sid)
        return multiple()

    @rule(
        sid=sessions,
        rg=st.sampled_from(sorted(SERVICES)),
        n=st.integers(0, 400),
        ask=st.booleans(),
        skip=st.booleans(),
    )
    def update(self, sid: str, rg: int, n: int, ask: bool, skip: bool) -> None:
        self._expire()
        session = self.model.get(sid)
        if session is None:
            answer = self._send(
                sc_request(self.sc, RequestType.UPDATE, sid, 99, "pre", rg, 1, None)
            )
            assert answer.result_code is ResultCode.UNKNOWN_SESSION_ID
            return
        if session.skipped and not skip:
            number = session.skipped.pop()  # a late, out-of-order update
        else:
            if skip:
                session.skipped.append(session.next_number)
                session.next_number += 1
            number = session.next_number
            session.next_number += 1
        used = amount_of(rg, n)
        wanted = amount_of(rg, n // 2) if ask else None
        charged, granted, _ = self._report(sid, rg, used, wanted)
        session.deadline = self.sc.now + ORPHAN_AFTER
        answer = self._send(
            sc_request(
                self.sc, RequestType.UPDATE, sid, number, session.subscriber, rg, used, wanted
            )
        )
        (grant,) = answer.services
        assert grant.cost_micros == charged
        assert (grant.granted is not None) == bool(granted)

    @rule(sid=consumes(sessions), rg=st.sampled_from(sorted(SERVICES)), n=st.integers(0, 400))
    def terminate(self, sid: str, rg: int, n: int) -> None:
        self._expire()
        session = self.model.get(sid)
        if session is None:
            answer = self._send(
                sc_request(self.sc, RequestType.TERMINATION, sid, 98, "pre", rg, 1, None)
            )
            assert answer.result_code is ResultCode.UNKNOWN_SESSION_ID
            return
        used = amount_of(rg, n)
        number = session.next_number
        charged, _, _ = self._report(sid, rg, used, None)
        self._drop(sid)
        answer = self._send(
            sc_request(
                self.sc, RequestType.TERMINATION, sid, number, session.subscriber, rg, used, None
            )
        )
        assert answer.result_code is ResultCode.SUCCESS
        assert answer.cost_micros == charged
        assert sid not in self.sc.state.sessions

    @rule(
        who=st.sampled_from(sorted(SUBSCRIBERS)),
        amount=st.integers(1, 2_000_000),
        reuse=st.booleans(),
    )
    def topup(self, who: str, amount: int, reuse: bool) -> None:
        if reuse and self.topups:
            key = sorted(self.topups)[0]
            who, amount = self.topups[key]  # the same command again: moves nothing
        else:
            key = f"t{len(self.topups)}"
            self.topups[key] = (who, amount)
            self.accounts[who].balance += amount
        apply_balance(self.sc.state, BalanceCommand("topup", who, amount, key), now=self.sc.now)
        self.sc.collect()

    @precondition(lambda self: bool(self.sent))
    @rule(pick=st.integers(0, 10**6), flag=st.booleans())
    def retransmit(self, pick: int, flag: bool) -> None:
        request, answer = self.sent[pick % len(self.sent)]
        if request.idempotency_key not in self.sc.state.answers:
            return  # a failure answer that was never stored; resending it re-evaluates
        again = CreditControlRequest(
            **{**{f: getattr(request, f) for f in request.__slots__}, "retransmission": flag}
        )
        assert self.sc.send(again) is answer

    @rule(seconds=st.integers(1, 3000))
    def wait(self, seconds: int) -> None:
        self.sc.advance(seconds)
        released = release_orphans(self.sc.state, now=self.sc.now)
        self.sc.collect()
        expected = sorted(s for s, m in self.model.items() if m.deadline <= self.sc.now)
        assert sorted(released) == expected
        self._expire()

    def _send(self, request: CreditControlRequest) -> CreditControlAnswer:
        answer = self.sc.send(request)
        self.sent.append((request, answer))
        return answer

    # --- invariants -----------------------------------------------------------------------------

    @invariant()
    def balances_match_the_model(self) -> None:
        for name, expected in self.accounts.items():
            account = self.sc.state.accounts[name]
            assert account.balance_micros == expected.balance, name
            assert account.reserved_micros == expected.holds, name
            assert account.reserved_micros >= 0
            if expected.capped:  # overuse charged to a postpaid account may pass its limit
                assert account.balance_micros >= expected.floor
                assert account.reserved_micros <= account.balance_micros - expected.floor

    @invariant()
    def buckets_match_the_model(self) -> None:
        for bucket in self.sc.state.buckets.values():
            units, reserved = self.accounts[bucket.account_id].buckets[bucket.service]
            assert (bucket.units, bucket.reserved_units) == (units, reserved), bucket.bundle_id

    @invariant()
    def sessions_match_the_model(self) -> None:
        assert set(self.sc.state.sessions) == set(self.model)

    @invariant()
    def journal_is_conserved(self) -> None:
        assert audit(self.sc.state, self.sc.journal) == []


def sc_request(
    sc: Scenario,
    kind: RequestType,
    sid: str,
    number: int,
    who: str,
    rg: int,
    used: int | None,
    wanted: int | None,
) -> CreditControlRequest:
    return sc.request(kind, sid, number, who, entry(rg, used=used, request=wanted))


ChargingMachine.TestCase.settings = settings(
    derandomize=True,
    max_examples=40,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestChargingMachine = ChargingMachine.TestCase
