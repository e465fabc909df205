"""Dispatcher.call's deadline (one timer per attempt that fails the request's future).

When the deadline passes before the owner answers: DeadlineExceeded (or NoDurableAnswer naming
the owner's last Unavailable); a request still queued is dropped from its batch, not sent; the
caller's own cancellation stays a cancellation. Outcomes only: no assertion on elapsed time.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from actors.messages import Answered, ChargeRequest, OwnerReply, OwnerRequest, Unavailable
from billing.protocol import CreditControlAnswer, ResultCode
from cluster import convert
from cluster.frontdoor import DeadlineExceeded, Dispatcher, NoDurableAnswer
from cluster.pb import billing_pb2 as pb
from sharding.shardmap import ShardMap, balanced_map


class GatedOwner:
    """One owner (o0) whose batches wait for ``gate``; records what it was sent."""

    def __init__(self) -> None:
        self.map: ShardMap = balanced_map(16, ["o0"])
        self.gate = asyncio.Event()
        self.sent: list[list[str]] = []
        self.reply: OwnerReply | None = None

    async def get_map(self) -> ShardMap:
        return self.map

    async def wait_for_version(self, newer_than: int, timeout_s: float) -> ShardMap:
        await asyncio.sleep(timeout_s)
        return self.map

    def client(self, owner: str) -> Any:
        return self

    async def submit(self, requests: list[OwnerRequest]) -> list[OwnerReply]:
        self.sent.append([r.request.session_id for r in requests])  # type: ignore[attr-defined]
        await self.gate.wait()
        return [self.reply or self._answer(r) for r in requests]

    @staticmethod
    def _answer(request: OwnerRequest) -> OwnerReply:
        assert isinstance(request, ChargeRequest)
        cc = request.request
        return Answered(CreditControlAnswer(cc.session_id, cc.request_number, ResultCode.SUCCESS))


def _charge(session: str) -> ChargeRequest:
    msg = pb.CreditControlRequest(
        session_id=session,
        request_type=pb.REQUEST_TYPE_EVENT,
        subscriber_id="s1",
        requested_action=pb.REQUESTED_ACTION_DIRECT_DEBITING,
    )
    msg.event_time.GetCurrentTime()
    msg.services.add(rating_group=200).requested.service_units = 1
    return ChargeRequest(convert.request_from_proto(msg))


def test_deadline_fails_the_call_and_drops_the_queued_request() -> None:
    async def scenario() -> None:
        owner = GatedOwner()
        dispatcher = Dispatcher(owner, owner)  # type: ignore[arg-type]
        await dispatcher.start()
        first = asyncio.ensure_future(dispatcher.call(_charge("a"), 5.0))
        while not owner.sent:  # "a" is in flight, held at the gate
            await asyncio.sleep(0)
        with pytest.raises(DeadlineExceeded, match="idempotency key"):
            await dispatcher.call(_charge("b"), 0.01)  # queued behind "a" until its deadline
        owner.gate.set()
        reply = await first
        assert isinstance(reply, Answered)
        assert owner.sent == [["a"]]  # "b" was dropped, never sent
        assert dispatcher.queue_depths() == {"o0": 0}
        await dispatcher.close()

    asyncio.run(scenario())


def test_deadline_after_unavailable_names_the_owners_message() -> None:
    async def scenario() -> None:
        owner = GatedOwner()
        owner.gate.set()
        owner.reply = Unavailable("database down")
        dispatcher = Dispatcher(owner, owner)  # type: ignore[arg-type]
        await dispatcher.start()
        with pytest.raises(NoDurableAnswer, match="database down"):
            await dispatcher.call(_charge("a"), 0.05)
        assert len(owner.sent) >= 1 and {tuple(s) for s in owner.sent} == {("a",)}
        await dispatcher.close()

    asyncio.run(scenario())


def test_a_cancelled_caller_is_cancelled_not_timed_out() -> None:
    async def scenario() -> None:
        owner = GatedOwner()
        dispatcher = Dispatcher(owner, owner)  # type: ignore[arg-type]
        await dispatcher.start()
        first = asyncio.ensure_future(dispatcher.call(_charge("a"), 5.0))
        while not owner.sent:
            await asyncio.sleep(0)
        second = asyncio.ensure_future(dispatcher.call(_charge("b"), 5.0))
        await asyncio.sleep(0)
        second.cancel()  # the client went away while "b" was queued
        with pytest.raises(asyncio.CancelledError):
            await second
        owner.gate.set()
        assert isinstance(await first, Answered)
        assert owner.sent == [["a"]]
        await dispatcher.close()

    asyncio.run(scenario())
