"""A stand-in for the shard owners in front-door benchmarks: every charge granted at once.

The front-door benchmarks (bench_frontdoor_path, bench_grpc_calls, bench_grpc_server) measure
the front door's own work, so its owners answer without Ray, a database or the domain: each
requested service is granted what it asked, at a fixed cost. Imports are made when called, from
whatever checkout comes first on ``sys.path`` (the benchmarks' ``--root``).
"""

from __future__ import annotations

import asyncio
from typing import Any


def granted_answer(request: Any) -> Any:
    """An owner's Answered reply to a ChargeRequest: every service granted what it asked."""
    from actors.messages import Answered
    from billing.protocol import CreditControlAnswer, ResultCode, ServiceGrant

    cc = request.request
    grants = tuple(
        ServiceGrant(
            rating_group=s.rating_group,
            service_identifier=s.service_identifier,
            result_code=ResultCode.SUCCESS,
            granted=s.requested,
            cost_micros=50_000,
            validity_time_s=600,
        )
        for s in cc.services
    )
    return Answered(
        CreditControlAnswer(
            session_id=cc.session_id,
            request_number=cc.request_number,
            result_code=ResultCode.SUCCESS,
            services=grants,
            cost_micros=50_000,
            balance_after_micros=1_000_000,
        )
    )


class FakeOwners:
    """Two owners over 1,024 vshards: the front door's map source and every owner's client in
    one; a batch is answered after ``delay_s`` (0: at the next loop pass)."""

    def __init__(self, delay_s: float = 0.0) -> None:
        from sharding.shardmap import balanced_map

        self.shard_map = balanced_map(1024, ["o0", "o1"])
        self.delay_s = delay_s

    async def get_map(self) -> Any:
        return self.shard_map

    async def wait_for_version(self, newer_than: int, timeout_s: float) -> Any:
        await asyncio.sleep(timeout_s)
        return self.shard_map

    def client(self, owner: str) -> FakeOwners:
        return self

    async def submit(self, batch: list[Any]) -> list[Any]:
        await asyncio.sleep(self.delay_s)
        return [granted_answer(request) for request in batch]
