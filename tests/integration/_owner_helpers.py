"""Helpers shared by the owner/manager integration tests (not a test module)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from actors.bootstrap import ClusterHandles, start_cluster, stop_cluster
from actors.messages import (
    Answered,
    ChargeRequest,
    NotOwner,
    OwnerReply,
    OwnerRequest,
    ProvisionRequest,
    Unavailable,
)
from actors.owner import OwnerConfig
from billing.protocol import (
    CreditControlRequest,
    ReportingReason,
    RequestType,
    ServiceUsage,
    Units,
    UsedUnits,
)

VOICE = 100  # rating group of voice (time_s) in every template


@contextmanager
def running_cluster(
    dsn: str, *, owners: int = 2, vshard_count: int = 64, **config: Any
) -> Iterator[ClusterHandles]:
    handles = start_cluster(
        dsn,
        owners=owners,
        vshard_count=vshard_count,
        config=OwnerConfig(dsn=dsn, **config),
        ready_timeout_s=120,
    )
    try:
        yield handles
    finally:
        stop_cluster(handles)


def voice(
    session: str,
    subscriber: str,
    number: int,
    kind: RequestType,
    *,
    request_s: int | None = 60,
    used_s: int = 0,
) -> ChargeRequest:
    used = (
        (
            UsedUnits(
                Units(time_s=used_s),
                ReportingReason.FINAL
                if kind is RequestType.TERMINATION
                else ReportingReason.QUOTA_EXHAUSTED,
            ),
        )
        if used_s
        else ()
    )
    requested = Units(time_s=request_s) if request_s is not None else None
    return ChargeRequest(
        CreditControlRequest(
            session_id=session,
            request_type=kind,
            request_number=number,
            subscriber_id=subscriber,
            event_time=datetime.now(UTC),
            services=(ServiceUsage(rating_group=VOICE, requested=requested, used=used),),
            destination="4930123456",
        )
    )


def submit(
    handles: ClusterHandles, requests: Sequence[OwnerRequest], *, attempts: int = 50
) -> list[OwnerReply]:
    """Route like a front door: by the current map, retry NotOwner/Unavailable with the same keys."""
    import ray

    replies: list[OwnerReply | None] = [None] * len(requests)
    todo = list(range(len(requests)))
    for _ in range(attempts):
        shard_map = handles.get_map()
        groups: dict[str, list[int]] = {}
        for i in todo:
            groups.setdefault(shard_map.owner_of_key(requests[i].routing_key), []).append(i)
        refs = {
            name: handles.owner(name)
            .submit.options(max_task_retries=0)
            .remote([requests[i] for i in idx])
            for name, idx in groups.items()
        }
        todo = []
        for name, idx in groups.items():
            try:
                got = ray.get(refs[name], timeout=60)
            except Exception as exc:  # owner restarting: unknown outcome, retry the same keys
                got = [Unavailable(f"{type(exc).__name__}")] * len(idx)
            for i, reply in zip(idx, got, strict=True):
                replies[i] = reply
                if isinstance(reply, (NotOwner, Unavailable)):
                    todo.append(i)
        if not todo:
            break
        asyncio.run(asyncio.sleep(0.1))
    return [r for r in replies if r is not None]


def provision(
    handles: ClusterHandles,
    subscriber: str,
    *,
    balance: int,
    plan: str = "payg",
    account_id: str | None = None,
) -> OwnerReply:
    [reply] = submit(
        handles,
        [
            ProvisionRequest(
                subscriber_id=subscriber,
                plan_id=plan,
                initial_balance_micros=balance,
                account_id=account_id,
            )
        ],
    )
    return reply


def answered(reply: OwnerReply) -> Any:
    assert isinstance(reply, Answered), reply
    return reply.payload
