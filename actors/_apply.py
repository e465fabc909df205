"""The synchronous step of a shard owner: apply one request to the in-memory state.

No I/O and no awaiting here: the owner calls :func:`apply_one` for every request of a batch in
one go, then commits ``state.take_changes()`` in one transaction, and only then sends the replies
(DESIGN.md invariant 2). Ownership is checked per request against the vshards the owner holds
(``epochs``), so a request for a vshard that moved away gets :class:`NotOwner` and touches nothing.

Shared accounts: a session lives on its account's vshard, and only the owner of that vshard
spends the account. A member's request arrives at the member's owner; if the account's vshard is
held elsewhere the owner forwards it (:class:`~actors.messages.Forwarded`, carrying the member's
subscriber record) and the account's owner applies it here as a *guest* subscriber.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from actors.messages import (
    ALREADY_EXISTS,
    INVALID_ARGUMENT,
    NOT_FOUND,
    Answered,
    BalanceRequest,
    ChargeRequest,
    Forwarded,
    NotOwner,
    OwnerReply,
    OwnerRequest,
    ProvisionRequest,
    QueryRequest,
    Rejected,
    SubscriberView,
    Unavailable,
)
from billing.accounts import ChargingError, apply_balance, balance_view, provision_subscriber
from billing.charging import handle
from billing.state import ShardState, Subscriber
from billing.tariff import Catalog, TariffError
from sharding.vshard import vshard_of


class InternalError(Exception):
    """The domain failed unexpectedly: the batch must be dropped and the state reloaded."""


@dataclass(frozen=True, slots=True)
class JoinRemote:
    """Internal: record a member subscriber whose shared account lives on another owner.

    ``view`` is what the account's owner answered after validating the join (its own state
    did not change); the member's owner now writes the subscriber record on the member's vshard.
    """

    view: SubscriberView


@dataclass(slots=True)
class Step:
    """What one batch step needs: the state, the catalog, the held vshards and the time."""

    state: ShardState
    catalog: Catalog
    epochs: Mapping[int, int]
    vshard_count: int
    map_version: int
    now: datetime
    guests: set[str]  # subscriber ids held here only as guests (their vshard is elsewhere)

    def vshard(self, key: str) -> int:
        return vshard_of(key, self.vshard_count)


def _reject(exc: Exception) -> Rejected:
    """Translate a domain refusal into a Rejected reply naming the field."""
    field = getattr(exc, "field", "") or ""
    if isinstance(exc, TariffError):
        problems = getattr(exc, "problems", ())
        field = problems[0].field if problems else field or "plan_id"
        code = NOT_FOUND if "unknown plan" in str(exc) else INVALID_ARGUMENT
        return Rejected(code, field, str(exc))
    text = str(exc)
    if "unknown subscriber" in text or "unknown account" in text:
        code = NOT_FOUND
    elif "already exists" in text:
        code = ALREADY_EXISTS
    else:
        code = INVALID_ARGUMENT
    return Rejected(code, field, text)


def subscriber_view(state: ShardState, subscriber: Subscriber) -> SubscriberView | None:
    """The view of a subscriber whose account is held in ``state`` (None if it is not)."""
    account = state.accounts.get(subscriber.account_id)
    if account is None:
        return None
    return SubscriberView(
        subscriber_id=subscriber.subscriber_id,
        account_id=subscriber.account_id,
        plan_id=subscriber.plan_id,
        payment_mode=account.payment_mode,
        currency=account.currency,
        vshard=subscriber.vshard,
        account_vshard=subscriber.account_vshard,
        created_at=subscriber.created_at,
    )


def apply_one(
    step: Step, item: OwnerRequest | Forwarded | JoinRemote, vshard: int | None = None
) -> OwnerReply:
    """Apply one request; return its reply (an Answered one is sent only after the commit).

    ``vshard`` is the request's vshard when the caller already computed it (the owner's
    classification); otherwise it is computed from the routing key here.

    Domain refusals (bad input, unknown ids) become :class:`Rejected` and change nothing, as the
    domain promises. Anything else raises :class:`InternalError`: the state may be half-changed,
    so the owner drops the batch and reloads.
    """
    try:
        if vshard is not None and type(item) is ChargeRequest:
            return _apply_charge(step, item, vshard)  # the usual request, already classified
        if isinstance(item, Forwarded):
            return _apply_forwarded(step, item)
        if isinstance(item, JoinRemote):
            return _apply_join(step, item.view)
        if vshard is None:
            vshard = step.vshard(item.routing_key)
        if vshard not in step.epochs:
            return NotOwner(vshard, step.map_version)
        return _apply_request(step, item, vshard)
    except (ChargingError, TariffError, ValueError) as exc:
        return _reject(exc)
    except Exception as exc:
        raise InternalError(f"{type(exc).__name__}: {exc}") from exc


def _apply_charge(step: Step, item: ChargeRequest, vshard: int) -> OwnerReply:
    """:func:`_apply_request` then :func:`_apply_local` for a charging request of ``vshard``,
    in one call (the same checks in the same order: the vshard held, the account held)."""
    if vshard not in step.epochs:
        return NotOwner(vshard, step.map_version)
    elsewhere = _account_elsewhere(step, item.request.subscriber_id)
    if elsewhere is not None:
        return elsewhere
    return Answered(handle(step.state, item.request, now=step.now, catalog=step.catalog))


def _account_elsewhere(step: Step, subscriber_id: str) -> Unavailable | None:
    """The refusal of a request routed here as local whose subscriber's account is held
    elsewhere (the map moved meanwhile); None when it is held here (or the id is unknown)."""
    subscriber = step.state.subscribers.get(subscriber_id)
    if subscriber is not None and subscriber.account_vshard not in step.epochs:
        return Unavailable(f"account of {subscriber_id!r} is not held here; retry")
    return None


def _apply_request(step: Step, item: OwnerRequest, vshard: int) -> OwnerReply:
    if isinstance(item, ProvisionRequest):
        return _provision(step, item, vshard)
    elsewhere = _account_elsewhere(step, item.routing_key)
    if elsewhere is not None:
        return elsewhere
    return _apply_local(step, item)


def _apply_local(step: Step, item: OwnerRequest) -> OwnerReply:
    state = step.state
    if isinstance(item, ChargeRequest):
        return Answered(handle(state, item.request, now=step.now, catalog=step.catalog))
    if isinstance(item, BalanceRequest):
        return Answered(apply_balance(state, item.command, now=step.now))
    if isinstance(item, QueryRequest):
        subscriber = state.subscribers.get(item.subscriber_id)
        if subscriber is None:
            return Rejected(
                NOT_FOUND, "subscriber_id", f"unknown subscriber {item.subscriber_id!r}"
            )
        if item.kind == "balance":
            return Answered(balance_view(state, item.subscriber_id, now=step.now))
        if item.kind == "subscriber":
            view = subscriber_view(state, subscriber)
            if view is None:
                return Unavailable(f"account of {item.subscriber_id!r} is not held here; retry")
            return Answered(view)
        return Rejected(
            INVALID_ARGUMENT, "kind", f"must be 'subscriber' or 'balance', got {item.kind!r}"
        )
    raise TypeError(f"not an owner request: {type(item).__name__}")


def _provision(step: Step, item: ProvisionRequest, vshard: int) -> OwnerReply:
    """Create a subscriber with its own account, or join an existing shared account held here.

    A shared account must exist before members join (create it by provisioning a subscriber
    whose id is the account id); joining one held by another owner goes through
    :class:`JoinRemote` after that owner validated it.
    """
    state = step.state
    if item.subscriber_id in state.subscribers:
        return Rejected(
            ALREADY_EXISTS, "subscriber_id", f"subscriber {item.subscriber_id!r} already exists"
        )
    plan = step.catalog.get(item.plan_id)
    account_id = item.account_id if item.account_id != item.subscriber_id else None
    account_vshard = None
    if account_id is not None:
        account_vshard = step.vshard(account_id)
        if account_vshard not in step.epochs:
            return Unavailable(f"account {account_id!r} is not held here; retry")
        if account_id not in state.accounts:
            return Rejected(NOT_FOUND, "account_id", f"unknown account {account_id!r}")
    subscriber = provision_subscriber(
        state,
        subscriber_id=item.subscriber_id,
        vshard=vshard,
        plan=plan,
        payment_mode=item.payment_mode,
        initial_balance_micros=item.initial_balance_micros,
        credit_limit_micros=item.credit_limit_micros,
        currency=item.currency,
        now=step.now,
        account_id=account_id,
        account_vshard=account_vshard,
    )
    view = subscriber_view(state, subscriber)
    assert view is not None, "a provisioned subscriber's account is held where it was provisioned"
    return Answered(view)


def _apply_forwarded(step: Step, item: Forwarded) -> OwnerReply:
    """At the account's owner: apply a member's request as a guest of this owner."""
    state = step.state
    member = item.subscriber
    account_vshard = member.account_vshard
    if account_vshard not in step.epochs:
        return NotOwner(account_vshard, step.map_version)
    request = item.request
    if isinstance(request, ProvisionRequest):
        return _validate_join(step, request, member)
    known = state.subscribers.get(member.subscriber_id)
    if known is None:
        state.subscribers[member.subscriber_id] = member
        step.guests.add(member.subscriber_id)
    return _apply_local(step, request)


def _validate_join(step: Step, request: ProvisionRequest, member: Subscriber) -> OwnerReply:
    """At the account's owner: check a member may join; answer its record, change nothing."""
    state = step.state
    account_id = member.account_id
    if account_id not in state.accounts:
        return Rejected(NOT_FOUND, "account_id", f"unknown account {account_id!r}")
    if member.subscriber_id in state.subscribers:
        return Rejected(
            ALREADY_EXISTS, "subscriber_id", f"subscriber {member.subscriber_id!r} already exists"
        )
    plan = step.catalog.get(request.plan_id)
    subscriber = provision_subscriber(
        state,
        subscriber_id=member.subscriber_id,
        vshard=member.vshard,
        plan=plan,
        payment_mode=request.payment_mode,
        initial_balance_micros=request.initial_balance_micros,
        credit_limit_micros=request.credit_limit_micros,
        currency=request.currency,
        now=step.now,
        account_id=account_id,
        account_vshard=member.account_vshard,
    )
    # The member's record lives on the member's vshard, written by its own owner: undo here.
    del state.subscribers[subscriber.subscriber_id]
    state.pending.subscribers.pop(subscriber.subscriber_id, None)
    view = subscriber_view(state, subscriber)
    assert view is not None
    return Answered(view)


def _apply_join(step: Step, view: SubscriberView) -> OwnerReply:
    """At the member's owner: write the member record the account's owner validated."""
    state = step.state
    if view.vshard not in step.epochs:
        return NotOwner(view.vshard, step.map_version)
    if view.subscriber_id in state.subscribers and view.subscriber_id not in step.guests:
        return Rejected(
            ALREADY_EXISTS, "subscriber_id", f"subscriber {view.subscriber_id!r} already exists"
        )
    step.guests.discard(view.subscriber_id)
    subscriber = Subscriber(
        subscriber_id=view.subscriber_id,
        vshard=view.vshard,
        account_id=view.account_id,
        account_vshard=view.account_vshard,
        plan_id=view.plan_id,
        created_at=view.created_at,
    )
    state.subscribers[subscriber.subscriber_id] = subscriber
    state.pending.subscribers[subscriber.subscriber_id] = subscriber
    return Answered(view)
