"""A stateful test: random sessions, top-ups, retransmissions, out-of-order updates and orphan
timeouts against a simple reference model of the expected balances, checked after every step.

The model is a separate, deliberately naive implementation for prepaid and postpaid accounts on
the ``payg`` plan (no bundles, overuse capped): a grant holds the worst-case price of what the
account can afford; a report releases the rating group's hold, then charges the price of the
usage (from the grant's start) up to what is free; a silent session is dropped after
``2 x 3600 s``; a repeated request changes nothing.
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
from billing.tariff import builtin_catalog

CATALOG = builtin_catalog()
PLAN = CATALOG.get("payg")
START = datetime(2026, 3, 6, 18, 52, tzinfo=UTC)  # Friday: peak ends at 20:00 Paris (19:00 UTC)
DESTINATION = "33140000000"
ORPHAN_AFTER = timedelta(seconds=2 * 3600)
SERVICES = {100: ServiceKind.VOICE, 200: ServiceKind.SMS, 10: ServiceKind.DATA}
DEFAULT_QUOTA = {100: 300, 200: 1, 10: 10_485_760}  # payg's services
SUBSCRIBERS = {"pre": (PaymentMode.PREPAID, 0), "post": (PaymentMode.POSTPAID, 2_000_000)}


@dataclass
class ModelSession:
    subscriber: str
    holds: dict[int, tuple[int, datetime]] = field(default_factory=dict)  # rg -> (hold, start)
    deadline: datetime = START
    next_number: int = 1
    skipped: list[int] = field(default_factory=list)


@dataclass
class ModelAccount:
    balance: int
    floor: int
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
        for name, (mode, limit) in SUBSCRIBERS.items():
            self.sc.subscriber(name, "payg", balance=500_000, credit_limit=limit, payment_mode=mode)
            self.accounts[name] = ModelAccount(balance=500_000, floor=-limit)
        self.model: dict[str, ModelSession] = {}
        self.sent: list[tuple[CreditControlRequest, CreditControlAnswer]] = []
        self.topups: dict[str, tuple[str, int]] = {}
        self.count = 0

    # --- the model ------------------------------------------------------------------------------

    def _grant(self, account: ModelAccount, rg: int, wanted: int) -> tuple[int, int]:
        wanted = wanted or DEFAULT_QUOTA[rg]
        usage = UsageEvent(SERVICES[rg], wanted, self.sc.now, rg, DESTINATION)
        units = affordable_units(usage, PLAN, account.free(), at=self.sc.now)
        if not units:
            return 0, 0
        held = UsageEvent(SERVICES[rg], units, self.sc.now, rg, DESTINATION)
        return units, reservation_price(held, PLAN, at=self.sc.now)

    def _charge(self, account: ModelAccount, rg: int, used: int, start: datetime) -> int:
        cost = rate(UsageEvent(SERVICES[rg], used, start, rg, DESTINATION), PLAN, at=start)
        charged = min(cost.cost_micros, account.free())
        account.balance -= charged
        return charged

    def _expire(self) -> None:
        for sid, session in list(self.model.items()):
            if session.deadline <= self.sc.now:
                self._drop(sid)

    def _drop(self, sid: str) -> None:
        session = self.model.pop(sid)
        account = self.accounts[session.subscriber]
        account.holds -= sum(hold for hold, _ in session.holds.values())

    def _report(
        self, sid: str, rg: int, used: int | None, wanted: int | None
    ) -> tuple[int, int, bool]:
        """Apply one service entry to the model: (charged, granted, released session)."""
        session = self.model[sid]
        account = self.accounts[session.subscriber]
        old = session.holds.pop(rg, None) if used is not None or wanted is not None else None
        if old is not None:
            account.holds -= old[0]
        charged = 0
        if used:
            start = old[1] if old is not None else self.sc.now
            charged = self._charge(account, rg, used, start)
        granted = 0
        if wanted is not None:
            granted, hold = self._grant(account, rg, wanted)
            if granted:
                account.holds += hold
                session.holds[rg] = (hold, self.sc.now)
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
            assert account.balance_micros >= expected.floor
            assert account.reserved_micros <= account.balance_micros - expected.floor

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
