"""The front door over real gRPC on localhost, against in-process fake owners.

The fakes implement the owner's submit() contract (actors/messages.py) with scripted replies,
so routing, micro-batching, retries (NotOwner, Unavailable), bounds and deadlines are tested
without Ray or PostgreSQL. The real owners are exercised in tests/integration/test_grpc_*.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from actors.messages import (
    Answered,
    ChargeRequest,
    NotOwner,
    OwnerReply,
    OwnerRequest,
    Rejected,
    Unavailable,
)
from billing.protocol import CreditControlAnswer, ResultCode, ServiceGrant
from cluster.batching import OwnerBatcher
from cluster.frontdoor import Dispatcher, FrontDoor, PlanInfo
from cluster.pb import billing_pb2 as pb
from cluster.pb import billing_pb2_grpc as pb_grpc
from sharding.shardmap import ShardMap, balanced_map

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

Script = Callable[[str, OwnerRequest], OwnerReply | None]


class FakeOwners:
    """Owners named o0, o1 that answer SUCCESS with granted = requested, unless scripted."""

    def __init__(self, shard_map: ShardMap) -> None:
        self.map = shard_map
        self.batches: list[tuple[str, list[OwnerRequest]]] = []
        self.script: Script = lambda owner, request: None
        self.gate: asyncio.Event | None = None
        self.newer: asyncio.Event = asyncio.Event()

    async def get_map(self) -> ShardMap:
        return self.map

    async def wait_for_version(self, newer_than: int, timeout_s: float) -> ShardMap:
        if self.map.version > newer_than:
            return self.map
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.newer.wait(), timeout_s)
        return self.map

    def publish(self, shard_map: ShardMap) -> None:
        self.map = shard_map
        self.newer.set()
        self.newer = asyncio.Event()

    def client(self, owner: str) -> FakeClient:
        return FakeClient(self, owner)

    def answer(self, owner: str, request: OwnerRequest) -> OwnerReply:
        scripted = self.script(owner, request)
        if scripted is not None:
            return scripted
        if self.map.owner_of_key(request.routing_key) != owner:
            return NotOwner(vshard=0, map_version=self.map.version)
        assert isinstance(request, ChargeRequest)
        cc = request.request
        if cc.subscriber_id == "unknown":
            return Rejected("not_found", "subscriber_id", f"no subscriber {cc.subscriber_id!r}")
        grants = tuple(
            ServiceGrant(
                rating_group=s.rating_group,
                service_identifier=s.service_identifier,
                result_code=ResultCode.SUCCESS,
                granted=s.requested,
                validity_time_s=60,
            )
            for s in cc.services
        )
        return Answered(
            CreditControlAnswer(
                session_id=cc.session_id,
                request_number=cc.request_number,
                result_code=ResultCode.SUCCESS,
                services=grants,
            )
        )


class FakeClient:
    def __init__(self, owners: FakeOwners, name: str) -> None:
        self.owners = owners
        self.name = name

    async def submit(self, requests: list[OwnerRequest]) -> list[OwnerReply]:
        self.owners.batches.append((self.name, list(requests)))
        if self.owners.gate is not None:
            await self.owners.gate.wait()
        await asyncio.sleep(0)
        return [self.owners.answer(self.name, r) for r in requests]


class FakePlans:
    async def list_plans(self) -> list[PlanInfo]:
        return []

    async def get_plan(self, plan_id: str) -> PlanInfo:
        raise NotImplementedError

    async def load_plan(self, text: str) -> PlanInfo:
        raise NotImplementedError


def _request(
    subscriber: str = "s1", session: str = "sess-1", number: int = 0
) -> pb.CreditControlRequest:
    msg = pb.CreditControlRequest(
        session_id=session,
        request_type=pb.REQUEST_TYPE_INITIAL if number == 0 else pb.REQUEST_TYPE_UPDATE,
        request_number=number,
        subscriber_id=subscriber,
    )
    msg.event_time.FromDatetime(T0)
    entry = msg.services.add(rating_group=100)
    entry.requested.time_s = 60
    return msg


async def _serve(
    owners: FakeOwners, **options: float | int
) -> AsyncIterator[tuple[FrontDoor, grpc.aio.Channel]]:
    door = FrontDoor(Dispatcher(owners, owners, **options), FakePlans())  # type: ignore[arg-type]
    await door.start()
    channel = grpc.aio.insecure_channel(door.address)
    try:
        yield door, channel
    finally:
        await channel.close()
        await door.stop(0)


def run(coro: Callable[[], object]) -> None:
    asyncio.run(coro())  # type: ignore[arg-type]


def test_unary_answer_and_invalid_argument_names_the_field() -> None:
    async def scenario() -> None:
        owners = FakeOwners(balanced_map(64, ["o0", "o1"]))
        async for _door, channel in _serve(owners):
            stub = pb_grpc.ChargingStub(channel)
            answer = await stub.CreditControl(_request(), timeout=5)
            assert answer.result_code == pb.RESULT_CODE_SUCCESS
            assert answer.services[0].granted.time_s == 60
            bad = _request()
            bad.services[0].requested.time_s = -1
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.CreditControl(bad, timeout=5)
            assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert caught.value.details() == "services[0].requested.time_s: must be >= 0"
            unknown = await stub.CreditControl(_request("unknown"), timeout=5)
            assert unknown.result_code == pb.RESULT_CODE_USER_UNKNOWN
            assert "subscriber_id" in unknown.error_message

    run(scenario)


def test_not_owner_refreshes_the_map_and_retries_the_same_request() -> None:
    async def scenario() -> None:
        first = balanced_map(64, ["o0", "o1"])
        owners = FakeOwners(first)
        async for door, channel in _serve(owners):
            # Move every vshard to o1 behind the front door's back: o0 answers NotOwner.
            moved = ShardMap.from_dict(2, 64, dict.fromkeys(range(64), "o1"))
            owners.map = moved
            stub = pb_grpc.ChargingStub(channel)
            subscriber = next(f"s{i}" for i in range(100) if first.owner_of_key(f"s{i}") == "o0")
            answer = await stub.CreditControl(_request(subscriber), timeout=5)
            assert answer.result_code == pb.RESULT_CODE_SUCCESS
            sent = [(o, r) for o, batch in owners.batches for r in batch]
            assert [o for o, _ in sent] == ["o0", "o1"]
            assert sent[0][1] is sent[1][1]  # the same request object: same idempotency key
            assert door.dispatcher.shard_map.version == 2

    run(scenario)


def test_unavailable_is_retried_within_the_deadline_then_unavailable() -> None:
    async def scenario() -> None:
        owners = FakeOwners(balanced_map(64, ["o0", "o1"]))
        failures = {"left": 2}

        def flaky(owner: str, request: OwnerRequest) -> OwnerReply | None:
            if failures["left"] > 0:
                failures["left"] -= 1
                return Unavailable("commit failed")
            return None

        owners.script = flaky
        async for _door, channel in _serve(owners):
            stub = pb_grpc.ChargingStub(channel)
            answer = await stub.CreditControl(_request(), timeout=5)
            assert answer.result_code == pb.RESULT_CODE_SUCCESS
            assert len(owners.batches) == 3
            owners.script = lambda owner, request: Unavailable("database down")
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.CreditControl(_request(), timeout=0.3)
            assert caught.value.code() in (
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.DEADLINE_EXCEEDED,
            )

    run(scenario)


def test_server_side_timeout_gives_unavailable_with_the_owners_message() -> None:
    async def scenario() -> None:
        owners = FakeOwners(balanced_map(64, ["o0", "o1"]))
        owners.script = lambda owner, request: Unavailable("database down")
        async for _door, channel in _serve(owners, request_timeout_s=0.2):
            stub = pb_grpc.ChargingStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.CreditControl(_request())
            assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
            assert "database down" in (caught.value.details() or "")

    run(scenario)


def test_full_queue_is_resource_exhausted_and_batches_form_while_one_is_in_flight() -> None:
    async def scenario() -> None:
        owners = FakeOwners(balanced_map(64, ["o0"]))
        owners.gate = asyncio.Event()
        async for _door, channel in _serve(owners, queue_max=3):
            stub = pb_grpc.ChargingStub(channel)
            calls = [
                asyncio.ensure_future(stub.CreditControl(_request(session=f"q{i}"), timeout=5))
                for i in range(4)
            ]
            # One request is in flight (batch 1, held at the gate); three wait in the queue.
            while _door.dispatcher.queue_depths().get("o0", 0) < 3:
                await asyncio.sleep(0.01)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.CreditControl(_request(session="overflow"), timeout=5)
            assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            owners.gate.set()
            answers = await asyncio.gather(*calls)
            assert {a.result_code for a in answers} == {pb.RESULT_CODE_SUCCESS}, [
                a.error_message for a in answers if a.error_message
            ]
            assert [len(batch) for _, batch in owners.batches] == [1, 3]

    run(scenario)


def test_batcher_drops_requests_whose_caller_gave_up() -> None:
    async def scenario() -> None:
        owners = FakeOwners(balanced_map(4, ["o0"]))
        owners.gate = asyncio.Event()
        batcher = OwnerBatcher("o0", owners.client("o0"), queue_max=10)
        first = batcher.submit(ChargeRequest(_domain("a")))
        await asyncio.sleep(0.01)
        second = batcher.submit(ChargeRequest(_domain("b")))
        third = batcher.submit(ChargeRequest(_domain("c")))
        second.cancel()
        owners.gate.set()
        await first
        await third
        assert [len(b) for _, b in owners.batches] == [1, 1]

    run(scenario)


def _domain(session: str):  # type: ignore[no-untyped-def]
    from cluster import convert

    return convert.request_from_proto(_request(session=session))


def test_stream_answers_every_request_and_invalid_ones_by_result_code() -> None:
    async def scenario() -> None:
        owners = FakeOwners(balanced_map(64, ["o0", "o1"]))
        async for _door, channel in _serve(owners):
            stub = pb_grpc.ChargingStub(channel)
            bad = _request(session="bad")
            bad.ClearField("event_time")
            messages = [_request(f"s{i}", f"st{i}") for i in range(50)] + [bad]
            call = stub.CreditControlStream(iter(messages), timeout=10)
            answers = [answer async for answer in call]
            assert len(answers) == 51
            by_session = {a.session_id: a for a in answers}
            assert by_session["bad"].result_code == pb.RESULT_CODE_MISSING_AVP
            assert by_session["bad"].error_message == "event_time: required"
            assert all(
                by_session[f"st{i}"].result_code == pb.RESULT_CODE_SUCCESS for i in range(50)
            )
            batch_call = stub.CreditControlBatchStream(
                iter([pb.CreditControlRequestBatch(requests=messages[:10])]), timeout=10
            )
            batches = [b async for b in batch_call]
            assert [a.session_id for a in batches[0].answers] == [f"st{i}" for i in range(10)]

    run(scenario)


def test_batch_stream_answers_in_order_through_retries_and_bad_requests() -> None:
    async def scenario() -> None:
        owners = FakeOwners(balanced_map(64, ["o0", "o1"]))
        flaky = {"left": 3}

        def script(owner: str, request: OwnerRequest) -> OwnerReply | None:
            if flaky["left"] > 0 and owner == "o1":
                flaky["left"] -= 1
                return Unavailable("commit failed")
            return None

        owners.script = script
        async for door, channel in _serve(owners):
            # Half the map moves to o1 behind the front door's back: those get NotOwner first.
            moved = ShardMap.from_dict(2, 64, {v: "o1" if v < 32 else "o0" for v in range(64)})
            owners.map = moved
            stub = pb_grpc.ChargingStub(channel)
            messages = [_request(f"s{i}", f"b{i}") for i in range(60)]
            messages[7].ClearField("session_id")
            call = stub.CreditControlBatchStream(
                iter([pb.CreditControlRequestBatch(requests=messages)]), timeout=10
            )
            [batch] = [b async for b in call]
            assert [a.session_id for a in batch.answers] == [m.session_id for m in messages]
            codes = [a.result_code for a in batch.answers]
            assert codes[7] == pb.RESULT_CODE_MISSING_AVP
            assert all(c == pb.RESULT_CODE_SUCCESS for i, c in enumerate(codes) if i != 7)
            assert door.dispatcher.stats.not_owner_retries > 0
            assert door.dispatcher.stats.unavailable_retries > 0

    run(scenario)


def test_stream_retries_not_owner_and_unavailable_and_bounds_by_the_deadline() -> None:
    async def scenario() -> None:
        owners = FakeOwners(balanced_map(64, ["o0", "o1"]))
        flaky = {"left": 2}

        def script(owner: str, request: OwnerRequest) -> OwnerReply | None:
            if flaky["left"] > 0 and owner == "o0":
                flaky["left"] -= 1
                return Unavailable("commit failed")
            return None

        owners.script = script
        async for door, channel in _serve(owners, request_timeout_s=0.5):
            owners.map = ShardMap.from_dict(2, 64, {v: "o0" if v < 32 else "o1" for v in range(64)})
            stub = pb_grpc.ChargingStub(channel)
            messages = [_request(f"s{i}", f"r{i}") for i in range(40)]
            answers = [a async for a in stub.CreditControlStream(iter(messages), timeout=10)]
            assert sorted(a.session_id for a in answers) == sorted(m.session_id for m in messages)
            assert {a.result_code for a in answers} == {pb.RESULT_CODE_SUCCESS}, [
                a.error_message for a in answers if a.error_message
            ]
            assert door.dispatcher.stats.not_owner_retries > 0
            assert door.dispatcher.stats.unavailable_retries > 0
            # An owner that never answers: every request is answered at its deadline, the
            # stream ends.
            owners.gate = asyncio.Event()
            late = [a async for a in stub.CreditControlStream(iter(messages[:5]), timeout=10)]
            assert len(late) == 5
            assert {a.result_code for a in late} == {pb.RESULT_CODE_UNABLE_TO_COMPLY}
            owners.gate.set()

    run(scenario)


def test_health_and_reflection_are_served() -> None:
    async def scenario() -> None:
        owners = FakeOwners(balanced_map(64, ["o0"]))
        async for _door, channel in _serve(owners):
            check = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="billing.v1.Charging"), timeout=5
            )
            assert check.status == health_pb2.HealthCheckResponse.SERVING
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            call = stub.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
            )
            names = set()
            async for response in call:
                names |= {s.name for s in response.list_services_response.service}
            assert {"billing.v1.Charging", "billing.v1.Accounts", "billing.v1.Tariffs"} <= names

    run(scenario)


def test_client_deadline_ends_the_call_quietly(caplog: pytest.LogCaptureFixture) -> None:
    """A client whose deadline passes while its owner is busy gets DEADLINE_EXCEEDED, and the
    front door logs no error for the call it can no longer answer."""

    async def scenario() -> None:
        owners = FakeOwners(balanced_map(64, ["o0", "o1"]))
        owners.gate = asyncio.Event()  # the owner never answers in time
        async for _door, channel in _serve(owners):
            stub = pb_grpc.ChargingStub(channel)
            for timeout in (0.3, 0.1, 0.05, 0.02, 0.01):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.CreditControl(_request(), timeout=timeout)
                assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            await asyncio.sleep(0.5)  # let the server side of each call finish
            owners.gate.set()

    with caplog.at_level("WARNING"):
        run(scenario)
    errors = [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
    assert errors == [], [r.getMessage()[:200] for r in errors]
