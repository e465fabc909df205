"""Shared accounts: members on other vshards (and other owners) charge one balance through the
account's owner only; concurrent sessions of several members never get more than it covers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from actors.messages import Answered, QueryRequest, Rejected, SubscriberView
from billing.protocol import RequestType, ResultCode
from sharding.store import Store
from sharding.vshard import vshard_of

from ._owner_helpers import answered, provision, running_cluster, submit, voice

pytestmark = pytest.mark.integration

ACCOUNT = "family-7"
BALANCE = 300_000  # 0.30 EUR: far less than the members ask for together


def _members(shard_map: Any, count: int) -> list[str]:
    """Member ids on both owners: most away from the account's owner, some with it."""
    home = shard_map.owner_of_key(ACCOUNT)
    away = [
        f"49170007{i:04d}" for i in range(400) if shard_map.owner_of_key(f"49170007{i:04d}") != home
    ]
    near = [
        f"49170007{i:04d}" for i in range(400) if shard_map.owner_of_key(f"49170007{i:04d}") == home
    ]
    return away[: count - 2] + near[:2]


def test_members_share_one_balance_without_double_spend(ray_cluster: Any, pg_dsn: str) -> None:
    with running_cluster(pg_dsn) as handles:
        shard_map = handles.get_map()
        answered(provision(handles, ACCOUNT, balance=BALANCE))
        members = _members(shard_map, 8)
        for member in members:
            view = answered(provision(handles, member, balance=0, account_id=ACCOUNT))
            assert isinstance(view, SubscriberView)
            assert view.account_id == ACCOUNT
            assert view.account_vshard == vshard_of(ACCOUNT, shard_map.vshard_count)
        # A member cannot bring its own money to the pool, nor join an account that does not exist.
        assert isinstance(provision(handles, "4917000799", balance=5, account_id=ACCOUNT), Rejected)
        assert isinstance(
            provision(handles, "4917000798", balance=0, account_id="no-such"), Rejected
        )

        # Every member opens a session at once (one submit per member, all in flight together).
        refs = []
        for member in members:
            owner = handles.owner(shard_map.owner_of_key(member))
            refs.append(
                owner.submit.options(max_task_retries=0).remote(
                    [voice(f"fam-{member}", member, 0, RequestType.INITIAL, request_s=600)]
                )
            )
        starts = [reply for batch in ray_cluster.get(refs) for reply in batch]
        assert all(isinstance(r, Answered) for r in starts), starts
        granted = {
            m: (
                r.payload.services[0].granted.time_s
                if r.payload.services and r.payload.services[0].granted
                else 0
            )
            for m, r in zip(members, starts, strict=True)
        }
        assert any(
            r.payload.result_code != ResultCode.SUCCESS
            or r.payload.services[0].final_unit is not None
            for r in starts
        )

        pool = answered(submit(handles, [QueryRequest("balance", members[0])])[0])
        assert pool.account_id == ACCOUNT
        assert 0 <= pool.reserved_micros <= BALANCE
        assert pool.available_micros >= 0

        # Each member uses exactly what it was granted, then ends.
        ends = submit(
            handles,
            [
                voice(f"fam-{m}", m, 1, RequestType.TERMINATION, request_s=None, used_s=granted[m])
                for m in members
            ],
        )
        charged = sum(answered(r).cost_micros for r in ends)
        final = answered(submit(handles, [QueryRequest("balance", ACCOUNT)])[0])
        assert final.reserved_micros == 0
        assert final.balance_micros >= 0
        assert final.balance_micros == BALANCE - charged
        assert charged > 0

        # Sessions lived with the account: only its owner holds them, the members' owners none.
        statuses = {s.name: s for s in handles.statuses()}
        assert all(s.sessions == 0 for s in statuses.values())

    async def audit() -> list[str]:
        async with Store(pg_dsn) as store:
            return await store.audit()

    assert asyncio.run(audit()) == []
