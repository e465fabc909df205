"""PROTOCOL.md over gRPC, end to end: real front doors, real Ray owners, real PostgreSQL.

One system per module (starting owners costs seconds): two front doors side by side on
localhost (stateless, either may be used; the first reaches the owners over their direct channel,
the second with Ray calls, so a session may move between the transports), two owners on the session's local Ray cluster, a
database of the module's own. Every test uses its own subscriber ids, and the module ends with
the conservation audit (the journal reproduces every balance).
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest

from cluster.pb import billing_pb2 as pb
from cluster.pb import billing_pb2_grpc as pb_grpc

from ._grpc_helpers import RG_DATA, RG_SMS, RG_VOICE, DoorThread, audit, cc, database

pytestmark = pytest.mark.integration

EUR = 1_000_000


@dataclass
class System:
    dsn: str
    addresses: list[str]
    channels: list[grpc.Channel]

    @property
    def charging(self) -> pb_grpc.ChargingStub:
        return pb_grpc.ChargingStub(self.channels[0])

    @property
    def accounts(self) -> pb_grpc.AccountsStub:
        return pb_grpc.AccountsStub(self.channels[0])

    @property
    def tariffs(self) -> pb_grpc.TariffsStub:
        return pb_grpc.TariffsStub(self.channels[0])

    def charging_at(self, index: int) -> pb_grpc.ChargingStub:
        return pb_grpc.ChargingStub(self.channels[index % len(self.channels)])


@pytest.fixture(scope="module")
def system(ray_cluster: Any, pg_server: str) -> Iterator[System]:
    from actors.bootstrap import start_cluster, stop_cluster
    from actors.owner import OwnerConfig

    with database(pg_server) as dsn:
        handles = start_cluster(
            dsn,
            owners=2,
            vshard_count=64,
            config=OwnerConfig(dsn=dsn, sweep_interval_s=0.2),
            ready_timeout_s=120,
        )
        doors = [DoorThread(transport="direct"), DoorThread(transport="ray")]
        try:
            addresses = [door.start() for door in doors]
            channels = [grpc.insecure_channel(address) for address in addresses]
            yield System(dsn, addresses, channels)
            for channel in channels:
                channel.close()
            violations = audit(dsn)
            assert violations == [], violations
        finally:
            for door in doors:
                door.stop()
            stop_cluster(handles)


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def new_id(prefix: str = "49170") -> str:
    return f"{prefix}{uuid.uuid4().int % 10**9:09d}"


def subscriber(
    system: System,
    *,
    plan: str = "payg",
    balance: int = 10 * EUR,
    credit: int = 0,
    account_id: str | None = None,
) -> str:
    sid = new_id()
    request = pb.CreateSubscriberRequest(
        subscriber_id=sid, plan_id=plan, initial_balance_micros=balance, credit_limit_micros=credit
    )
    if account_id is not None:
        request.account_id = account_id
    system.accounts.CreateSubscriber(request, timeout=30)
    return sid


def balance(system: System, sid: str) -> pb.GetBalanceResponse:
    response: pb.GetBalanceResponse = system.accounts.GetBalance(
        pb.GetBalanceRequest(subscriber_id=sid), timeout=30
    )
    return response


def call(system: System, msg: pb.CreditControlRequest, door: int = 0) -> pb.CreditControlAnswer:
    answer: pb.CreditControlAnswer = system.charging_at(door).CreditControl(msg, timeout=30)
    return answer


INITIAL, UPDATE, TERMINATION, EVENT = (
    pb.REQUEST_TYPE_INITIAL,
    pb.REQUEST_TYPE_UPDATE,
    pb.REQUEST_TYPE_TERMINATION,
    pb.REQUEST_TYPE_EVENT,
)


# ---------------------------------------------------------------------------------------------
# Sessions
# ---------------------------------------------------------------------------------------------


def test_session_initial_update_termination_reserves_debits_and_releases(system: System) -> None:
    sid = subscriber(system)
    start = call(system, cc("s-life", sid, INITIAL, 0))
    assert start.result_code == pb.RESULT_CODE_SUCCESS
    grant = start.services[0]
    assert grant.result_code == pb.RESULT_CODE_SUCCESS
    assert grant.granted.time_s == 60 and grant.validity_time_s > 0
    held = balance(system, sid)
    assert held.reserved_micros > 0
    assert held.balance_micros == 10 * EUR
    assert held.available_micros == 10 * EUR - held.reserved_micros

    update = call(system, cc("s-life", sid, UPDATE, 1, used_s=60), door=1)
    assert update.result_code == pb.RESULT_CODE_SUCCESS
    assert update.services[0].cost_micros > 0
    end = call(system, cc("s-life", sid, TERMINATION, 2, request_s=None, used_s=20))
    assert end.result_code == pb.RESULT_CODE_SUCCESS
    after = balance(system, sid)
    assert after.reserved_micros == 0
    charged = update.services[0].cost_micros + end.services[0].cost_micros
    assert after.balance_micros == 10 * EUR - charged

    # The session is gone: a later request for it is 5002.
    late = call(system, cc("s-life", sid, UPDATE, 3, used_s=5))
    assert late.result_code == pb.RESULT_CODE_UNKNOWN_SESSION_ID
    assert balance(system, sid).balance_micros == after.balance_micros


def test_unknown_session_and_unknown_user(system: System) -> None:
    sid = subscriber(system)
    unknown = call(system, cc("never-opened", sid, UPDATE, 1, used_s=10))
    assert unknown.result_code == pb.RESULT_CODE_UNKNOWN_SESSION_ID
    assert unknown.session_id == "never-opened" and unknown.request_number == 1
    nobody = call(system, cc("s-nobody", new_id("4999"), INITIAL, 0))
    assert nobody.result_code == pb.RESULT_CODE_USER_UNKNOWN
    assert balance(system, sid).balance_micros == 10 * EUR


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda m: m.ClearField("session_id"), "session_id"),
        (lambda m: m.ClearField("subscriber_id"), "subscriber_id"),
        (lambda m: m.ClearField("event_time"), "event_time"),
        (lambda m: setattr(m, "request_type", 0), "request_type"),
        (lambda m: setattr(m.services[0].requested, "time_s", -1), "services[0].requested.time_s"),
        (lambda m: setattr(m, "request_number", 4), "request_number"),
        (lambda m: setattr(m, "requested_action", 1), "requested_action"),
    ],
)
def test_invalid_argument_names_the_field(system: System, mutate: Any, field: str) -> None:
    msg = cc("s-bad", "4917", INITIAL, 0)
    mutate(msg)
    with pytest.raises(grpc.RpcError) as caught:
        call(system, msg)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith(f"{field}: ")


def test_retransmissions_get_the_original_answer_and_move_no_money(system: System) -> None:
    sid = subscriber(system)
    first = call(system, cc("s-re", sid, INITIAL, 0))
    held = balance(system, sid)
    again = call(system, cc("s-re", sid, INITIAL, 0, retransmission=True), door=1)
    assert again == first
    assert balance(system, sid) == held
    end = call(system, cc("s-re", sid, TERMINATION, 1, request_s=None, used_s=30))
    after = balance(system, sid)
    # Retransmitted after a relay failover, without the flag: same answer, nothing charged twice.
    for door in (0, 1):
        assert call(system, cc("s-re", sid, TERMINATION, 1, request_s=None, used_s=30), door) == end
    assert balance(system, sid) == after
    assert after.balance_micros == 10 * EUR - end.cost_micros


def test_out_of_order_updates_are_each_answered_and_charged_once(system: System) -> None:
    sid = subscriber(system)
    start = call(system, cc("s-ooo", sid, INITIAL, 0, request_s=120))
    assert start.result_code == pb.RESULT_CODE_SUCCESS
    second = call(system, cc("s-ooo", sid, UPDATE, 2, used_s=30))
    first = call(system, cc("s-ooo", sid, UPDATE, 1, used_s=30), door=1)
    assert second.result_code == first.result_code == pb.RESULT_CODE_SUCCESS
    assert (first.request_number, second.request_number) == (1, 2)
    # Pipelined duplicates of both: answered again, charged once.
    assert call(system, cc("s-ooo", sid, UPDATE, 1, used_s=30)) == first
    assert call(system, cc("s-ooo", sid, UPDATE, 2, used_s=30)) == second
    end = call(system, cc("s-ooo", sid, TERMINATION, 3, request_s=None, used_s=0))
    charged = first.cost_micros + second.cost_micros + end.cost_micros
    after = balance(system, sid)
    assert after.reserved_micros == 0
    assert after.balance_micros == 10 * EUR - charged
    assert first.cost_micros > 0 and second.cost_micros > 0


def test_multiple_services_in_one_request_have_their_own_results(system: System) -> None:
    sid = subscriber(system)
    msg = cc("s-mscc", sid, INITIAL, 0)
    data = msg.services.add(rating_group=RG_DATA)
    data.requested.total_octets = 1 << 20
    msg.services.add(rating_group=9999).requested.time_s = 10
    answer = call(system, msg)
    by_group = {grant.rating_group: grant for grant in answer.services}
    assert by_group[RG_VOICE].result_code == pb.RESULT_CODE_SUCCESS
    assert by_group[RG_DATA].granted.total_octets == 1 << 20
    assert by_group[9999].result_code == pb.RESULT_CODE_RATING_FAILED
    assert by_group[9999].error_message
    call(system, cc("s-mscc", sid, TERMINATION, 1, request_s=None, used_s=0))


def test_low_balance_grants_what_it_covers_then_credit_limit_reached(system: System) -> None:
    sid = subscriber(system, balance=450_000)  # 0.45 EUR: one and a half minutes to the EU
    start = call(system, cc("s-low", sid, INITIAL, 0, request_s=600))
    grant = start.services[0]
    assert grant.result_code == pb.RESULT_CODE_SUCCESS
    assert 0 < grant.granted.time_s < 600
    assert grant.final_unit.action == pb.FINAL_UNIT_ACTION_TERMINATE
    held = balance(system, sid)
    assert held.reserved_micros <= held.balance_micros
    other = call(system, cc("s-low-2", sid, INITIAL, 0, request_s=600))
    assert (
        other.result_code == pb.RESULT_CODE_CREDIT_LIMIT_REACHED
        or other.services[0].result_code == pb.RESULT_CODE_CREDIT_LIMIT_REACHED
    )
    end = call(
        system, cc("s-low", sid, TERMINATION, 1, request_s=None, used_s=grant.granted.time_s)
    )
    assert end.result_code == pb.RESULT_CODE_SUCCESS
    after = balance(system, sid)
    assert after.reserved_micros == 0 and after.balance_micros >= 0


def test_orphaned_session_is_released_after_its_timeout(system: System) -> None:
    from billing.tariff import template_text

    text = template_text("payg")
    text = re.sub(r"(?m)^plan_id: payg$", "plan_id: payg-short-orphan", text)
    text = re.sub(r"validity_time_s: \d+", "validity_time_s: 1", text)
    text = re.sub(r"orphan_timeout_factor: \d+", "orphan_timeout_factor: 1", text)
    loaded = system.tariffs.LoadPlan(pb.LoadPlanRequest(text=text), timeout=30)
    assert loaded.plan.plan_id == "payg-short-orphan"
    sid = subscriber(system, plan="payg-short-orphan")
    start = call(system, cc("s-orphan", sid, INITIAL, 0))
    assert start.result_code == pb.RESULT_CODE_SUCCESS
    assert balance(system, sid).reserved_micros > 0
    deadline = time.monotonic() + 30
    while balance(system, sid).reserved_micros > 0:
        assert time.monotonic() < deadline, "the orphan was not released"
        time.sleep(0.2)
    late = call(system, cc("s-orphan", sid, UPDATE, 1, used_s=1))
    assert late.result_code == pb.RESULT_CODE_UNKNOWN_SESSION_ID
    # Nothing is charged that was not reported.
    assert balance(system, sid).balance_micros == 10 * EUR


# ---------------------------------------------------------------------------------------------
# Events
# ---------------------------------------------------------------------------------------------


def test_events_debit_refund_check_balance_and_price_enquiry(system: System) -> None:
    sid = subscriber(system, balance=1 * EUR)

    def event(session: str, action: int, units: int = 1) -> pb.CreditControlAnswer:
        return call(system, cc(session, sid, EVENT, 0, rg=RG_SMS, request_s=units, action=action))

    price = event("e-price", pb.REQUESTED_ACTION_PRICE_ENQUIRY)
    assert price.result_code == pb.RESULT_CODE_SUCCESS and price.cost_micros > 0
    assert balance(system, sid).balance_micros == 1 * EUR
    enough = event("e-check", pb.REQUESTED_ACTION_CHECK_BALANCE)
    assert enough.check_balance_result == pb.CHECK_BALANCE_RESULT_ENOUGH_CREDIT
    assert balance(system, sid).balance_micros == 1 * EUR
    debit = event("e-debit", pb.REQUESTED_ACTION_DIRECT_DEBITING)
    assert debit.result_code == pb.RESULT_CODE_SUCCESS
    assert debit.cost_micros == price.cost_micros
    assert balance(system, sid).balance_micros == 1 * EUR - debit.cost_micros
    assert event("e-debit", pb.REQUESTED_ACTION_DIRECT_DEBITING) == debit  # retransmission
    refund = event("e-refund", pb.REQUESTED_ACTION_REFUND_ACCOUNT)
    assert refund.result_code == pb.RESULT_CODE_SUCCESS
    assert balance(system, sid).balance_micros == 1 * EUR
    too_much = event("e-check-2", pb.REQUESTED_ACTION_CHECK_BALANCE, units=1000)
    assert too_much.check_balance_result == pb.CHECK_BALANCE_RESULT_NO_CREDIT
    assert balance(system, sid).balance_micros == 1 * EUR


# ---------------------------------------------------------------------------------------------
# Accounts and tariffs
# ---------------------------------------------------------------------------------------------


def test_accounts_create_get_topup_adjust(system: System) -> None:
    sid = subscriber(system, balance=2 * EUR)
    got = system.accounts.GetSubscriber(pb.GetSubscriberRequest(subscriber_id=sid), timeout=30)
    assert got.subscriber.plan_id == "payg"
    assert got.subscriber.payment_mode == pb.PAYMENT_MODE_PREPAID
    with pytest.raises(grpc.RpcError) as caught:
        system.accounts.CreateSubscriber(
            pb.CreateSubscriberRequest(subscriber_id=sid, plan_id="payg"), timeout=30
        )
    assert caught.value.code() is grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.RpcError) as caught:
        system.accounts.GetBalance(pb.GetBalanceRequest(subscriber_id=new_id("4998")), timeout=30)
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND
    assert "subscriber_id" in caught.value.details()
    with pytest.raises(grpc.RpcError) as caught:
        system.accounts.CreateSubscriber(
            pb.CreateSubscriberRequest(subscriber_id=new_id(), plan_id="no-such-plan"), timeout=30
        )
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND
    assert "plan" in caught.value.details()

    top = pb.TopUpRequest(subscriber_id=sid, amount_micros=3 * EUR, idempotency_key=f"t-{sid}")
    first = system.accounts.TopUp(top, timeout=30)
    assert first.balance_after_micros == 5 * EUR
    assert system.accounts.TopUp(top, timeout=30) == first  # same key: nothing moves
    assert balance(system, sid).balance_micros == 5 * EUR
    adjust = pb.AdjustRequest(subscriber_id=sid, amount_micros=-EUR, idempotency_key=f"a-{sid}")
    assert system.accounts.Adjust(adjust, timeout=30).balance_after_micros == 4 * EUR
    with pytest.raises(grpc.RpcError) as caught:
        system.accounts.TopUp(
            pb.TopUpRequest(subscriber_id=sid, amount_micros=0, idempotency_key="k"), timeout=30
        )
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("amount_micros: ")


def test_postpaid_bundles_show_in_the_balance(system: System) -> None:
    sid = subscriber(system, plan="postpaid-monthly", balance=0, credit=100 * EUR)
    view = balance(system, sid)
    assert view.credit_limit_micros == 100 * EUR
    assert view.buckets, "postpaid-monthly provisions its monthly bundles"
    assert all(b.units > 0 and b.service != pb.SERVICE_KIND_UNSPECIFIED for b in view.buckets)


def test_tariffs_list_get_and_bad_load(system: System) -> None:
    listed = system.tariffs.ListPlans(pb.ListPlansRequest(), timeout=30)
    ids = {plan.plan_id for plan in listed.plans}
    assert {"payg", "postpaid-monthly", "hybrid", "iot-pool"} <= ids
    got = system.tariffs.GetPlan(pb.GetPlanRequest(plan_id="payg"), timeout=30)
    assert got.plan.currency == "EUR" and got.details
    with pytest.raises(grpc.RpcError) as caught:
        system.tariffs.GetPlan(pb.GetPlanRequest(plan_id="nope"), timeout=30)
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND
    from billing.tariff import template_text

    bad = (
        template_text("payg")
        .replace("plan_id: payg", "plan_id: payg-bad")
        .replace("default_quota: 300", "default_quota: -5")
    )
    with pytest.raises(grpc.RpcError) as caught:
        system.tariffs.LoadPlan(pb.LoadPlanRequest(text=bad), timeout=30)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "default_quota" in caught.value.details()


# ---------------------------------------------------------------------------------------------
# Streaming and concurrency
# ---------------------------------------------------------------------------------------------


def test_stream_answers_carry_their_ids_and_bad_requests_get_result_codes(system: System) -> None:
    sid = subscriber(system)
    requests = [
        cc(
            f"st-{i}",
            sid,
            EVENT,
            0,
            rg=RG_SMS,
            request_s=1,
            action=pb.REQUESTED_ACTION_PRICE_ENQUIRY,
        )
        for i in range(40)
    ]
    bad = cc("st-bad", sid, INITIAL, 0)
    bad.ClearField("event_time")
    answers = list(system.charging.CreditControlStream(iter([*requests, bad]), timeout=60))
    by_session = {a.session_id: a for a in answers}
    assert len(answers) == 41 and len(by_session) == 41
    assert all(by_session[f"st-{i}"].result_code == pb.RESULT_CODE_SUCCESS for i in range(40))
    assert by_session["st-bad"].result_code == pb.RESULT_CODE_MISSING_AVP
    assert by_session["st-bad"].error_message == "event_time: required"
    batch = pb.CreditControlRequestBatch(requests=requests[:5])
    [reply] = list(system.charging.CreditControlBatchStream(iter([batch]), timeout=60))
    assert [a.session_id for a in reply.answers] == [f"st-{i}" for i in range(5)]


def _grab(system: System, sid: str, index: int) -> tuple[pb.CreditControlAnswer, str]:
    session = f"race-{sid}-{index}"
    return call(system, cc(session, sid, INITIAL, 0, request_s=120), door=index), session


def _settle(system: System, sid: str, grabs: list[tuple[pb.CreditControlAnswer, str]]) -> int:
    """Terminate every granted session using all it was granted; return the total charged."""
    charged = 0
    for answer, session in grabs:
        if answer.result_code != pb.RESULT_CODE_SUCCESS:
            continue
        used = answer.services[0].granted.time_s
        end = call(system, cc(session, sid, TERMINATION, 1, request_s=None, used_s=used))
        assert end.result_code == pb.RESULT_CODE_SUCCESS
        charged += end.cost_micros
    return charged


def test_concurrent_sessions_never_get_more_than_the_balance_covers(system: System) -> None:
    start_balance = 2 * EUR
    sid = subscriber(system, balance=start_balance)
    with ThreadPoolExecutor(max_workers=16) as pool:
        grabs = list(pool.map(lambda i: _grab(system, sid, i), range(48)))
    held = balance(system, sid)
    assert held.reserved_micros <= start_balance
    assert held.available_micros >= 0
    granted = [a for a, _ in grabs if a.result_code == pb.RESULT_CODE_SUCCESS]
    assert granted, "someone must be granted"
    assert len(granted) < len(grabs), "2 EUR cannot cover 48 two-minute calls"
    charged = _settle(system, sid, grabs)
    after = balance(system, sid)
    assert after.reserved_micros == 0
    assert after.balance_micros == start_balance - charged >= 0
    assert audit(system.dsn) == []


def test_shared_account_members_never_overspend_it(system: System) -> None:
    owner = subscriber(system, plan="iot-pool", balance=1 * EUR)
    account = system.accounts.GetSubscriber(
        pb.GetSubscriberRequest(subscriber_id=owner), timeout=30
    ).subscriber.account_id
    members = [owner] + [
        subscriber(system, plan="iot-pool", balance=0, account_id=account) for _ in range(3)
    ]
    assert (
        len(
            {
                system.accounts.GetBalance(
                    pb.GetBalanceRequest(subscriber_id=m), timeout=30
                ).account_id
                for m in members
            }
        )
        == 1
    )

    def grab(index: int) -> tuple[pb.CreditControlAnswer, str, str]:
        member = members[index % len(members)]
        session = f"pool-{member}-{index}"
        msg = cc(session, member, INITIAL, 0, rg=RG_DATA, request_s=50 << 20)
        return call(system, msg, door=index), session, member

    with ThreadPoolExecutor(max_workers=12) as pool:
        grabs = list(pool.map(grab, range(24)))
    pooled = balance(system, owner)
    assert pooled.reserved_micros <= pooled.balance_micros + pooled.credit_limit_micros
    charged = 0
    for answer, session, member in grabs:
        if answer.result_code != pb.RESULT_CODE_SUCCESS:
            continue
        used = answer.services[0].granted.total_octets
        end = call(
            system, cc(session, member, TERMINATION, 1, rg=RG_DATA, request_s=None, used_s=used)
        )
        charged += end.cost_micros
    after = balance(system, owner)
    assert after.reserved_micros == 0
    assert after.balance_micros == pooled.balance_micros - charged


def test_event_time_in_the_past_is_rated_at_its_own_time(system: System) -> None:
    sid = subscriber(system)
    past = datetime.now(UTC) - timedelta(days=3)
    answer = call(
        system,
        cc(
            "e-past",
            sid,
            EVENT,
            0,
            rg=RG_SMS,
            request_s=1,
            action=pb.REQUESTED_ACTION_DIRECT_DEBITING,
            at=past,
        ),
    )
    assert answer.result_code == pb.RESULT_CODE_SUCCESS
