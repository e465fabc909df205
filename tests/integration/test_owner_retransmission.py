"""Retransmissions whose answers the owner no longer remembers (pruned from memory past the
answer retention, or not reloaded): the original answer from PostgreSQL, no second movement of
money, and no poisoning of the batch they arrive in (the innocent requests commit)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from actors.bootstrap import ClusterHandles
from actors.messages import (
    FAILED_PRECONDITION,
    Answered,
    BalanceRequest,
    ChargeRequest,
    OwnerReply,
    OwnerRequest,
    QueryRequest,
    Rejected,
)
from billing.protocol import (
    BalanceCommand,
    CreditControlRequest,
    RequestedAction,
    RequestType,
    ResultCode,
    ServiceUsage,
    Units,
)

from ._owner_helpers import answered, provision, running_cluster, submit, voice

pytestmark = pytest.mark.integration

RG_SMS = 200
CONFIG: dict[str, Any] = {
    "owners": 1,
    "vshard_count": 8,
    "answer_retention_s": 1.0,
    "sweep_interval_s": 0.1,
}


def sms(session: str, subscriber: str, *, retransmission: bool = False) -> ChargeRequest:
    """A one-SMS DIRECT_DEBITING event (request number 0)."""
    return ChargeRequest(
        CreditControlRequest(
            session_id=session,
            request_type=RequestType.EVENT,
            request_number=0,
            subscriber_id=subscriber,
            event_time=datetime.now(UTC),
            services=(ServiceUsage(rating_group=RG_SMS, requested=Units(service_units=1)),),
            requested_action=RequestedAction.DIRECT_DEBITING,
            destination="4930123456",
            retransmission=retransmission,
        )
    )


def topup(subscriber: str, key: str, amount: int = 5_000_000) -> BalanceRequest:
    return BalanceRequest(BalanceCommand("topup", subscriber, amount, key))


def once(handles: ClusterHandles, requests: list[OwnerRequest]) -> list[OwnerReply]:
    """ONE submit call (one batch of the only owner), no retries: poisoning would show here."""
    import ray

    [name] = handles.get_map().owners
    replies: list[OwnerReply] = ray.get(
        handles.owner(name).submit.options(max_task_retries=0).remote(requests), timeout=60
    )
    return replies


def balance(handles: ClusterHandles, subscriber: str) -> int:
    view = answered(submit(handles, [QueryRequest("balance", subscriber)])[0])
    return int(view.balance_micros)


def wait_pruned(handles: ClusterHandles) -> None:
    """Until the owner forgot every answer (no session is open: all are prunable)."""
    deadline = time.monotonic() + 60
    while handles.statuses()[0].answers:
        assert time.monotonic() < deadline, "answers never pruned"
        time.sleep(0.2)
    time.sleep(0.3)  # the balance results were logged before the last answer: pruned with it


def journal_lines(dsn: str, key: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM journal WHERE idempotency_key = %s", (key,)
        ).fetchone()
        assert row is not None
        return int(row[0])


def test_retransmissions_after_pruning_get_original_answers_in_a_healthy_batch(
    ray_cluster: Any, pg_dsn: str
) -> None:
    a, b = "4917100001", "4917100002"
    with running_cluster(pg_dsn, **CONFIG) as handles:
        answered(provision(handles, a, balance=10_000_000))
        answered(provision(handles, b, balance=10_000_000))
        [credit] = submit(handles, [topup(a, "top-1")])
        [debit] = submit(handles, [sms("e-1", a)])
        [start] = submit(handles, [voice("s1", a, 0, RequestType.INITIAL)])
        end_request = voice("s1", a, 1, RequestType.TERMINATION, request_s=None, used_s=30)
        [end] = submit(handles, [end_request])
        for reply in (credit, debit, start, end):
            assert isinstance(reply, Answered), reply
        assert debit.payload.result_code == ResultCode.SUCCESS and debit.payload.cost_micros > 0
        lines = {k: journal_lines(pg_dsn, k) for k in ("top-1", "cc:e-1#0", "cc:s1#0", "cc:s1#1")}
        assert lines["top-1"] == 1 and lines["cc:e-1#0"] >= 1
        wait_pruned(handles)
        before = balance(handles, a)

        replies = once(
            handles,
            [
                sms("e-1", a),  # no retransmission flag: found by the commit's refusal
                topup(a, "top-1"),
                voice("s1", a, 0, RequestType.INITIAL),  # the session has ended meanwhile
                end_request,  # an ended session's TERMINATION: looked up before applying
                sms("e-2", b),  # innocent requests in the same batch
                voice("s2", b, 0, RequestType.INITIAL),
            ],
        )
        assert replies[:4] == [debit, credit, start, end]
        fresh_debit, fresh_start = (answered(r) for r in replies[4:])
        assert fresh_debit.result_code == ResultCode.SUCCESS
        assert fresh_start.result_code == ResultCode.SUCCESS
        assert balance(handles, a) == before  # nothing moved a second time
        assert {k: journal_lines(pg_dsn, k) for k in lines} == lines
        assert journal_lines(pg_dsn, "cc:e-2#0") >= 1
        # Remembered again: the next retransmission is answered from memory.
        assert once(handles, [sms("e-1", a, retransmission=True), topup(a, "top-1")]) == [
            debit,
            credit,
        ]
        assert balance(handles, a) == before


def test_duplicate_whose_answer_is_gone_is_refused_not_applied_and_poisons_nothing(
    ray_cluster: Any, pg_dsn: str
) -> None:
    a = "4917100003"
    with running_cluster(pg_dsn, **CONFIG) as handles:
        answered(provision(handles, a, balance=10_000_000))
        answered(submit(handles, [topup(a, "top-9")])[0])
        answered(submit(handles, [sms("e-9", a)])[0])
        wait_pruned(handles)
        with psycopg.connect(pg_dsn, autocommit=True) as conn:  # pruned from the database too
            conn.execute("DELETE FROM answers WHERE idempotency_key IN ('top-9', 'cc:e-9#0')")
        lines = {k: journal_lines(pg_dsn, k) for k in ("top-9", "cc:e-9#0")}
        before = balance(handles, a)

        for attempt in range(2):  # the second time straight from the owner's memory
            replies = once(handles, [sms("e-9", a), topup(a, "top-9"), sms(f"e-10-{attempt}", a)])
            for reply, key in zip(replies[:2], ("cc:e-9#0", "top-9"), strict=True):
                assert isinstance(reply, Rejected), reply
                assert reply.code == FAILED_PRECONDITION
                assert reply.field == "idempotency_key"
                assert key in reply.message and "no longer retained" in reply.message
            fresh = answered(replies[2])
            assert fresh.result_code == ResultCode.SUCCESS
            assert balance(handles, a) == before - fresh.cost_micros
            before -= fresh.cost_micros
        assert {k: journal_lines(pg_dsn, k) for k in lines} == lines


def test_retransmission_after_a_reload_that_did_not_bring_its_answer_back(
    ray_cluster: Any, pg_dsn: str
) -> None:
    a = "4917100004"
    with running_cluster(pg_dsn, **CONFIG) as handles:
        answered(provision(handles, a, balance=10_000_000))
        [credit] = submit(handles, [topup(a, "top-5")])
        [debit] = submit(handles, [sms("e-5", a)])
    time.sleep(1.5)  # past the load horizon (answer_retention_s): a new owner loads no answers
    with running_cluster(pg_dsn, **CONFIG) as handles:
        assert handles.statuses()[0].answers == 0
        before = balance(handles, a)
        replies = once(handles, [sms("e-5", a, retransmission=True), topup(a, "top-5")])
        assert replies == [debit, credit]
        assert balance(handles, a) == before
    assert journal_lines(pg_dsn, "top-5") == 1
