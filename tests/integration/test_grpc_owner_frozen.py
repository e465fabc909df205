"""A frozen owner (SIGSTOP) behind a front door: its callers get an answer by their deadline, the
other owner keeps serving, and after SIGCONT the same request (same key) is charged exactly once.

Over both owner transports: with the direct channel the frozen owner's connection stays open
(the kernel still accepts its bytes) and only that owner's batches wait on it; with Ray calls the
call waits in Ray. Either way the front door's own deadline (``request_timeout_s``) ends the
caller's wait, not the owner.
"""

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

SUBSCRIBERS = [f"49170088{i:04d}" for i in range(16)]


def _event(session: str, sid: str, *, retransmission: bool = False) -> pb.CreditControlRequest:
    msg: pb.CreditControlRequest = cc(
        session,
        sid,
        pb.REQUEST_TYPE_EVENT,
        0,
        rg=RG_SMS,
        request_s=1,
        action=pb.REQUESTED_ACTION_DIRECT_DEBITING,
        retransmission=retransmission,
    )
    return msg


@pytest.mark.parametrize("transport", ["direct", "ray"])
def test_frozen_owner_bounds_its_callers_and_blocks_no_other_owner(
    ray_cluster: Any, pg_server: str, transport: str
) -> None:
    from actors.bootstrap import start_cluster, stop_cluster

    with database(pg_server) as dsn:
        handles = start_cluster(dsn, owners=2, vshard_count=64, ready_timeout_s=120)
        door = DoorThread(transport=transport, request_timeout_s=2.0)
        frozen_pid: int | None = None
        try:
            address = door.start()
            channel = grpc.insecure_channel(address)
            accounts = pb_grpc.AccountsStub(channel)
            charging = pb_grpc.ChargingStub(channel)
            for sid in SUBSCRIBERS:
                accounts.CreateSubscriber(
                    pb.CreateSubscriberRequest(
                        subscriber_id=sid, plan_id="payg", initial_balance_micros=10_000_000
                    ),
                    timeout=30,
                )
            shard_map = handles.get_map()
            victim = shard_map.owner_of_key(SUBSCRIBERS[0])
            on_victim = [s for s in SUBSCRIBERS if shard_map.owner_of_key(s) == victim]
            healthy = [s for s in SUBSCRIBERS if shard_map.owner_of_key(s) != victim]
            assert healthy, "every test subscriber landed on one owner"
            for sid in (on_victim[0], healthy[0]):  # both connections are open and used
                answer = charging.CreditControl(_event(f"warm-{sid}", sid), timeout=30)
                assert answer.result_code == pb.RESULT_CODE_SUCCESS

            frozen_pid = {s.name: s for s in handles.statuses()}[victim].pid
            os.kill(frozen_pid, signal.SIGSTOP)
            stuck: list[grpc.RpcError | pb.CreditControlAnswer] = []

            def ask_frozen() -> None:
                try:  # no client deadline: the door's request_timeout_s must end the call
                    stuck.append(charging.CreditControl(_event("fz", on_victim[0])))
                except grpc.RpcError as error:
                    stuck.append(error)

            asker = threading.Thread(target=ask_frozen, daemon=True)
            asker.start()
            for i, sid in enumerate(healthy * 2):  # the other owner serves meanwhile
                answer = charging.CreditControl(_event(f"ok-{i}-{sid}", sid), timeout=30)
                assert answer.result_code == pb.RESULT_CODE_SUCCESS
            asker.join(timeout=30)
            assert not asker.is_alive(), "a call to the frozen owner outlived the door's deadline"
            assert isinstance(stuck[0], grpc.RpcError), stuck[0]
            assert stuck[0].code() in (
                grpc.StatusCode.DEADLINE_EXCEEDED,
                grpc.StatusCode.UNAVAILABLE,
            ), stuck[0]
            answer = charging.CreditControl(_event("ok-after", healthy[0]), timeout=30)
            assert answer.result_code == pb.RESULT_CODE_SUCCESS

            os.kill(frozen_pid, signal.SIGCONT)
            frozen_pid = None
            deadline = time.monotonic() + 60
            while True:  # the client retries the unknown outcome with the same key
                try:
                    thawed = charging.CreditControl(
                        _event("fz", on_victim[0], retransmission=True), timeout=10
                    )
                    break
                except grpc.RpcError as error:
                    assert error.code() in (
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                        grpc.StatusCode.UNAVAILABLE,
                    ), error
                    assert time.monotonic() < deadline, f"the thawed owner never answered: {error}"
                    time.sleep(0.1)
            assert thawed.result_code == pb.RESULT_CODE_SUCCESS
            channel.close()
        finally:
            if frozen_pid is not None:
                os.kill(frozen_pid, signal.SIGCONT)
            door.stop()
            stop_cluster(handles)

        with psycopg.connect(dsn) as conn:
            rows = conn.execute(
                "SELECT sum(amount_micros), count(*) FROM journal WHERE idempotency_key = %s",
                ("cc:fz#0",),
            ).fetchall()
        assert rows == [(-thawed.cost_micros, 1)], rows  # charged once, at the answered cost
        assert audit(dsn) == []
