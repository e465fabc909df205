"""How the front door registers its services with grpc.aio: generic handlers only.

grpc.aio waits, for every incoming call, on one pending request per registered method; the front
door therefore registers no method and is found through generic handlers (cluster/frontdoor.py,
``_GenericOnly``). Checked here: the adapter forwards generic handlers and drops registrations, a
started front door registers no method, and every service (Charging, Accounts, Tariffs, health,
reflection) still answers through the generic handlers.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import grpc
import grpc.aio._server
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from actors.messages import Answered, ChargeRequest, OwnerReply, OwnerRequest
from billing.protocol import CreditControlAnswer, ResultCode
from cluster.frontdoor import Dispatcher, FrontDoor, PlanInfo, _GenericOnly
from cluster.pb import billing_pb2 as pb
from cluster.pb import billing_pb2_grpc as pb_grpc
from sharding.shardmap import ShardMap, balanced_map


class Owners:
    """The map source, the owner directory and every owner: charges are answered SUCCESS."""

    def __init__(self) -> None:
        self.map: ShardMap = balanced_map(16, ["o0"])

    async def get_map(self) -> ShardMap:
        return self.map

    async def wait_for_version(self, newer_than: int, timeout_s: float) -> ShardMap:
        await asyncio.sleep(timeout_s)
        return self.map

    def client(self, owner: str) -> Any:
        return self

    async def submit(self, requests: list[OwnerRequest]) -> list[OwnerReply]:
        replies: list[OwnerReply] = []
        for request in requests:
            assert isinstance(request, ChargeRequest)
            cc = request.request
            replies.append(
                Answered(CreditControlAnswer(cc.session_id, cc.request_number, ResultCode.SUCCESS))
            )
        return replies


class Plans:
    async def list_plans(self) -> list[PlanInfo]:
        return []

    async def get_plan(self, plan_id: str) -> PlanInfo:
        raise NotImplementedError

    async def load_plan(self, text: str) -> PlanInfo:
        raise NotImplementedError


class RecordingServer:
    def __init__(self) -> None:
        self.generic: list[Any] = []
        self.registered: list[str] = []

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self.generic.extend(handlers)

    def add_registered_method_handlers(self, service_name: str, handlers: Any) -> None:
        self.registered.append(service_name)


def test_the_adapter_keeps_generic_handlers_and_drops_registrations() -> None:
    server = RecordingServer()
    adapter: Any = _GenericOnly(server)
    pb_grpc.add_ChargingServicer_to_server(pb_grpc.ChargingServicer(), adapter)  # type: ignore[abstract]
    assert len(server.generic) == 1
    assert server.registered == []


def test_a_started_front_door_registers_no_method_and_every_service_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registered: list[str] = []

    def record(self: Any, service_name: str, handlers: Any) -> None:
        registered.append(service_name)

    monkeypatch.setattr(grpc.aio._server.Server, "add_registered_method_handlers", record)

    async def scenario() -> None:
        owners = Owners()
        door = FrontDoor(Dispatcher(owners, owners), Plans())
        await door.start()
        try:
            assert registered == []
            async with grpc.aio.insecure_channel(door.address) as channel:
                msg = pb.CreditControlRequest(
                    session_id="s",
                    request_type=pb.REQUEST_TYPE_INITIAL,
                    subscriber_id="sub-1",
                )
                msg.event_time.FromDatetime(datetime(2026, 1, 1, tzinfo=UTC))
                msg.services.add(rating_group=100).requested.time_s = 60
                answer = await pb_grpc.ChargingStub(channel).CreditControl(msg, timeout=5)
                assert answer.result_code == pb.RESULT_CODE_SUCCESS
                with pytest.raises(grpc.aio.AioRpcError) as bad:  # AccountsService validates
                    await pb_grpc.AccountsStub(channel).GetBalance(
                        pb.GetBalanceRequest(subscriber_id=""), timeout=5
                    )
                assert bad.value.code() is grpc.StatusCode.INVALID_ARGUMENT
                plans = await pb_grpc.TariffsStub(channel).ListPlans(
                    pb.ListPlansRequest(), timeout=5
                )
                assert list(plans.plans) == []
                check = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service="billing.v1.Charging"), timeout=5
                )
                assert check.status == health_pb2.HealthCheckResponse.SERVING
                call = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
                    iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
                )
                names = {
                    service.name
                    async for response in call
                    for service in response.list_services_response.service
                }
                assert {"billing.v1.Charging", "billing.v1.Accounts"} <= names
        finally:
            await door.stop(0)

    asyncio.run(scenario())
