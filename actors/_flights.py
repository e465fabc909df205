"""Concurrent group commits of one owner: which queued work is independent of the commits in flight.

An owner applies a batch to its in-memory state in one synchronous step and then commits it; while
that commit is in flight it may apply and commit the next batch, on another connection, IF the
next batch cannot depend on anything the first one changed. Otherwise a failure of the first
commit would leave the second acknowledged on top of effects that never became durable.

Independence is decided by *keys*: every request names what it may read or change — its
subscriber, that subscriber's account (a shared account included: forwarded items carry the
member's record), its session and its idempotency key. A batch's keys are those of its requests
plus everything its changes wrote. A queued job whose keys meet the keys of a commit in flight
(or of an earlier queued job that had to wait) stays queued, in order, until that commit
settles; every other job may be applied and committed at once. Everything else an owner does
(sweeps, remaps, reloads, duplicate-key recovery) runs only when no commit is in flight.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from actors._apply import JoinRemote
from actors.messages import (
    BalanceRequest,
    ChargeRequest,
    Forwarded,
    OwnerReply,
    ProvisionRequest,
    QueryRequest,
)
from billing.state import Changes, Subscriber

__all__ = ["Flight", "changes_keys", "item_keys", "take_independent"]

_SCAN_MAX = 256  # queued jobs looked at per take: a long queue of blocked jobs costs O(1) a take


class _QueuedJob(Protocol):
    kind: str
    items: list[Any]


def item_keys(item: object, subscribers: Mapping[str, Subscriber], out: set[str]) -> None:
    """Add to ``out`` the keys of what ``item`` may read or change (see the module docstring).

    ``subscribers`` is the owner's current state: it gives a local subscriber's account.
    """
    if isinstance(item, Forwarded):
        member = item.subscriber
        out.add(member.subscriber_id)
        out.add(member.account_id)
        item_keys(item.request, subscribers, out)
        return
    if isinstance(item, JoinRemote):
        out.add(item.view.subscriber_id)
        out.add(item.view.account_id)
        return
    if isinstance(item, ProvisionRequest):
        out.add(item.subscriber_id)
        if item.account_id:
            out.add(item.account_id)
        return
    if isinstance(item, ChargeRequest):
        request = item.request
        key = request.subscriber_id
        out.add(request.session_id)
        out.add(request.idempotency_key)
    elif isinstance(item, BalanceRequest):
        key = item.command.subscriber_id
        out.add(item.command.idempotency_key)
    elif isinstance(item, QueryRequest):
        key = item.subscriber_id
    else:
        return
    out.add(key)
    subscriber = subscribers.get(key)
    if subscriber is not None:
        out.add(subscriber.account_id)


def changes_keys(changes: Changes, out: set[str]) -> None:
    """Add to ``out`` the keys of everything ``changes`` writes."""
    out.update(changes.subscribers)
    out.update(changes.accounts)
    out.update(changes.sessions)
    out.update(changes.ended_sessions)
    out.update(changes.answers)
    out.update(changes.balance_results)
    for bucket in changes.buckets.values():
        out.add(bucket.account_id)
    for session in changes.sessions.values():
        out.add(session.subscriber_id)
        out.add(session.account_id)
    for entry in changes.journal:
        out.add(entry.account_id)


def take_independent(
    queue: deque[Any],
    busy: set[str],
    batch_max: int,
    keys_of: Callable[[Iterable[object], set[str]], None],
) -> tuple[list[Any], set[str]]:
    """Take from the head of ``queue`` the request jobs independent of ``busy`` (the keys of the
    commits in flight), up to ``batch_max`` requests; the others keep their place and order.

    Stops at the first control job (it runs alone, after everything before it). A job that must
    wait adds its keys to the blocked set, so a later job on the same subscriber or account
    never overtakes it. Returns the jobs taken and their keys.
    """
    taken: list[Any] = []
    taken_keys: set[str] = set()
    kept: list[Any] = []
    blocked = busy
    total = 0
    scanned = 0
    while queue and scanned < _SCAN_MAX:
        job: _QueuedJob = queue[0]
        if job.kind != "requests":
            break
        size = len(job.items)
        if taken and total + size > batch_max:
            break
        queue.popleft()
        scanned += 1
        keys: set[str] = set()
        keys_of(job.items, keys)
        if blocked.isdisjoint(keys):
            taken.append(job)
            taken_keys |= keys
            total += size
        else:
            if blocked is busy:
                blocked = set(busy)
            blocked |= keys
            kept.append(job)
    queue.extendleft(reversed(kept))
    return taken, taken_keys


@dataclass(eq=False)
class Flight:
    """One batch whose commit is in flight: its jobs, their replies once committed, and the
    keys no other batch may touch until it settles (None until some other batch needs them:
    the owner works them out from ``jobs`` and ``changes`` then)."""

    jobs: list[Any]
    results: list[list[OwnerReply]]
    changes: Changes
    keys: set[str] | None
    task: asyncio.Task[None] | None = None
    error: Any = None  # the owner's _CommitError when the commit failed
