"""Requests to and replies from a ShardOwner actor (team/CLUSTER_API.md).

All are frozen, picklable dataclasses: they cross process boundaries through Ray. A front door
sends a micro-batch ``list[OwnerRequest]`` to ``ShardOwner.submit`` and gets back one
``OwnerReply`` per request, in the same order.

Reply meanings (what the caller may do next):

- :class:`Answered`: the domain's answer; anything it acknowledges is already durable.
- :class:`NotOwner`: this owner does not hold the vshard (any more): refresh the shard map to at
  least ``map_version`` and retry the same request (same idempotency key) at the new owner.
- :class:`Rejected`: the request itself is wrong (``code`` in :data:`REJECT_CODES`, ``field``
  names what); retrying it unchanged gives the same answer.
- :class:`Unavailable`: nothing was acknowledged (database down, commit failed, owner loading);
  retrying the same request with the same key is safe (DESIGN.md invariant 3).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from billing._frozen import fast_init
from billing.protocol import BalanceCommand, CreditControlRequest, PaymentMode
from billing.state import Subscriber

INVALID_ARGUMENT = "invalid_argument"
NOT_FOUND = "not_found"
ALREADY_EXISTS = "already_exists"
FAILED_PRECONDITION = "failed_precondition"
INTERNAL = "internal"  # the owner failed on this request (a bug): the batch was dropped
REJECT_CODES = frozenset(
    {INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION, INTERNAL}
)

QUERY_KINDS = ("subscriber", "balance")

# _REDUCE_NOTE: the messages of the charging path define ``__reduce__`` as ``cls(*fields)``.
# Dataclasses' slots ``__getstate__``/``__setstate__`` call ``fields()`` per object; these cross
# the front door <-> owner boundary once per request each way (measured in the front door's
# profile: ~12 % of its CPU under streaming load went to the default form). Same values, same
# equality: only the pickled form changes.


class PickledBatch(list[Any]):
    """A list that Ray serialises with the C pickler in one call, arriving as a plain list.

    Ray pickles call arguments and return values with cloudpickle, which runs Python code for
    every object; one ``pickle.dumps`` of the whole batch is about twice as fast per item
    (measured: 21.8 -> 9.7 µs per charging request). Used for the requests a front door sends
    and for the replies an owner returns; the receiver gets an ordinary ``list``.
    """

    def __reduce__(self) -> tuple[Any, tuple[bytes]]:
        return pickle.loads, (pickle.dumps(list(self), protocol=5),)


@fast_init  # built per request (unpickled, answered): see billing/_frozen.py
@dataclass(frozen=True, slots=True)
class ChargeRequest:
    """An online credit-control request (session or event)."""

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:  # see _REDUCE_NOTE
        return ChargeRequest, (self.request,)

    request: CreditControlRequest

    @property
    def routing_key(self) -> str:
        return self.request.subscriber_id


@dataclass(frozen=True, slots=True)
class ProvisionRequest:
    """Create a subscriber (and its own account, or join the shared account ``account_id``)."""

    subscriber_id: str
    plan_id: str
    payment_mode: PaymentMode | None = None  # None: the plan's payment mode
    initial_balance_micros: int = 0
    credit_limit_micros: int = 0
    currency: str | None = None  # None: the plan's currency
    account_id: str | None = None

    @property
    def routing_key(self) -> str:
        return self.subscriber_id


@dataclass(frozen=True, slots=True)
class BalanceRequest:
    """A back-office balance movement (top-up, adjustment, refund) with the caller's key."""

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:  # see _REDUCE_NOTE
        return BalanceRequest, (self.command,)

    command: BalanceCommand

    @property
    def routing_key(self) -> str:
        return self.command.subscriber_id


@dataclass(frozen=True, slots=True)
class QueryRequest:
    """Read a subscriber record (``"subscriber"``) or its balance view (``"balance"``)."""

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:  # see _REDUCE_NOTE
        return QueryRequest, (self.kind, self.subscriber_id)

    kind: Literal["subscriber", "balance"]
    subscriber_id: str

    @property
    def routing_key(self) -> str:
        return self.subscriber_id


OwnerRequest = ChargeRequest | ProvisionRequest | BalanceRequest | QueryRequest


@dataclass(frozen=True, slots=True)
class Forwarded:
    """Owner-to-owner: a member's request sent to the owner of its (shared) account's vshard.

    Carries the member's subscriber record, which lives on the member's own vshard, so the
    account owner can run the domain; only the account's owner ever spends the account.
    """

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:  # see _REDUCE_NOTE
        return Forwarded, (self.request, self.subscriber, self.map_version)

    request: OwnerRequest
    subscriber: Subscriber
    map_version: int


@fast_init  # built per request (unpickled, answered): see billing/_frozen.py
@dataclass(frozen=True, slots=True)
class Answered:
    """The domain's answer (CreditControlAnswer, BalanceResult, a view): sent after commit."""

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:  # see _REDUCE_NOTE
        return Answered, (self.payload,)

    payload: object


@dataclass(frozen=True, slots=True)
class NotOwner:
    """The owner does not hold ``vshard``: refresh the map (to >= map_version) and retry."""

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:  # see _REDUCE_NOTE
        return NotOwner, (self.vshard, self.map_version)

    vshard: int
    map_version: int


@dataclass(frozen=True, slots=True)
class Rejected:
    """The request is invalid or refers to something that does not exist; ``field`` names it."""

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:  # see _REDUCE_NOTE
        return Rejected, (self.code, self.field, self.message)

    code: str
    field: str
    message: str


@dataclass(frozen=True, slots=True)
class Unavailable:
    """Nothing was acknowledged; retry with the same idempotency key."""

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:  # see _REDUCE_NOTE
        return Unavailable, (self.message,)

    message: str


OwnerReply = Answered | NotOwner | Rejected | Unavailable


@dataclass(frozen=True, slots=True)
class SubscriberView:
    """What ``QueryRequest("subscriber", ...)`` answers."""

    subscriber_id: str
    account_id: str
    plan_id: str
    payment_mode: PaymentMode
    currency: str
    vshard: int
    account_vshard: int
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ProvisionSummary:
    """What ``ShardOwner.provision_bulk`` answers: how many were created, and who was not."""

    created: int
    rejected: tuple[tuple[str, Rejected], ...]  # (subscriber_id, why), at most a few hundred kept
    not_owner: tuple[str, ...]  # subscriber ids whose vshard this owner does not hold


@dataclass(frozen=True, slots=True)
class OwnerStatus:
    """A snapshot of one owner for status pages, tests and the manager's health check."""

    name: str
    ready: bool
    map_version: int
    vshards: tuple[int, ...]
    epochs: dict[int, int]
    subscribers: int
    accounts: int
    sessions: int
    answers: int
    load_seconds: float  # how long the last takeover + load took
    loads: int  # how many times state was (re)loaded since the process started
    commits: int
    last_error: str
    pid: int = 0  # the actor's process id (tests kill it to simulate a crash)
