"""The chaos harness's client: continuous charging sessions over gRPC, and a record of every answer.

Each worker runs credit-control sessions one after another (INITIAL asking for the default quota,
a few UPDATEs reporting part of what was granted, a TERMINATION), on subscribers drawn from a
fixed set. Every request is retried with the *same* session id and request number until it gets
an answer or its budget runs out -- across front doors when one dies -- because the idempotency
key makes a retry harmless (DESIGN.md invariant 3). The client never reports more than it was
granted, so every balance stays within what its reservations covered.

What it records, for the audit (:mod:`failover.audit`) and the report tables:

- :attr:`LoadClient.answers`: one :class:`~failover.audit.ClientAnswer` per answer received,
  retransmissions and duplicates included;
- :attr:`LoadClient.outcomes`: a count per outcome (result code name or gRPC status) of every
  attempt, and of requests given up;
- :attr:`LoadClient.timeline`: (time, succeeded) per finished request, for throughput per phase.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import grpc

from cluster.pb import billing_pb2 as pb
from cluster.pb import billing_pb2_grpc as pb_grpc
from failover.audit import ClientAnswer

SUCCESS = pb.RESULT_CODE_SUCCESS
# gRPC statuses after which the same request is sent again (the outcome is unknown or nothing
# was done); anything else is final for that request.
_RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
}
_GIVE_UP = "GAVE_UP"
_GROUPS = (100, 10)  # payg voice (time_s) and data (total_octets)


def result_name(code: int) -> str:
    """``RESULT_CODE_SUCCESS`` -> ``SUCCESS (2001)``."""
    try:
        name = pb.ResultCode.Name(code).removeprefix("RESULT_CODE_")  # type: ignore[arg-type]
    except ValueError:
        name = "UNKNOWN"
    return f"{name} ({code})"


@dataclass(slots=True)
class Sent:
    """A request that got an answer: kept (a bounded number) for DUPLICATE_REQUESTS."""

    request: pb.CreditControlRequest
    answer: pb.CreditControlAnswer


@dataclass
class LoadClient:
    """Drives sessions through ``addresses`` (front doors) and records what came back."""

    addresses: Sequence[str]
    subscribers: Sequence[str]
    run_id: str
    updates_per_session: int = 2
    attempt_timeout_s: float = 3.0
    request_budget_s: float = 30.0
    seed: int = 0
    answers: list[ClientAnswer] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    timeline: list[tuple[float, bool]] = field(default_factory=list)
    errors: list[tuple[float, str]] = field(default_factory=list)  # (monotonic, gRPC status)
    sent: deque[Sent] = field(default_factory=lambda: deque(maxlen=500))
    _channels: list[grpc.aio.Channel] = field(default_factory=list)
    _stubs: list[pb_grpc.ChargingStub] = field(default_factory=list)
    _preferred: int = 0
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _sessions: int = 0

    async def open(self) -> None:
        for address in self.addresses:
            channel = grpc.aio.insecure_channel(
                address,
                options=[("grpc.enable_retries", 0), ("grpc.max_reconnect_backoff_ms", 500)],
            )
            self._channels.append(channel)
            self._stubs.append(pb_grpc.ChargingStub(channel))

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()

    def stop(self) -> None:
        self._stop.set()

    # -- one request, retried until answered -------------------------------------------------

    async def send(self, request: pb.CreditControlRequest) -> pb.CreditControlAnswer | None:
        """Send until answered (any result code) or the budget is spent; None = gave up."""
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + self.request_budget_s
        attempt = 0
        while True:
            index = self._preferred % len(self._stubs)
            try:
                answer: pb.CreditControlAnswer = await self._stubs[index].CreditControl(
                    request, timeout=self.attempt_timeout_s
                )
            except grpc.aio.AioRpcError as error:
                code = error.code()
                self.outcomes[f"grpc {code.name}"] += 1
                self.errors.append((time.monotonic(), code.name))
                if code not in _RETRYABLE or loop.time() >= give_up_at or self._stop.is_set():
                    self.outcomes[_GIVE_UP] += 1
                    self.timeline.append((time.monotonic(), False))
                    return None
                if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
                    self._preferred = index + 1  # that front door may be gone: try the next
                attempt += 1
                await asyncio.sleep(min(0.05 * attempt, 0.5))
                if not request.retransmission:
                    retry = pb.CreditControlRequest()
                    retry.CopyFrom(request)
                    retry.retransmission = True
                    request = retry
                continue
            self.outcomes[result_name(answer.result_code)] += 1
            self.answers.append(
                ClientAnswer(
                    session_id=answer.session_id or request.session_id,
                    request_number=request.request_number,
                    result_code=int(answer.result_code),
                    cost_micros=answer.cost_micros,
                    subscriber_id=request.subscriber_id,
                    idempotency_key=f"cc:{request.session_id}#{request.request_number}",
                    uncharged_micros=sum(s.uncharged_micros for s in answer.services),
                )
            )
            self.timeline.append((time.monotonic(), answer.result_code == SUCCESS))
            self.sent.append(Sent(request, answer))
            return answer

    # -- sessions ----------------------------------------------------------------------------

    def _request(
        self,
        session_id: str,
        subscriber_id: str,
        kind: int,
        number: int,
        *,
        ask: bool,
        used: Sequence[pb.ServiceGrant] = (),
        rating_group: int = 100,
    ) -> pb.CreditControlRequest:
        request = pb.CreditControlRequest(
            session_id=session_id,
            request_type=kind,  # type: ignore[arg-type]
            request_number=number,
            subscriber_id=subscriber_id,
        )
        request.event_time.FromDatetime(datetime.now(UTC))
        if not used:
            entry = request.services.add()
            entry.rating_group = rating_group
            entry.requested.SetInParent()
            return request
        for grant in used:
            entry = request.services.add()
            if grant.HasField("rating_group"):
                entry.rating_group = grant.rating_group
            if grant.HasField("service_identifier"):
                entry.service_identifier = grant.service_identifier
            if ask:
                entry.requested.SetInParent()
            report = entry.used.add()
            report.units.CopyFrom(_half(grant.granted))
            report.reporting_reason = (
                pb.REPORTING_REASON_QUOTA_EXHAUSTED if ask else pb.REPORTING_REASON_FINAL
            )
        return request

    async def session(
        self, subscriber_id: str, *, reorder: int = 0, rating_group: int = 100
    ) -> None:
        """One session; with ``reorder`` > 1, that many UPDATEs are sent in reverse order."""
        self._sessions += 1
        session_id = f"{self.run_id}-{self._sessions}-{subscriber_id}"
        answer = await self.send(
            self._request(
                session_id,
                subscriber_id,
                pb.REQUEST_TYPE_INITIAL,
                0,
                ask=True,
                rating_group=rating_group,
            )
        )
        if answer is None or answer.result_code != SUCCESS:
            return
        grants = [g for g in answer.services if g.result_code in (SUCCESS, 0)]
        number = 0
        updates = max(reorder, self.updates_per_session)
        if reorder > 1 and grants:
            # Pipelined updates arriving out of order: each reports a share of the first grant,
            # so together they never exceed it; each must be answered and charged once.
            shares = [_scale(g, 1, 2 * reorder) for g in grants]
            requests = [
                self._request(
                    session_id, subscriber_id, pb.REQUEST_TYPE_UPDATE, n, ask=False, used=shares
                )
                for n in range(1, reorder + 1)
            ]
            for request in reversed(requests):
                if await self.send(request) is None:
                    return
            number = reorder
        else:
            for number in range(1, updates + 1):
                if self._stop.is_set() or not grants:
                    break
                answer = await self.send(
                    self._request(
                        session_id,
                        subscriber_id,
                        pb.REQUEST_TYPE_UPDATE,
                        number,
                        ask=True,
                        used=grants,
                    )
                )
                if answer is None:
                    return
                grants = [g for g in answer.services if g.result_code in (SUCCESS, 0)]
                if answer.result_code != SUCCESS:
                    break
        await self.send(
            self._request(
                session_id,
                subscriber_id,
                pb.REQUEST_TYPE_TERMINATION,
                number + 1,
                ask=False,
                used=grants,
            )
        )

    async def worker(self, index: int) -> None:
        rng = random.Random(self.seed * 1000 + index)
        while not self._stop.is_set():
            await self.session(rng.choice(self.subscribers), rating_group=rng.choice(_GROUPS))

    async def duplicate(self, burst: int, rng: random.Random) -> int:
        """Resend ``burst`` answered requests as retransmissions; their answers are recorded."""
        chosen = rng.sample(list(self.sent), min(burst, len(self.sent)))
        for item in chosen:
            again = pb.CreditControlRequest()
            again.CopyFrom(item.request)
            again.retransmission = True
            await self.send(again)
        return len(chosen)

    async def run(self, workers: int) -> None:
        tasks = [asyncio.create_task(self.worker(i), name=f"load-{i}") for i in range(workers)]
        try:
            await self._stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task


def _half(units: pb.Units) -> pb.Units:
    return _scale_units(units, 1, 2)


def _scale_units(units: pb.Units, num: int, den: int) -> pb.Units:
    return pb.Units(
        time_s=units.time_s * num // den,
        total_octets=units.total_octets * num // den,
        input_octets=units.input_octets * num // den,
        output_octets=units.output_octets * num // den,
        service_units=units.service_units * num // den,
        money_micros=units.money_micros * num // den,
    )


def _scale(grant: pb.ServiceGrant, num: int, den: int) -> pb.ServiceGrant:
    scaled = pb.ServiceGrant()
    scaled.CopyFrom(grant)
    scaled.granted.CopyFrom(_scale_units(grant.granted, num, den))
    return scaled
