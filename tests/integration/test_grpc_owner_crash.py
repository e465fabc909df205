"""An owner process killed in the middle of load over gRPC: the front door retries (same key)
while Ray restarts the owner; every answer that said success is in the journal, no idempotency
key is charged twice, and the journal reproduces every balance. Over both owner transports: the
direct channel (its connection breaks; the front door asks the restarted owner for its new
endpoint) and Ray calls."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import grpc
import psycopg
import pytest

from cluster.pb import billing_pb2 as pb
from cluster.pb import billing_pb2_grpc as pb_grpc

from ._grpc_helpers import RG_SMS, DoorThread, audit, cc, database

pytestmark = pytest.mark.integration

SUBSCRIBERS = [f"49170077{i:04d}" for i in range(12)]
ROUNDS = 10


def _ask(stub: pb_grpc.ChargingStub, msg: pb.CreditControlRequest) -> pb.CreditControlAnswer:
    """Like a charging trigger: an unknown outcome is retried with the same request (same key)."""
    deadline = time.monotonic() + 120
    while True:
        try:
            answer: pb.CreditControlAnswer = stub.CreditControl(msg, timeout=15)
            return answer
        except grpc.RpcError as error:
            if error.code() not in (
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.DEADLINE_EXCEEDED,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
            ):
                raise
            assert time.monotonic() < deadline, f"no answer for {msg.session_id}: {error}"
            msg.retransmission = True
            time.sleep(0.05)


def _drive(address: str, part: list[str], done: list[tuple[str, pb.CreditControlAnswer]]) -> None:
    stub = pb_grpc.ChargingStub(grpc.insecure_channel(address))
    for round_ in range(ROUNDS):
        for sid in part:
            session = f"k{round_}-{sid}"
            start = _ask(stub, cc(session, sid, pb.REQUEST_TYPE_INITIAL, 0, request_s=120))
            done.append((f"cc:{session}#0", start))
            if start.result_code == pb.RESULT_CODE_SUCCESS:
                end = _ask(
                    stub,
                    cc(session, sid, pb.REQUEST_TYPE_TERMINATION, 1, request_s=None, used_s=61),
                )
                done.append((f"cc:{session}#1", end))
            event = cc(
                f"e{round_}-{sid}",
                sid,
                pb.REQUEST_TYPE_EVENT,
                0,
                rg=RG_SMS,
                request_s=1,
                action=pb.REQUESTED_ACTION_DIRECT_DEBITING,
            )
            done.append((f"cc:e{round_}-{sid}#0", _ask(stub, event)))


@pytest.mark.parametrize("transport", ["direct", "ray"])
def test_killed_owner_mid_load_loses_no_acknowledged_answer(
    ray_cluster: Any, pg_server: str, transport: str
) -> None:
    from actors.bootstrap import start_cluster, stop_cluster
    from cluster.owners import DirectOwnerDirectory

    with database(pg_server) as dsn:
        handles = start_cluster(dsn, owners=2, vshard_count=64, ready_timeout_s=120)
        door = DoorThread(transport=transport)
        try:
            address = door.start()
            accounts = pb_grpc.AccountsStub(grpc.insecure_channel(address))
            for sid in SUBSCRIBERS:
                accounts.CreateSubscriber(
                    pb.CreateSubscriberRequest(
                        subscriber_id=sid, plan_id="payg", initial_balance_micros=100_000_000
                    ),
                    timeout=30,
                )
            victim = handles.get_map().owner_of_key(SUBSCRIBERS[0])
            before = {status.name: status for status in handles.statuses()}[victim]
            done: list[tuple[str, pb.CreditControlAnswer]] = []
            drivers = [
                threading.Thread(target=_drive, args=(address, SUBSCRIBERS[i::3], done))
                for i in range(3)
            ]
            for thread in drivers:
                thread.start()
            deadline = time.monotonic() + 60
            while len(done) < 2 * len(SUBSCRIBERS) and time.monotonic() < deadline:
                time.sleep(0.05)
            os.kill(before.pid, signal.SIGKILL)
            for thread in drivers:
                thread.join(timeout=300)
            assert not any(thread.is_alive() for thread in drivers)
            after = {status.name: status for status in handles.statuses()}[victim]
            assert after.pid != before.pid, "the owner was not restarted"
            assert door.door is not None and door.door.dispatcher.stats.unavailable_retries > 0
            owners = door.door.dispatcher.owners
            if transport == "direct":  # the victim's connection broke; a new one was opened
                assert isinstance(owners, DirectOwnerDirectory)
                assert owners.connects()[victim] >= 2, owners.connects()
            else:
                assert not isinstance(owners, DirectOwnerDirectory)
        finally:
            door.stop()
            stop_cluster(handles)

        with psycopg.connect(dsn) as conn:
            rows = conn.execute(
                "SELECT idempotency_key, sum(amount_micros), count(*) FROM journal"
                " WHERE idempotency_key LIKE 'cc:%' GROUP BY idempotency_key"
            ).fetchall()
        journal = {key: (int(total), int(lines)) for key, total, lines in rows}
        seen: dict[str, pb.CreditControlAnswer] = {}
        for key, answer in done:
            assert seen.setdefault(key, answer) == answer
            if answer.result_code == pb.RESULT_CODE_SUCCESS and answer.cost_micros:
                assert key in journal, f"acknowledged {key} is not in the journal"
                assert -journal[key][0] == answer.cost_micros, key
        assert {k for k, (total, _) in journal.items() if total} <= set(seen)
        successes = sum(1 for _, a in done if a.result_code == pb.RESULT_CODE_SUCCESS)
        assert successes == len(done), "every request ends in a durable success"
        assert audit(dsn) == []
