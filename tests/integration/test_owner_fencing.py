"""Epoch fencing: after a vshard moves (by the manager, or by another owner bumping its epoch),
the old owner answers NotOwner and writes nothing."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest

from actors.messages import NotOwner, QueryRequest
from billing.protocol import RequestType, ResultCode
from sharding.store import Store
from sharding.vshard import vshard_of

from ._owner_helpers import answered, provision, running_cluster, submit, voice

pytestmark = pytest.mark.integration

SUB = "4917000200"


def _journal_rows(dsn: str, key: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM journal WHERE idempotency_key = %s", (key,)
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_manager_move_redirects_and_new_owner_has_the_state(ray_cluster: Any, pg_dsn: str) -> None:
    with running_cluster(pg_dsn) as handles:
        answered(provision(handles, SUB, balance=5_000_000))
        before = answered(submit(handles, [QueryRequest("balance", SUB)])[0])
        old_map = handles.get_map()
        vshard = vshard_of(SUB, old_map.vshard_count)
        old = old_map.owner_of(vshard)
        new = next(n for n in old_map.owners if n != old)
        moved = ray_cluster.get(handles.manager.move.remote({vshard: new}))
        assert moved.version == old_map.version + 1 and moved.owner_of(vshard) == new
        [reply] = ray_cluster.get(handles.owner(old).submit.remote([QueryRequest("balance", SUB)]))
        assert reply == NotOwner(vshard, moved.version)
        after = answered(
            ray_cluster.get(handles.owner(new).submit.remote([QueryRequest("balance", SUB)]))[0]
        )
        assert after == before
        statuses = {s.name: s for s in handles.statuses()}
        assert vshard in statuses[new].vshards and vshard not in statuses[old].vshards


def test_zombie_commit_is_rejected(ray_cluster: Any, pg_dsn: str) -> None:
    with running_cluster(pg_dsn) as handles:
        answered(provision(handles, SUB, balance=5_000_000))
        start = answered(submit(handles, [voice("z-1", SUB, 0, RequestType.INITIAL)])[0])
        assert start.result_code == ResultCode.SUCCESS
        shard_map = handles.get_map()
        vshard = vshard_of(SUB, shard_map.vshard_count)
        owner = handles.owner(shard_map.owner_of(vshard))

        async def intrude() -> None:
            async with Store(pg_dsn) as store:
                await store.take_over([vshard], "intruder")

        asyncio.run(intrude())  # another owner took the vshard over: the epoch moved on
        update = voice("z-1", SUB, 1, RequestType.UPDATE, used_s=60)
        [reply] = ray_cluster.get(owner.submit.remote([update]))
        assert isinstance(reply, NotOwner) and reply.vshard == vshard
        assert _journal_rows(pg_dsn, update.request.idempotency_key) == 0
        # The manager still assigns the vshard to this owner: it takes it back, and the retried
        # request (same key) is charged exactly once.
        done = answered(submit(handles, [update])[0])
        assert done.result_code == ResultCode.SUCCESS
        lines = _journal_rows(pg_dsn, update.request.idempotency_key)
        assert lines >= 1
        assert answered(submit(handles, [update])[0]) == done
        assert _journal_rows(pg_dsn, update.request.idempotency_key) == lines
