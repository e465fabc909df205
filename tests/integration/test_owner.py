"""ShardOwner against a real local Ray cluster and a real PostgreSQL: take over, charge, commit."""

from __future__ import annotations

from typing import Any

import pytest

from actors.messages import NotOwner, QueryRequest, Rejected, SubscriberView
from billing.protocol import RequestType, ResultCode

from ._owner_helpers import answered, provision, running_cluster, submit, voice

pytestmark = pytest.mark.integration


def test_owner_takes_over_charges_and_commits(ray_cluster: Any, pg_dsn: str) -> None:
    with running_cluster(pg_dsn) as handles:
        statuses = handles.statuses()
        held = sorted(v for s in statuses for v in s.vshards)
        assert held == list(range(64))
        assert all(s.ready and s.epochs for s in statuses)
        view = answered(provision(handles, "4917000001", balance=10_000_000))
        assert isinstance(view, SubscriberView)
        start = answered(submit(handles, [voice("s1", "4917000001", 0, RequestType.INITIAL)])[0])
        assert start.result_code == ResultCode.SUCCESS
        end = answered(
            submit(
                handles,
                [voice("s1", "4917000001", 1, RequestType.TERMINATION, request_s=None, used_s=30)],
            )[0]
        )
        assert end.result_code == ResultCode.SUCCESS
        balance = answered(submit(handles, [QueryRequest("balance", "4917000001")])[0])
        assert balance.reserved_micros == 0
        assert balance.balance_micros < 10_000_000
        # A retransmission gets the stored answer and moves nothing.
        again = answered(
            submit(
                handles,
                [voice("s1", "4917000001", 1, RequestType.TERMINATION, request_s=None, used_s=30)],
            )[0]
        )
        assert again == end
        after = answered(submit(handles, [QueryRequest("balance", "4917000001")])[0])
        assert after.balance_micros == balance.balance_micros
    # Everything acknowledged is in PostgreSQL: a fresh cluster on the same DB sees it.
    with running_cluster(pg_dsn) as handles:
        reloaded = answered(submit(handles, [QueryRequest("balance", "4917000001")])[0])
        assert reloaded.balance_micros == balance.balance_micros
        again = answered(
            submit(
                handles,
                [voice("s1", "4917000001", 1, RequestType.TERMINATION, request_s=None, used_s=30)],
            )[0]
        )
        assert again == end


def test_wrong_owner_and_bad_input(ray_cluster: Any, pg_dsn: str) -> None:
    import ray

    with running_cluster(pg_dsn) as handles:
        shard_map = handles.get_map()
        key = "4917000002"
        other = next(n for n in shard_map.owners if n != shard_map.owner_of_key(key))
        [reply] = ray.get(handles.owner(other).submit.remote([QueryRequest("balance", key)]))
        assert isinstance(reply, NotOwner)
        assert reply.map_version == shard_map.version
        [missing] = submit(handles, [QueryRequest("balance", key)])
        assert isinstance(missing, Rejected) and missing.field == "subscriber_id"
        [empty] = ray.get(handles.owner(other).submit.remote([QueryRequest("balance", "")]))
        assert isinstance(empty, Rejected) and empty.field == "subscriber_id"
        [bad_plan] = submit(handles, [voice("x", key, 0, RequestType.INITIAL)])
        assert answered(bad_plan).result_code == ResultCode.USER_UNKNOWN
        assert isinstance(provision(handles, key, balance=1, plan="no-such-plan"), Rejected)
